"""Partitioned batches: a batch scored by an engine's workers, visible in one step.

The driver plans the partitions (fixing each one's first row), ships the job, and lets
the engine's workers write Parquet parts under the batch's folder
(``COPML_HOME/batches/<key>/``: ``log/``, ``input/``, ``output/``). Nothing is visible
until every part has been re-read and checked against the sha256 its worker reported;
then one transaction writes the prediction rows, the input snapshot (the input parts, by
reference, with their sha256s), every part's sha256 (``batch_parts``), the event and,
last, the header. Because the rows land in the same ``predictions`` table under the same
ids (batch key + global row), audit, replay, feedback, monitoring and retention read a
partitioned batch exactly as any other.

A run holds an exclusive lock on its folder while it works; a folder without a committed
header whose lock is free belongs to a failed or killed run, and :func:`sweep` (run at
the start of every partitioned run and by ``copml purge``) removes it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Connection, delete, insert, select

from copml import engines, prediction_log, registry, snapshots, times
from copml.engines.job import PartWritten, job_for
from copml.engines.partitions import PARTITION_ROWS, Partition, plan
from copml.errors import CopmlError, DataValidationError
from copml.kinds import kind_for
from copml.project import Project
from copml.score import ScoreResult, emit_scored_lineage, record_scored
from copml.store import batch_parts, batches, open_store

_LOCK = ".lock"


def batches_dir(project: Project) -> Path:
    return project.home / "batches"


@contextmanager
def _held(folder: Path) -> Iterator[IO[bytes]]:
    """An exclusive lock on ``folder`` for as long as this run lives (the OS drops it when
    the process dies, which is how :func:`sweep` tells a killed run from a running one).
    The folder is made and locked under a hidden name, then renamed: no sweep ever sees
    it unlocked."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
    tmp.mkdir(parents=True)
    with (tmp / _LOCK).open("wb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        tmp.rename(folder)
        yield fh


def _abandoned(folder: Path) -> bool:
    if folder.name.startswith("."):  # being made: its maker's process is gone, or not
        try:
            os.kill(int(folder.name.rsplit(".", 1)[1]), 0)
        except (ProcessLookupError, ValueError):
            return True
        except PermissionError:
            return False
        return False
    try:
        fh = (folder / _LOCK).open("rb")
    except FileNotFoundError:
        return True
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a run is still writing it
        return True


def sweep(project: Project) -> list[str]:
    """Remove the parts of runs that never committed (failed or killed) and the
    ``batch_parts`` rows and folders of batches that are gone (purged); the keys removed."""
    root = batches_dir(project)
    folders = sorted(f for f in root.iterdir() if f.is_dir()) if root.exists() else []
    engine = open_store(project.db_url)
    with engine.begin() as conn:
        # A subquery, not a list of keys: the API writes a batch every few milliseconds.
        conn.execute(
            delete(batch_parts).where(batch_parts.c.batch_key.not_in(select(batches.c.key)))
        )
        names = [f.name for f in folders]
        known = {
            k
            for i in range(0, len(names), 500)
            for k in conn.execute(
                select(batches.c.key).where(batches.c.key.in_(names[i : i + 500]))
            ).scalars()
        }
    removed = []
    for folder in folders:
        if folder.name not in known and _abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def _verified(written: list[PartWritten], partitions: list[Partition]) -> list[PartWritten]:
    """The parts in partition order, each re-read and checked against its plan and the
    sha256 its worker reported; a worker's refusal is raised as the data error it is."""
    by_part = {w.part: w for w in written}
    errors = [w.error for w in sorted(written, key=lambda w: w.part) if w.error]
    if errors:
        raise DataValidationError("; ".join(errors))
    parts = []
    for p in partitions:
        w = by_part.get(p.index)
        if w is None:
            raise CopmlError(f"partition {p.index} ({p.path}) came back from no worker")
        for path, sha in ((w.path, w.sha256), (w.input_path, w.input_sha256)):
            actual = snapshots.file_sha256(Path(path))
            if actual != sha:
                raise CopmlError(f"{path}: sha256 {actual[:12]}… is not the worker's {sha[:12]}…")
        rows = pq.ParquetFile(w.path).metadata.num_rows
        if (w.first_row, w.n_rows, rows) != (p.first_row, p.n_rows, p.n_rows):
            raise CopmlError(f"{w.path}: rows {w.first_row}+{rows} where {p.first_row}+{p.n_rows}")
        parts.append(w)
    return parts


def _log(parts: list[PartWritten]) -> pa.Table:
    table = pa.concat_tables(pq.read_table(w.path) for w in parts)
    rows = table.column("row").to_numpy()
    if not np.array_equal(rows, np.arange(len(rows))):
        raise CopmlError("the log parts do not cover the batch's rows once each, in order")
    return table


def _input_snapshot(project: Project, parts: list[PartWritten], source: str) -> snapshots.Snapshot:
    """The batch's input as a snapshot by reference to the workers' input parts."""
    data = project.spec.data
    manifest = [
        {"path": w.input_path, "size": Path(w.input_path).stat().st_size, "sha256": w.input_sha256}
        for w in parts
    ]
    columns = pq.ParquetFile(parts[0].input_path).schema_arrow.names
    schema = snapshots._schema(data, columns)  # the columns as declared, ...
    for c in {data.id, *data.pii} & set(columns):  # ... identities as the hashes they are now
        schema["columns"][c] = {"type": "string", "nullable": True}
    return snapshots.Snapshot(
        id=hashlib.sha256(repr(manifest).encode()).hexdigest(),
        kind="batch",
        storage="reference",
        source=source,
        # The folder of parts: Arrow reads it as one table in part order (the monitor's
        # and feedback's column reads); the manifest checks each part for a whole load.
        path=str(Path(parts[0].input_path).parent),
        n_rows=sum(w.n_rows for w in parts),
        schema=schema,
        profile={},
        manifest=manifest,
        created_at=datetime.now(UTC),
    )


def _publish(staged: Path, output: Path) -> None:
    """Move the output parts' folder to ``output`` (a folder of Parquet parts)."""
    if output.exists():
        shutil.rmtree(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staged), str(output))


def score(
    project: Project,
    source: str | Path,
    output: str | Path,
    *,
    engine: str,
    cluster: str | None = None,
    workers: int = 2,
    partition_rows: int = PARTITION_ROWS,
    at: datetime | None = None,
    actor: str = "system",
) -> ScoreResult:
    """Score ``source`` with the champion on ``engine``; ``output`` becomes a folder of
    Parquet parts (``part-NNNNN.parquet``, in row order) with the single-process columns.

    All or nothing: a failure anywhere leaves no batch, no snapshot, no event and no
    output; a killed run's parts are swept by the next run or ``copml purge``.
    """
    spec = project.spec
    kind = kind_for(spec)
    if kind.batch_scorer() is not None:
        raise CopmlError(
            f"--engine {engine}: a {spec.model.task} model scores its own input; use --engine local"
        )
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise CopmlError(f"--output: {output} is a file; --engine {engine} writes a folder")
    sweep(project)  # also brings the store to the latest revision
    champion = registry.required_champion(project)
    source = str(source)
    partitions = plan(snapshots.source_files(source, project.root), partition_rows)
    key = prediction_log.new_key()
    when = times.utc(at) if at is not None else datetime.now(UTC)
    folder = batches_dir(project) / key
    try:
        with _held(folder):
            job = job_for(project, champion, key, folder)
            with engines.opened(engine, cluster, workers) as running:
                written = running.run(job, partitions)
            parts = _verified(written, partitions)
            log = _log(parts)
            snap = _input_snapshot(project, parts, source)
            label = log.column("label").to_numpy()
            positives = (
                int((label == 1).sum()) if len(kind.target(spec.data).classes) == 2 else None
            )
            evidence = {
                "rows": len(log),
                "snapshot_id": snap.id,
                "batch": key,
                "positives": positives,
                "output": str(output),
                "engine": engine,
                "partitions": len(parts),
            }
            header = prediction_log.Header(
                key, when, spec.project, champion.version, snap.id, "batch"
            )
            _commit(project, header, log, parts, snap, source, evidence, actor=actor)
            _publish(folder / "output", output)
    except BaseException:
        if folder.exists() and not _committed(project, key):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    emit_scored_lineage(project, key, source, champion.version, snap, output, when)
    return ScoreResult(
        len(log),
        champion.version,
        snap.id,
        key,
        output,
        positives,
        int(log.column("review").to_numpy().sum()),
    )


def _commit(
    project: Project,
    header: prediction_log.Header,
    log: pa.Table,
    parts: list[PartWritten],
    snap: snapshots.Snapshot,
    source: str,
    evidence: dict[str, object],
    *,
    actor: str,
) -> None:
    """One transaction: the prediction rows, the input snapshot, every part's sha256, the
    event, and last the header: the batch is visible with all of it or not at all."""

    def finish(conn: Connection, _first: int) -> None:
        snapshots.record(conn, snap, actor=actor)
        rows = [
            {
                "batch_key": header.key,
                "part": w.part,
                "first_row": w.first_row,
                "n_rows": w.n_rows,
                "path": w.path,
                "sha256": w.sha256,
                "input_path": w.input_path,
                "input_sha256": w.input_sha256,
            }
            for w in parts
        ]
        conn.execute(insert(batch_parts), rows)
        version = header.model_version
        record_scored(conn, project, version, source, evidence, actor=actor, at=header.created_at)

    probabilities = (
        np.asarray(log.column("probabilities").to_pylist())
        if "probabilities" in log.column_names
        else None
    )
    prediction_log.write(
        open_store(project.db_url),
        header,
        log.column("label").to_numpy(),
        log.column("score").to_numpy(),
        log.column("review").to_numpy(),
        finish,
        probabilities=probabilities,
    )


def _committed(project: Project, key: str) -> bool:
    with open_store(project.db_url).connect() as conn:
        return conn.execute(select(batches.c.id).where(batches.c.key == key)).first() is not None


def parts_of(project: Project, key: str) -> list[dict[str, object]]:
    """The recorded parts of a partitioned batch (empty for any other batch)."""
    with open_store(project.db_url).connect() as conn:
        rows = conn.execute(
            select(batch_parts).where(batch_parts.c.batch_key == key).order_by(batch_parts.c.part)
        ).all()
    return [dict(r._mapping) for r in rows]


def engine_for(project: Project, chosen: str | None) -> str:
    """The engine a ``copml score`` runs on: the option, else ``serving.engine``, else local."""
    name = chosen or project.spec.serving.engine
    if name not in engines.ENGINES:
        raise CopmlError(f"--engine: {name!r} is not one of {', '.join(engines.ENGINES)}")
    return name


__all__ = ["batches_dir", "engine_for", "parts_of", "score", "sweep"]
