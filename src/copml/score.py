"""Batch scoring with the champion: every row predicted, frozen, logged and returned.

The input is frozen as a *batch snapshot* (PII replaced by keyed hashes), so each
prediction record points at (snapshot, row) instead of copying the row. Freezing runs
beside the prediction, and writing the output beside the logging, so the audit trail
costs little more than the scoring itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Connection, Engine

from copml import costs, events, lineage, prediction_log, registry, rollout, snapshots, times
from copml.kinds import Decisions, kind_for
from copml.labels import Target
from copml.project import Project
from copml.redaction import redact
from copml.store import open_store

CHUNK_ROWS = 100_000  # rows per predict call in the bare benchmark (kept for it)
# Rows read, validated, frozen, scored and written at a time: memory is bounded by this,
# not by the input. A multiple of the snapshot's row group, so a chunk fills whole groups.
_CHUNK_ROWS = 2 * snapshots.ROW_GROUP_ROWS


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
        events.Kind.BATCH_SCORED,
        actor=actor,
        subject=events.model_subject(project.spec.project, version),
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


class _Output:
    """The scored file, written a chunk at a time as CSV or Parquet by its suffix (built in
    Arrow: no Python loops); a multiclass decision has a ``probability.<class>`` column per
    class too."""

    def __init__(self, path: Path, target: Target, review: bool, version: str, key: str):
        self.path, self._target, self._review = path, target, review
        self._version, self._key = version, key
        self._writer: Any = None
        self._schema: pa.Schema | None = None

    def write(self, ids: pd.Series, decisions: Decisions, start: int) -> None:
        """The rows from ``start`` (their number in the whole batch)."""
        n = len(decisions)
        columns = {
            ids.name: pa.array(ids, from_pandas=True),
            "label": pa.array(
                self._target.shown(decisions.label, decisions.score), from_pandas=True
            ),
            "score": pa.array(decisions.score),
            "model_version": pa.array(np.full(n, self._version)),
            "prediction_id": prediction_log.prediction_ids(self._key, n, start),
        }
        if self._review:
            columns["review"] = pa.array(decisions.review)
        if decisions.probabilities is not None:
            for i, name in enumerate(self._target.classes):
                columns[f"probability.{name}"] = pa.array(decisions.probabilities[:, i])
        table = pa.table(columns)
        if self._writer is None:
            self._schema = table.schema
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.suffix.lower() in (".parquet", ".pq"):
                import pyarrow.parquet as pq

                self._writer = pq.ParquetWriter(self.path, table.schema)
            else:
                import pyarrow.csv as pacsv

                self._writer = pacsv.CSVWriter(self.path, table.schema)
        elif table.schema != self._schema:  # e.g. a chunk whose labels are all missing
            table = table.cast(self._schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _kept(decisions: Decisions) -> prediction_log.Chunk:
    """A chunk's decisions as held until the log is written: own compact arrays (a score
    may be a column view that would keep the model's whole output alive)."""
    probabilities = decisions.probabilities
    return (
        np.ascontiguousarray(decisions.label, dtype=np.int8),
        np.ascontiguousarray(decisions.score, dtype=np.float64),
        np.ascontiguousarray(decisions.review, dtype=bool),
        None if probabilities is None else np.ascontiguousarray(probabilities),
    )


def _shadow(project: Project, engine: Engine, actor: str) -> tuple[str, Any] | None:
    """The shadow's version and model, when one runs (design §9b); a shadow that fails to
    load is refused on record and the batch is scored by the champion alone."""
    version = rollout.current(engine, project.spec.project).shadow
    if version is None:
        return None
    try:
        return version, registry.load(project, registry.get(project, version))
    except Exception as exc:
        with engine.begin() as conn:
            events.record(
                conn,
                events.Kind.SERVE_REFUSED,
                actor=actor,
                subject=events.model_subject(project.spec.project, version),
                reason=f"shadow not loaded: {type(exc).__name__}: {exc}"[:500],
            )
        return None


def _chunks(paths: list[Path], total: int, progress: bool) -> Iterator[pd.DataFrame]:
    chunks = snapshots.read_chunks(paths, _CHUNK_ROWS)
    if not progress:
        return chunks
    from rich.progress import track

    return iter(track(chunks, "scoring", total=-(-total // _CHUNK_ROWS), transient=True))


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

    Streamed: the input is read twice, ``_CHUNK_ROWS`` rows at a time, so memory stays flat
    however large it is. The first pass only validates (a refusal anywhere, even a duplicate
    id in the last rows, has loaded and written nothing); the second types, redacts,
    freezes, scores and writes each chunk, keeping only its decisions (a few bytes a row).

    All or nothing: the predictions, the snapshot record and the event commit in one
    transaction, and the output file appears (atomically renamed) only after that commit.
    """
    spec = project.spec
    kind = kind_for(spec)
    if (own := kind.batch_scorer()) is not None:  # input that is not a table file
        return own(project, source, output, at=at, actor=actor)
    data = spec.data
    engine = open_store(project.db_url)
    champion = registry.required_champion(project)
    source = str(source)
    files = snapshots.source_files(source, project.root)
    validation = snapshots.Validation(
        data, require_target=False, line_numbers=source.lower().endswith(".csv")
    )
    for chunk in snapshots.read_chunks(files, _CHUNK_ROWS):
        validation.check(chunk)
    validation.finish()
    columns = [c for c in data.columns if c != data.target]
    model = registry.load(project, champion)  # after the input passed: a refusal loads nothing
    shadow = _shadow(project, engine, actor)

    pii = sorted({data.id, *data.pii})
    secret = project.pii_key
    target = kind.target(data)
    key = prediction_log.new_key()
    output = Path(output)
    staged = _Output(
        output.with_name(f".{output.stem}.staged{output.suffix}"),
        target,
        spec.reviews,
        champion.version,
        key,
    )
    when = times.utc(at) if at is not None else datetime.now(UTC)
    freezer = snapshots.BatchFreezer(data, directory=project.snapshots_dir, source=source)
    decided: list[prediction_log.Chunk] = []
    shadowed: list[prediction_log.Chunk] = []  # the shadow's decisions, row for row
    positives = reviews = rows = 0
    try:
        # Freezing (Arrow, sha256, Parquet) and writing the output release the GIL: they run
        # in a thread beside the next chunk's prediction. Hashing PII is pure Python: done
        # here, it does not fight the prediction for the GIL.
        with (
            ThreadPoolExecutor(max_workers=1) as pool,
            costs.metered(engine, "score", at=when, detail=source),
        ):
            behind: list[Future[None]] = []
            for chunk in _chunks(files, validation.rows, progress):
                frame = snapshots.typed(chunk, data, columns)
                redacted = redact(frame, pii, secret)
                for done in behind:  # at most one chunk waits to be frozen and written
                    done.result()
                behind = [pool.submit(freezer.add, redacted)]
                decisions = kind.decide(project, model, kind.scores(model, frame[data.features]))
                behind.append(pool.submit(staged.write, frame[data.id], decisions, rows))
                decided.append(_kept(decisions))
                if shadow is not None:
                    features = frame[data.features]
                    shadowed.append(
                        _kept(kind.decide(project, shadow[1], kind.scores(shadow[1], features)))
                    )
                rows += len(decisions)
                reviews += int(decisions.review.sum())
                if len(target.classes) == 2:
                    positives += int(decisions.label.sum())
            for done in behind:
                done.result()
        staged.close()
        snap = freezer.finish()

        def finish(conn: Connection, _firsts: list[int]) -> None:
            snapshots.record(conn, snap, actor=actor)  # in the log's transaction
            evidence = {
                "rows": rows,
                "snapshot_id": snap.id,
                "batch": key,
                "positives": positives if len(target.classes) == 2 else None,
                "output": str(output),
            }
            record_scored(conn, project, champion.version, source, evidence, actor=actor, at=when)

        header = prediction_log.Header(key, when, spec.project, champion.version, snap.id, "batch")
        parts: list[tuple[prediction_log.Header, list[prediction_log.Chunk]]] = [(header, decided)]
        if shadow is not None:  # its own batch over the same snapshot rows, answering no one
            mirror = prediction_log.Header(
                prediction_log.new_key(),
                when,
                spec.project,
                shadow[0],
                snap.id,
                "batch",
                arm=rollout.SHADOW,
                shadows=key,
            )
            parts.append((mirror, shadowed))
        prediction_log.write_many(engine, parts, finish)
    except BaseException:
        staged.close()
        staged.path.unlink(missing_ok=True)
        freezer.discard()
        raise
    os.replace(staged.path, output)
    emit_scored_lineage(project, key, source, champion.version, snap, output, when)
    return ScoreResult(
        rows,
        champion.version,
        snap.id,
        key,
        output,
        positives if len(target.classes) == 2 else None,
        reviews,
    )
