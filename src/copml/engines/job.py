"""What a worker does with one partition, the same on every engine.

The job carries everything a worker needs and assumes no shared filesystem for the model:
the champion's artifact travels as bytes with the sha256 recorded at registration, and a
worker unpacks and verifies it once per process before loading it (design §8). Each
partition is validated as ``copml score`` validates a file, scored and decided through the
model kind, and written as Parquet parts under the batch's folder: the log part (what was
decided, per global row), the input part (the row as the model saw it, PII as keyed
hashes) and the output part (what the team asked for). Each file is written under a
temporary name and renamed, so a retried task simply writes it again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from copml import prediction_log, snapshots
from copml.engines.partitions import Partition
from copml.errors import CopmlError
from copml.kinds import Decisions, kind_named
from copml.project import Project
from copml.redaction import redact
from copml.spec import Spec

__all__ = ["PartWritten", "Partition", "ScoringJob", "pack_artifact", "score_partition"]

# Rows scored at a time inside a partition, as the single-process path does.
CHUNK_ROWS = 100_000


@dataclass(frozen=True)
class ScoringJob:
    """One batch's scoring, as shipped to the workers."""

    spec: Spec
    key: str  # the batch key: prefix of every prediction id
    model_version: str
    artifact: dict[str, bytes]  # the champion's folder: relative path -> content
    artifact_sha256: str  # as recorded at registration
    pii_key: bytes
    folder: str  # the batch's folder of parts
    output: str  # the staged output folder


@dataclass(frozen=True)
class PartWritten:
    """What a worker wrote for one partition (or why it could not: ``error``)."""

    part: int
    first_row: int
    n_rows: int
    path: str = ""
    sha256: str = ""
    input_path: str = ""
    input_sha256: str = ""
    output_path: str = ""
    error: str | None = None


def job_for(project: Project, champion: Any, key: str, folder: Path) -> ScoringJob:
    """The job that scores batch ``key`` with ``champion`` (a registry version: its verified
    local copy travels as bytes), writing its parts under ``folder``."""
    from copml import registry  # the driver's side only: workers never import MLflow

    return ScoringJob(
        spec=project.spec,
        key=key,
        model_version=champion.version,
        artifact=pack_artifact(registry.local_copy(project, champion)),
        artifact_sha256=champion.artifact_sha256,
        pii_key=project.pii_key,
        folder=str(folder),
        output=str(folder / "output"),
    )


def pack_artifact(folder: Path) -> dict[str, bytes]:
    """A model folder's files as bytes, by path relative to the folder."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _artifact_sha256(files: dict[str, bytes]) -> str:
    """:func:`copml.registry.directory_sha256` of the folder these files make."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


_loaded: dict[str, Any] = {}  # artifact sha256 -> model: loaded once per worker process


def _model(job: ScoringJob) -> Any:
    """The champion, verified against its recorded sha256 here on the worker (the bytes
    of every job it is handed: hashing them costs milliseconds), loaded once."""
    actual = _artifact_sha256(job.artifact)
    if actual != job.artifact_sha256:
        raise CopmlError(
            f"model version {job.model_version}: artifact sha256 {actual[:12]}… on the worker "
            f"does not match the {job.artifact_sha256[:12]}… recorded at registration"
        )
    model = _loaded.get(job.artifact_sha256)
    if model is not None:
        return model
    with tempfile.TemporaryDirectory(prefix="copml-model-") as tmp:
        for name, content in job.artifact.items():
            target = Path(tmp, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        model = kind_named(job.spec.model.task).load(Path(tmp))
    _loaded[job.artifact_sha256] = model
    return model


def _read(partition: Partition) -> pd.DataFrame:
    if partition.row_groups is None:
        return snapshots.read_files([Path(partition.path)])
    table = pq.ParquetFile(partition.path).read_row_groups(list(partition.row_groups))
    return table.to_pandas()


def _write(table: pa.Table, path: Path) -> str:
    """Write ``table`` at ``path`` atomically; its sha256."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd", compression_level=1)
    os.replace(tmp, path)
    return snapshots.file_sha256(path)


def _log_table(first_row: int, decided: Decisions) -> pa.Table:
    n = len(decided.score)
    columns = {
        "row": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
        "label": pa.array(np.asarray(decided.label).astype(np.int8)),
        "score": pa.array(np.asarray(decided.score, dtype=np.float64)),
        "review": pa.array(np.asarray(decided.review, dtype=bool)),
    }
    if decided.probabilities is not None:
        columns["probabilities"] = pa.array(list(np.asarray(decided.probabilities, np.float64)))
    return pa.table(columns)


def _output_table(job: ScoringJob, ids: pd.Series, first_row: int, decided: Decisions) -> pa.Table:
    """The columns :func:`copml.score.score` writes, with this partition's prediction ids."""
    kind = kind_named(job.spec.model.task)
    target = kind.target(job.spec.data)
    n = len(decided.score)
    columns = {
        ids.name: pa.array(ids, from_pandas=True),
        "label": pa.array(target.shown(decided.label, decided.score), from_pandas=True),
        "score": pa.array(decided.score),
        "model_version": pa.array(np.full(n, job.model_version)),
        "prediction_id": prediction_log.prediction_ids(job.key, n, start=first_row),
    }
    if job.spec.reviews:
        columns["review"] = pa.array(decided.review)
    if decided.probabilities is not None:
        for i, name in enumerate(target.classes):
            columns[f"probability.{name}"] = pa.array(decided.probabilities[:, i])
    return pa.table(columns)


def score_partition(job: ScoringJob, partition: Partition) -> PartWritten:
    """Validate, score, decide and write one partition; a refusal comes back as
    ``error`` (naming the field), not as an engine's stack trace."""
    from threadpoolctl import threadpool_limits

    try:
        data = job.spec.data
        kind = kind_named(job.spec.model.task)
        raw = _read(partition)
        if len(raw) != partition.n_rows:
            raise CopmlError(
                f"{partition.path}: {len(raw)} rows where the plan counted {partition.n_rows}"
            )
        frame = snapshots.validate(
            raw, data, require_target=False, line_numbers=partition.is_csv
        ).drop(columns=[data.target], errors="ignore")
        model = _model(job)
        features = frame[data.features]
        # One thread per worker: the engine runs one worker per core already.
        with threadpool_limits(1):
            parts = [
                kind.scores(model, features.iloc[s : s + CHUNK_ROWS])
                for s in range(0, len(features), CHUNK_ROWS)
            ]
        scores = np.concatenate(parts)
        decided = kind.decide(Project(Path(job.folder), job.spec), model, scores)
        redacted = redact(frame, sorted({data.id, *data.pii}), job.pii_key)
    except CopmlError as exc:
        where = f"{Path(partition.path).name}" + (
            f" (row groups {partition.row_groups[0]}–{partition.row_groups[-1]})"
            if partition.row_groups
            else ""
        )
        return PartWritten(
            partition.index, partition.first_row, partition.n_rows, error=f"{where}: {exc}"
        )
    name = f"part-{partition.index:05d}.parquet"
    folder = Path(job.folder)
    log_path, input_path = folder / "log" / name, folder / "input" / name
    output_path = Path(job.output) / name
    for p in (log_path, input_path, output_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    sha = _write(_log_table(partition.first_row, decided), log_path)
    input_sha = _write(pa.Table.from_pandas(redacted, preserve_index=False), input_path)
    _write(_output_table(job, frame[data.id], partition.first_row, decided), output_path)
    return PartWritten(
        partition.index,
        partition.first_row,
        len(frame),
        str(log_path),
        sha,
        str(input_path),
        input_sha,
        str(output_path),
    )
