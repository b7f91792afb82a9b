"""Batch scoring with the champion: every row predicted, frozen, logged and returned.

The input is frozen as a *batch snapshot* (PII replaced by keyed hashes), so each
prediction record points at (snapshot, row) instead of copying the row. Freezing runs
beside the prediction, and writing the output beside the logging, so the audit trail
costs little more than the scoring itself.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Connection

from copml import costs, events, lineage, prediction_log, registry, snapshots, times
from copml.errors import NotFoundError
from copml.kinds import Decisions, ModelKind, kind_for
from copml.labels import Target
from copml.project import Project
from copml.redaction import redact
from copml.store import open_store

CHUNK_ROWS = 100_000


@dataclass
class ScoreResult:
    rows: int
    model_version: str
    snapshot_id: str
    prediction_batch: str
    output: Path
    positives: int | None  # decisions for the positive class (None without two classes)
    reviews: int


def record_scored(
    conn: Connection,
    project: Project,
    version: str,
    source: str,
    evidence: dict[str, object],
    *,
    actor: str,
    at: datetime,
) -> None:
    """The ``batch.scored`` event, in the transaction of the batch's log."""
    events.record(
        conn,
        "batch.scored",
        actor=actor,
        subject=f"model:{project.spec.project}/{version}",
        reason=f"scored {source}",
        evidence=evidence,
        at=at,
    )


def emit_scored_lineage(
    project: Project,
    key: str,
    source: str,
    version: str,
    snap: snapshots.Snapshot,
    output: Path,
    at: datetime,
) -> None:
    """The lineage of a scored batch: its input and model in, its snapshot and file out."""
    lineage.emit(
        project,
        "score",
        run_id=key,
        inputs=[lineage.file_dataset(source), lineage.model_dataset(project, version)],
        outputs=[lineage.snapshot_dataset(project, snap), lineage.file_dataset(output)],
        at=at,
    )


def _positives(target: Target, decisions: Decisions) -> int | None:
    return int(decisions.label.sum()) if len(target.classes) == 2 else None


def _predict(kind: ModelKind, model: object, features: pd.DataFrame, progress: bool) -> np.ndarray:
    chunks = range(0, len(features), CHUNK_ROWS)
    parts = []
    if progress:
        from rich.progress import track

        chunks = track(chunks, description="scoring", total=len(chunks), transient=True)
    for start in chunks:
        parts.append(kind.scores(model, features.iloc[start : start + CHUNK_ROWS]))
    return np.concatenate(parts) if parts else kind.scores(model, features)


def _write_output(
    ids: pd.Series,
    target: Target,
    decisions: Decisions,
    review: bool,
    version: str,
    key: str,
    output: Path,
) -> None:
    """The scored file, as CSV or Parquet by its suffix (built in Arrow: no Python loops):
    a multiclass decision has a ``probability.<class>`` column per class too."""
    n = len(decisions)
    columns = {
        ids.name: pa.array(ids, from_pandas=True),
        "label": pa.array(target.shown(decisions.label, decisions.score), from_pandas=True),
        "score": pa.array(decisions.score),
        "model_version": pa.array(np.full(n, version)),
        "prediction_id": prediction_log.prediction_ids(key, n),
    }
    if review:
        columns["review"] = pa.array(decisions.review)
    if decisions.probabilities is not None:
        for i, name in enumerate(target.classes):
            columns[f"probability.{name}"] = pa.array(decisions.probabilities[:, i])
    table = pa.table(columns)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        pq.write_table(table, output)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, output)


def score(
    project: Project,
    source: str | Path,
    output: str | Path,
    *,
    at: datetime | None = None,
    actor: str = "system",
    progress: bool = False,
) -> ScoreResult:
    """Score ``source`` with the champion, log every prediction, write ``output``.

    All or nothing: the predictions and the event commit in one transaction, and the
    output file appears (atomically renamed) only after that commit.
    """
    spec = project.spec
    kind = kind_for(spec)
    if (own := kind.batch_scorer()) is not None:  # input that is not a table file
        return own(project, source, output, at=at, actor=actor)
    data = spec.data
    engine = open_store(project.db_url)
    champion = registry.champion(project)
    if champion is None:
        raise NotFoundError(
            "no champion model yet: run 'copml train' (a version that meets the declared "
            "minimums becomes champion)"
        )
    source = str(source)
    raw = snapshots.read_files(snapshots.source_files(source, project.root))
    frame = snapshots.validate(
        raw, data, require_target=False, line_numbers=source.lower().endswith(".csv")
    )
    frame = frame.drop(columns=[data.target], errors="ignore")
    model = registry.load(project, champion)  # after the input passed: a refusal loads nothing

    # Hashing PII is pure Python: done here, it does not fight the prediction for the GIL;
    # the rest of freezing (Arrow, sha256, Parquet) releases the GIL and runs beside it.
    redacted = redact(frame, sorted({data.id, *data.pii}), project.pii_key)
    key = prediction_log.new_key()
    output = Path(output)
    staged = output.with_name(f".{output.stem}.staged{output.suffix}")
    when = times.utc(at) if at is not None else datetime.now(UTC)
    with ThreadPoolExecutor(max_workers=1) as pool:
        frozen = pool.submit(
            snapshots.prepare,
            redacted,
            data,
            directory=project.snapshots_dir,
            source=source,
            kind="batch",
        )
        with costs.metered(engine, "score", at=when, detail=source):
            scores = _predict(kind, model, frame[data.features], progress)
        snap = frozen.result()
    decided = kind.decide(project, model, scores)

    def finish(conn: Connection, _first: int) -> None:
        snapshots.record(conn, snap, actor=actor)  # in the log's transaction: all or nothing
        evidence = {
            "rows": len(frame),
            "snapshot_id": snap.id,
            "batch": key,
            "positives": _positives(kind.target(data), decided),
            "output": str(output),
        }
        record_scored(conn, project, champion.version, source, evidence, actor=actor, at=when)
        written.result()  # a failed output write rolls the log back too

    header = prediction_log.Header(key, when, spec.project, champion.version, snap.id, "batch")
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            written = pool.submit(
                _write_output,
                frame[data.id],
                kind.target(data),
                decided,
                spec.reviews,
                champion.version,
                key,
                staged,
            )
            prediction_log.write(
                engine,
                header,
                decided.label,
                decided.score,
                decided.review,
                finish,
                probabilities=decided.probabilities,
            )
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    os.replace(staged, output)
    emit_scored_lineage(project, key, source, champion.version, snap, output, when)
    return ScoreResult(
        len(frame),
        champion.version,
        snap.id,
        key,
        output,
        _positives(kind.target(data), decided),
        int(decided.review.sum()),
    )
