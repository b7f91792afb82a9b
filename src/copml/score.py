"""Batch scoring with the champion: every row predicted, frozen, logged and returned.

The input is frozen as a *batch snapshot* (PII replaced by keyed hashes), so each
prediction record points at (snapshot, row) instead of copying the row: logging a million
predictions costs a narrow bulk insert, and the input of any decision can still be audited.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from copml import events, registry, snapshots
from copml.errors import NotFoundError
from copml.labels import class_labels
from copml.project import Project
from copml.redaction import redact
from copml.store import bind_value, bulk_insert, open_store, predictions
from copml.train import positive_scores

CHUNK_ROWS = 200_000


@dataclass
class ScoreResult:
    rows: int
    model_version: str
    snapshot_id: str
    output: Path
    positives: int


def _prediction_ids(n: int) -> list[str]:
    """Unique ids: a random 64-bit batch prefix and the row number, both in hex."""
    prefix = secrets.token_hex(8)
    return [f"{prefix}{i:08x}" for i in range(n)]


def _predict(model: object, features: pd.DataFrame, progress: bool) -> np.ndarray:
    chunks = range(0, len(features), CHUNK_ROWS)
    scores = np.empty(len(features), dtype=np.float64)
    if progress:
        from rich.progress import track

        chunks = track(chunks, description="scoring", total=len(chunks), transient=True)
    for start in chunks:
        part = features.iloc[start : start + CHUNK_ROWS]
        scores[start : start + len(part)] = positive_scores(model, part)
    return scores


def _write_output(frame: pd.DataFrame, output: Path) -> None:
    """Write atomically, as CSV or Parquet by the file's suffix."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if output.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        pq.write_table(table, tmp)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, tmp)
    os.replace(tmp, output)


def score(
    project: Project,
    source: str | Path,
    output: str | Path,
    *,
    at: datetime | None = None,
    actor: str = "system",
    progress: bool = False,
) -> ScoreResult:
    """Score ``source`` with the champion, log every prediction, write ``output``."""
    spec = project.spec
    data = spec.data
    engine = open_store(project.db_url)
    champion = registry.champion(project)
    if champion is None:
        raise NotFoundError(
            "no champion model yet: run 'copml train' (a version that meets the declared "
            "minimums becomes champion)"
        )
    model = registry.load(project, champion)
    source = str(source)
    raw = snapshots.read_files(snapshots.source_files(source, project.root))
    frame = snapshots.validate(
        raw, data, require_target=False, line_numbers=source.lower().endswith(".csv")
    )
    frame = frame.drop(columns=[data.target], errors="ignore")
    redacted = redact(frame, sorted({data.id, *data.pii}), project.pii_key)
    snap = snapshots.freeze(
        engine,
        redacted,
        data,
        directory=project.snapshots_dir,
        source=source,
        kind="batch",
        actor=actor,
    )
    scores = _predict(model, frame[data.features], progress)
    positive = scores >= spec.model.threshold
    ids = _prediction_ids(len(frame))
    negative_label, positive_label = class_labels(data)
    out = pd.DataFrame(
        {
            data.id: frame[data.id].to_numpy(),
            "label": np.where(positive, positive_label, negative_label),
            "score": scores,
            "model_version": champion.version,
            "prediction_id": ids,
        }
    )
    output = Path(output)
    staged = output.with_name(f".{output.stem}.staged{output.suffix}")
    _write_output(out, staged)
    when = at or datetime.now(UTC)
    stamp = bind_value(engine, predictions.c.created_at, when)
    review = bind_value(engine, predictions.c.review, False)
    rows = zip(
        ids, redacted[data.id].tolist(), positive.astype(int).tolist(), scores.tolist(), strict=True
    )
    records = (
        (pid, stamp, spec.project, champion.version, key, snap.id, i, lab, sc, review, "batch")
        for i, (pid, key, lab, sc) in enumerate(rows)
    )
    columns = (
        "id",
        "created_at",
        "model_name",
        "model_version",
        "entity_key",
        "snapshot_id",
        "row_index",
        "label",
        "score",
        "review",
        "origin",
    )
    try:
        with engine.begin() as conn:
            bulk_insert(conn, predictions, columns, records)  # one transaction: all or none
            events.record(
                conn,
                "batch.scored",
                actor=actor,
                subject=f"model:{spec.project}/{champion.version}",
                reason=f"scored {source}",
                evidence={
                    "rows": len(frame),
                    "snapshot_id": snap.id,
                    "positives": int(positive.sum()),
                    "output": str(output),
                },
                at=when,
            )
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    os.replace(staged, output)
    return ScoreResult(len(frame), champion.version, snap.id, output, int(positive.sum()))
