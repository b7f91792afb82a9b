"""How an input is cut into partitions: files, and a Parquet file's row groups.

The plan fixes each partition's first row in the batch before any worker starts, so a
prediction id (batch key + global row number) is the same whichever worker scores which
partition, in whatever order, and the same as the single-process path gives that row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from copml import snapshots
from copml.errors import DataValidationError

# About this many rows per partition: a worker holds one partition's frame at a time.
PARTITION_ROWS = 500_000


@dataclass(frozen=True)
class Partition:
    """Rows ``first_row .. first_row + n_rows - 1`` of the batch: a whole CSV file, or
    some consecutive row groups of a Parquet file."""

    index: int
    path: str
    row_groups: tuple[int, ...] | None  # None: the whole file
    first_row: int
    n_rows: int

    @property
    def is_csv(self) -> bool:
        return self.path.lower().endswith((".csv", ".txt"))


def _parquet_groups(path: Path, rows: int) -> list[tuple[tuple[int, ...], int]]:
    """Consecutive row groups of ``path`` gathered into runs of at least ``rows`` rows."""
    meta = pq.ParquetFile(path).metadata
    runs: list[tuple[tuple[int, ...], int]] = []
    groups: list[int] = []
    size = 0
    for g in range(meta.num_row_groups):
        groups.append(g)
        size += meta.row_group(g).num_rows
        if size >= rows:
            runs.append((tuple(groups), size))
            groups, size = [], 0
    if groups:
        runs.append((tuple(groups), size))
    return runs


def plan(files: list[Path], rows: int = PARTITION_ROWS) -> list[Partition]:
    """The partitions of ``files`` (in their given order). A CSV file is one partition
    (counted here by reading it: Parquet is the format for large batches); a Parquet file
    is split by row groups, about ``rows`` rows a partition, from its footer alone."""
    if rows < 1:
        raise DataValidationError("partition rows must be at least 1")
    partitions: list[Partition] = []
    first = 0
    for path in files:
        if path.suffix.lower() in (".parquet", ".pq"):
            try:
                runs = _parquet_groups(path, rows)
            except OSError as exc:
                raise DataValidationError(f"{path}: not a readable Parquet file ({exc})") from None
            for groups, n in runs:
                partitions.append(Partition(len(partitions), str(path), groups, first, n))
                first += n
        else:
            n = len(snapshots.read_files([path]))
            if n == 0:
                continue
            partitions.append(Partition(len(partitions), str(path), None, first, n))
            first += n
    if first == 0:
        raise DataValidationError("INPUT: no rows to score")
    return partitions
