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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Connection, Engine

from copml import (
    costs,
    display,
    events,
    lineage,
    oversight,
    prediction_log,
    registry,
    rollout,
    snapshots,
    times,
)
from copml.errors import CopmlError
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

    def write(
        self, ids: pd.Series, decisions: Decisions, start: int, canary: _CanaryRows | None = None
    ) -> None:
        """The rows from ``start`` (their number in the champion's batch); with ``canary``,
        the rows it answered carry its version and its batch's prediction ids."""
        n = len(decisions)
        versions: Any = np.full(n, self._version)
        prediction_ids: Any = prediction_log.prediction_ids(self._key, n, start)
        if canary is not None:
            versions, prediction_ids = canary.merged(self._version, self._key, start)
        columns = {
            ids.name: pa.array(ids, from_pandas=True),
            "label": pa.array(
                self._target.shown(decisions.label, decisions.score), from_pandas=True
            ),
            "score": pa.array(decisions.score),
            "model_version": pa.array(versions),
            "prediction_id": prediction_ids,
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


@dataclass
class _CanaryRows:
    """Which rows of a chunk the canary answers (by each entity's keyed hash, as a server
    routes them: one customer meets the same model in batch and online), and where each
    arm's batch numbering stands."""

    mask: np.ndarray
    version: str
    key: str
    start: int  # the canary batch's row number of the chunk's first canary row

    def merged(self, version: str, key: str, start: int) -> tuple[np.ndarray, pa.Array]:
        """Each row's version and prediction id, the champion's rows numbered from
        ``start`` in its batch, the canary's from :attr:`start` in the canary's."""
        mine = int(self.mask.sum())
        versions = np.where(self.mask, self.version, version)
        ids = np.empty(len(self.mask), dtype=object)
        theirs = prediction_log.prediction_ids(key, len(self.mask) - mine, start)
        ids[~self.mask] = theirs.to_numpy(zero_copy_only=False)
        ids[self.mask] = prediction_log.prediction_ids(self.key, mine, self.start).to_numpy(
            zero_copy_only=False
        )
        return versions, pa.array(ids, type=pa.string())


def _merge(mask: np.ndarray, champion: Decisions, canary: Decisions) -> Decisions:
    """One chunk's answers in input order: the canary's on its rows, the champion's else."""

    def pick(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        if a is None or b is None:
            return None
        out = np.empty((len(mask), *a.shape[1:]), dtype=np.result_type(a, b))
        out[~mask], out[mask] = a, b
        return out

    label, score, review = (
        pick(champion.label, canary.label),
        pick(champion.score, canary.score),
        pick(champion.review, canary.review),
    )
    assert label is not None and score is not None and review is not None
    return Decisions(label, score, review, pick(champion.probabilities, canary.probabilities))


def _chunks(paths: list[Path], total: int, progress: bool) -> Iterator[pd.DataFrame]:
    chunks = snapshots.read_chunks(paths, _CHUNK_ROWS)
    return display.counted(chunks, "scoring", total) if progress else chunks


def refuse_if_halted(project: Project, engine: Engine) -> oversight.Halt | None:
    """The halt in force (scoring then flags every decision for a person), or an error when
    the project is halted into ``refuse``."""
    halted = oversight.current(engine, project)
    if halted is not None and halted.refuses:
        raise CopmlError(
            f"{project.spec.project} is halted by {halted.actor} ({halted.reason}): "
            "nothing is scored until copml resume"
        )
    return halted


def _decide(
    project: Project, kind: Any, model: Any, features: pd.DataFrame, halted: oversight.Halt | None
) -> Decisions:
    decided = kind.decide(project, model, kind.scores(model, features))
    if halted is None:
        return decided
    return replace(decided, review=np.ones(len(decided), dtype=bool))  # all to a person


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
    engine = open_store(project.db_url)
    halted = refuse_if_halted(project, engine)
    if (own := kind.batch_scorer()) is not None:  # input that is not a table file
        return own(project, source, output, at=at, actor=actor)
    data = spec.data
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
    running = rollout.current(engine, spec.project)
    shadow = rollout.load_arm(project, engine, actor, running.shadow, rollout.SHADOW)
    canary = rollout.load_arm(
        project, engine, actor, running.canary if running.share > 0 else None, rollout.CANARY
    )

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
    # A canary's rows: a batch of their own over a snapshot of their own (row i of a batch
    # is row i of its snapshot), numbered in input order like the champion's.
    canary_key = prediction_log.new_key()
    canary_freezer = (
        snapshots.BatchFreezer(data, directory=project.snapshots_dir, source=source)
        if canary is not None
        else None
    )
    canaried: list[prediction_log.Chunk] = []
    positives = reviews = rows = champion_rows = canary_rows = 0
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
                mask = (
                    np.array([rollout.in_canary(k, running.share) for k in redacted[data.id]])
                    if canary is not None
                    else None
                )
                if mask is None or not mask.any():
                    mine, features = redacted, frame[data.features]
                    split = None
                else:
                    assert canary is not None
                    mine = redacted[~mask].reset_index(drop=True)
                    features = frame.loc[~mask, data.features]
                    split = _CanaryRows(mask, canary[0], canary_key, canary_rows)
                behind = [pool.submit(freezer.add, mine)] if len(mine) else []
                decisions = _decide(project, kind, model, features, halted)
                answered = decisions
                if split is not None:
                    assert canary is not None and canary_freezer is not None
                    theirs = frame.loc[split.mask, data.features]
                    challenged = _decide(project, kind, canary[1], theirs, halted)
                    behind.append(
                        pool.submit(canary_freezer.add, redacted[split.mask].reset_index(drop=True))
                    )
                    canaried.append(_kept(challenged))
                    canary_rows += len(challenged)
                    answered = _merge(split.mask, decisions, challenged)
                behind.append(
                    pool.submit(staged.write, frame[data.id], answered, champion_rows, split)
                )
                if len(decisions):
                    decided.append(_kept(decisions))
                if shadow is not None and len(features):  # it mirrors the champion's rows
                    shadowed.append(
                        _kept(kind.decide(project, shadow[1], kind.scores(shadow[1], features)))
                    )
                champion_rows += len(decisions)
                decisions = answered
                rows += len(decisions)
                reviews += int(decisions.review.sum())
                if len(target.classes) == 2:
                    positives += int(decisions.label.sum())
            for done in behind:
                done.result()
        staged.close()
        snap = freezer.finish() if champion_rows else None
        canary_snap = (
            canary_freezer.finish() if canary_freezer is not None and canary_rows else None
        )
        if canary_freezer is not None and canary_snap is None:
            canary_freezer.discard()

        def finish(conn: Connection, _firsts: list[int]) -> None:
            for frozen in (snap, canary_snap):  # in the log's transaction
                if frozen is not None:
                    snapshots.record(conn, frozen, actor=actor)
            evidence = {
                "rows": rows,
                "snapshot_id": snap.id if snap is not None else None,
                "batch": key if snap is not None else None,
                "positives": positives if len(target.classes) == 2 else None,
                "output": str(output),
            }
            if canary_snap is not None and canary is not None:
                evidence["canary"] = {
                    "version": canary[0],
                    "share": running.share,
                    "rows": canary_rows,
                    "batch": canary_key,
                    "snapshot_id": canary_snap.id,
                }
            record_scored(conn, project, champion.version, source, evidence, actor=actor, at=when)

        parts: list[tuple[prediction_log.Header, list[prediction_log.Chunk]]] = []
        if snap is not None:
            header = prediction_log.Header(
                key, when, spec.project, champion.version, snap.id, "batch"
            )
            parts.append((header, decided))
        if canary_snap is not None and canary is not None:
            canary_header = prediction_log.Header(
                canary_key,
                when,
                spec.project,
                canary[0],
                canary_snap.id,
                "batch",
                arm=rollout.CANARY,
            )
            parts.append((canary_header, canaried))
        if shadow is not None and snap is not None:  # its own batch over the same rows
            parts.append((header.mirrored_by(shadow[0]), shadowed))
        prediction_log.write_many(engine, parts, finish)
    except BaseException:
        staged.close()
        staged.path.unlink(missing_ok=True)
        freezer.discard()
        if canary_freezer is not None:
            canary_freezer.discard()
        raise
    os.replace(staged.path, output)
    if snap is not None:
        emit_scored_lineage(project, key, source, champion.version, snap, output, when)
    else:
        freezer.discard()
    main = snap if snap is not None else canary_snap
    assert main is not None
    return ScoreResult(
        rows,
        champion.version,
        main.id,
        key if snap is not None else canary_key,
        output,
        positives if len(target.classes) == 2 else None,
        reviews,
    )
