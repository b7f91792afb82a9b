"""Validated, immutable, content-addressed data snapshots.

A snapshot is the data exactly as a model saw it: read from a file or a query, checked
against the spec's ``data`` section, converted to declared types, and frozen as Parquet
named by the sha256 of its canonical Arrow content, so the same content always gets the
same id. Large data can be frozen *by reference*: a manifest of file hashes instead of a
copy, checked again on every read.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine, insert, select

from copml import events, profiles
from copml.errors import DataValidationError, NotFoundError
from copml.spec import Column, Data
from copml.store import snapshots as snapshots_table

_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "category": pa.string(),
    "integer": pa.int64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "datetime": pa.timestamp("us", tz="UTC"),
}
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
_MAX_EXAMPLES = 5


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


ROW_GROUP_ROWS = 131_072


@dataclass
class Snapshot:
    """A frozen data set as recorded in the store."""

    id: str
    kind: str
    storage: str
    source: str
    path: str
    n_rows: int
    schema: dict[str, Any]
    profile: dict[str, Any]
    manifest: list[dict[str, Any]] | None = None
    created_at: datetime | None = None
    created: bool = field(default=False, compare=False)

    def load(self) -> pd.DataFrame:
        """The snapshot's rows with their declared types; refuses altered files."""
        if self.storage == "reference":
            for entry in self.manifest or []:
                if file_sha256(Path(entry["path"])) != entry["sha256"]:
                    raise DataValidationError(
                        f"snapshot {self.id[:12]}: {entry['path']} changed since it was frozen"
                    )
            frame = read_files([Path(e["path"]) for e in self.manifest or []])
            return _coerce_all(frame, self.schema)
        return _read_parquet(self.path)

    def row(self, index: int) -> pd.DataFrame:
        """Row ``index`` alone, as a one-row frame with declared types: reads one row group,
        so an audit of one decision never loads a million-row batch."""
        if self.storage != "reference":
            return _row_of(Path(self.path), index, self.id, self.n_rows)
        entries = self.manifest or []
        if not all(e["path"].endswith(".parquet") for e in entries):
            return self.load().iloc[[index]].reset_index(drop=True)
        # A partitioned batch's parts: the one part that holds the row, checked alone.
        start = 0
        for entry in entries:
            path = Path(entry["path"])
            size = pq.ParquetFile(path).metadata.num_rows
            if index < start + size:
                if file_sha256(path) != entry["sha256"]:
                    raise DataValidationError(
                        f"snapshot {self.id[:12]}: {path} changed since it was frozen"
                    )
                return _coerce_all(_row_of(path, index - start, self.id, size), self.schema)
            start += size
        raise IndexError(f"snapshot {self.id[:12]} has {self.n_rows} rows, not {index + 1}")


def _row_of(path: Path, index: int, snapshot_id: str, n_rows: int) -> pd.DataFrame:
    """Row ``index`` of a Parquet file, reading only the row group that holds it."""
    parquet = pq.ParquetFile(path)
    start = 0
    for group in range(parquet.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        if index < start + size:
            return _plain(parquet.read_row_group(group).slice(index - start, 1)).to_pandas()
        start += size
    raise IndexError(f"snapshot {snapshot_id[:12]} has {n_rows} rows, not {index + 1}")


# ------------------------------------------------------------------------------- reading


# The longest CSV line copml reads. Arrow parses a file in blocks of this size (streamed,
# never the whole file in memory); a line longer than a block is refused, not loaded.
CSV_LINE_LIMIT = 4 << 20


def _csv_header(path: Path) -> list[str]:
    """The column names from the first line, read with a bounded buffer: a file that is
    one enormous line is refused without being loaded."""
    with path.open("rb") as fh:
        first = fh.readline(CSV_LINE_LIMIT + 1)
    if len(first) > CSV_LINE_LIMIT:
        raise DataValidationError(
            f"{path}: line 1 is longer than {CSV_LINE_LIMIT >> 20} MiB; not a CSV file copml reads"
        )
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"{path}: not a UTF-8 text file (byte {exc.start + 1} of line 1); give a CSV or "
            "Parquet file"
        ) from None
    return next(csv.reader([text]), [])


def _read_csv(path: Path) -> pd.DataFrame:
    """Every column as text, so type errors are reported by copml rather than guessed."""
    import pyarrow.csv as pacsv

    header = _csv_header(path)
    if not header:
        return pd.DataFrame()
    return pacsv.read_csv(path, **_text_columns(header)).to_pandas()


def _text_columns(header: list[str]) -> dict[str, Any]:
    """Arrow's CSV options that read every column of ``header`` as text (empty: missing)."""
    import pyarrow.csv as pacsv

    return {
        "read_options": pacsv.ReadOptions(block_size=CSV_LINE_LIMIT),
        "convert_options": pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            null_values=[""],
            strings_can_be_null=True,
        ),
    }


def _unreadable(path: Path, exc: pa.ArrowException) -> DataValidationError:
    """Arrow's complaint as one line, without the row it quotes (that may be PII, or huge)."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "straddl" in message:
        message = f"a line is too long (the limit is about {CSV_LINE_LIMIT >> 20} MiB)"
    elif "invalid UTF8" in message:
        message = f"{message.split(':')[0]}: not UTF-8 text"
    else:
        message = message.split(": ")[0][:200]
    return DataValidationError(f"{path}: cannot be read as {path.suffix.lstrip('.')}: {message}")


def read_files(paths: list[Path]) -> pd.DataFrame:
    frames = []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix not in (".parquet", ".pq", ".csv", ".txt"):
            raise DataValidationError(f"{path}: unsupported format (use CSV or Parquet)")
        try:
            if suffix in (".parquet", ".pq"):
                frames.append(pq.read_table(path).to_pandas())
            else:
                frames.append(_read_csv(path))
        except pa.ArrowException as exc:
            raise _unreadable(path, exc) from None
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _columns_of(path: Path) -> list[str]:
    if path.suffix.lower() in (".parquet", ".pq"):
        return [n for n in pq.read_schema(path).names if not n.startswith("__index_level_")]
    return _csv_header(path)


def _parquet_chunks(path: Path, rows: int) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(path)
    # Whole, pandas turns an integer column with a null anywhere into floats; a chunk
    # without one would stay integers: cast such columns in every chunk, as whole (known
    # from the row groups' statistics; a file written without them is read as it comes).
    meta, schema = parquet.metadata, parquet.schema_arrow
    floated = set()
    for j, name in enumerate(parquet.schema.names):
        stats = [meta.row_group(g).column(j).statistics for g in range(meta.num_row_groups)]
        if any(s is not None and s.has_null_count and s.null_count > 0 for s in stats):
            floated.add(name)
    casts = {
        f.name: pa.float64() for f in schema if pa.types.is_integer(f.type) and f.name in floated
    }
    for batch in parquet.iter_batches(batch_size=rows):
        table = pa.Table.from_batches([batch])
        for name, kind in casts.items():
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, table.column(i).cast(kind))
        yield table


def _csv_chunks(path: Path, rows: int) -> Iterator[pa.Table]:
    import pyarrow.csv as pacsv

    header = _csv_header(path)
    if not header:
        return
    reader = pacsv.open_csv(path, **_text_columns(header))
    yield from (pa.Table.from_batches([b]) for b in reader)


def read_chunks(paths: list[Path], rows: int) -> Iterator[pd.DataFrame]:
    """The files' rows as :func:`read_files` reads them, ``rows`` at a time (the last of each
    file shorter): a file of any size is read holding one chunk, never the whole."""
    columns: list[str] = []
    for path in paths:
        if path.suffix.lower() not in (".parquet", ".pq", ".csv", ".txt"):
            raise DataValidationError(f"{path}: unsupported format (use CSV or Parquet)")
        try:
            columns += [c for c in _columns_of(path) if c not in columns]
        except pa.ArrowException as exc:
            raise _unreadable(path, exc) from None
    for path in paths:
        parquet = path.suffix.lower() in (".parquet", ".pq")
        tables = _parquet_chunks(path, rows) if parquet else _csv_chunks(path, rows)
        pending: list[pa.Table] = []
        held = 0
        try:
            for table in tables:
                pending.append(table)
                held += table.num_rows
                while held >= rows:
                    whole = pa.concat_tables(pending)
                    yield _frame(whole.slice(0, rows), columns)
                    pending, held = [whole.slice(rows)], held - rows
            if held:
                yield _frame(pa.concat_tables(pending), columns)
        except pa.ArrowException as exc:
            raise _unreadable(path, exc) from None


def _frame(table: pa.Table, columns: list[str]) -> pd.DataFrame:
    frame = table.to_pandas()
    if list(frame.columns) != columns:  # a folder's files with different columns, as concat
        frame = frame.reindex(columns=columns)
    return frame


def source_files(source: str | Path, root: Path) -> list[Path]:
    """The local files behind a source: one file, or every CSV/Parquet file in a folder."""
    path = Path(source)
    if not path.is_absolute():
        path = root / path
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".csv", ".parquet"))
        if not files:
            raise DataValidationError(f"{path}: folder has no CSV or Parquet files")
        return files
    if not path.exists():
        raise DataValidationError(f"{path}: no such file")
    return [path]


def read_source(source: str, root: Path, query: str | None = None) -> pd.DataFrame:
    """Read a file, a folder of files, or a SQLAlchemy URL with a query."""
    if "://" in source:
        from sqlalchemy import create_engine, text

        if not query:
            raise DataValidationError(f"{source}: a SQL source needs a query")
        engine = create_engine(source)
        try:
            with engine.connect() as conn:
                return pd.read_sql(text(query), conn)
        finally:
            engine.dispose()
    return read_files(source_files(source, root))


# ---------------------------------------------------------------------------- validation


@dataclass
class _Finding:
    """One kind of violation in one column, summed over every chunk of the data."""

    column: str
    what: str
    count: int = 0
    examples: list[str] = field(default_factory=list)
    unseen: list[str] | None = None  # the first distinct values outside the categories

    def text(self) -> str:
        what = self.what
        if self.unseen is not None:
            what = f"{what} (unseen: {', '.join(map(repr, self.unseen))})"
        shown = ", ".join(self.examples)
        more = f" and {self.count - _MAX_EXAMPLES} more" if self.count > _MAX_EXAMPLES else ""
        return f"{self.column}: {self.count} {what} ({shown}{more})"


@dataclass
class _Report:
    """Violations collected over the whole data, which may arrive in chunks: each check has
    a fixed place (column position, check slot), so the report reads the same however the
    rows were chunked."""

    label: str  # "line" for CSV (header is line 1), "row" otherwise
    offset: int  # the number shown for the first row of the current chunk
    findings: dict[tuple[int, int], _Finding | str] = field(default_factory=dict)
    _position: int = 0
    _slot: int = 0

    def column(self, position: int) -> None:
        """The checks that follow are of the column at ``position``."""
        self._position, self._slot = position, 0

    def note(self, position: int, problem: str) -> None:
        self.findings.setdefault((position, 0), problem)

    def add(
        self,
        column: str,
        what: str,
        mask: np.ndarray,
        values: pd.Series | _Shown,
        unseen: list[str] | None = None,
    ) -> None:
        key = (self._position, self._slot)
        self._slot += 1  # every check takes its slot, found or not
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        found = self.findings.setdefault(key, _Finding(column, what))
        assert isinstance(found, _Finding)
        found.count += len(idx)
        room = _MAX_EXAMPLES - len(found.examples)
        found.examples += [
            f"{self.label} {i + self.offset}: {_example(values.iloc[i])}" for i in idx[:room]
        ]
        if unseen is not None:  # the smallest few of all chunks are among each chunk's few
            found.unseen = sorted({*(found.unseen or []), *unseen})[:_MAX_EXAMPLES]

    @property
    def problems(self) -> list[str]:
        return [f if isinstance(f, str) else f.text() for _, f in sorted(self.findings.items())]


def _example(value: object, limit: int = 40) -> str:
    """A bad value as shown in a message: cut short, so one huge field stays one line."""
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[: limit - 1]}…"


def _as_text(series: pd.Series) -> pd.Series:
    return series.astype("string")


def _coerce(name: str, raw: pd.Series, col: Column, report: _Report | None) -> pd.Series:
    """Convert one column to its declared type, reporting every value that does not fit."""
    series = raw
    if col.na_values and (pd.api.types.is_string_dtype(series) or series.dtype == object):
        series = series.mask(series.isin(col.na_values))
    missing = series.isna().to_numpy()

    def flag(what: str, mask: np.ndarray) -> None:
        if report is not None:
            report.add(name, what, mask, raw)

    if col.type in ("integer", "float"):
        numbers = pd.to_numeric(series, errors="coerce")
        bad = (~missing) & numbers.isna().to_numpy()
        flag(f"values are not {'numbers' if col.type == 'float' else 'integers'}", bad)
        if col.type == "integer":
            frac = (~missing) & ~bad & (numbers.fillna(0) % 1 != 0).to_numpy()
            flag("values are not whole numbers", frac)
        if col.min is not None:
            flag(f"values are below the minimum {col.min}", (numbers < col.min).to_numpy())
        if col.max is not None:
            flag(f"values are above the maximum {col.max}", (numbers > col.max).to_numpy())
        out = numbers.astype("float64")
        if col.type == "integer":
            out = out.round().astype("Int64" if col.nullable else "float64")
            if not col.nullable and not missing.any() and not bad.any():
                out = out.astype("int64")
    elif col.type == "boolean":
        if pd.api.types.is_bool_dtype(series):
            out = series
            flag("values are not true/false", np.zeros(len(series), dtype=bool))
        else:
            text = _as_text(series).str.strip().str.lower()
            out = pd.Series(pd.NA, index=series.index, dtype="boolean")
            out[text.isin(_TRUE).fillna(False).to_numpy()] = True
            out[text.isin(_FALSE).fillna(False).to_numpy()] = False
            flag("values are not true/false", (~missing) & out.isna().to_numpy())
    elif col.type == "datetime":
        out = pd.to_datetime(series, errors="coerce", utc=True)
        flag("values are not dates", (~missing) & out.isna().to_numpy())
    else:
        out = _as_text(series)
    if col.categories is not None:
        numeric = col.type in ("integer", "float")
        allowed = (
            [float(c) for c in col.categories] if numeric else [str(c) for c in col.categories]
        )
        unseen = (~missing) & ~out.isin(allowed).fillna(False).to_numpy()
        if report is not None:  # called even when none is unseen: the check keeps its slot
            values = sorted({str(v) for v in raw[unseen].tolist()})[:_MAX_EXAMPLES]
            report.add(name, "values outside the declared categories", unseen, raw, values)
    if not col.nullable:
        flag("missing values (the column is not nullable)", missing)
    return out


def _coerce_all(frame: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    columns = {name: Column.model_validate(spec) for name, spec in schema["columns"].items()}
    return pd.DataFrame(
        {name: _coerce(name, frame[name], col, None) for name, col in columns.items()}
    )


class Validation:
    """Validates data that arrives in chunks exactly as :func:`validate` does the whole:
    line numbers count over the whole input, ids are compared across chunks, and
    :meth:`finish` raises one report of every violation once all rows were seen."""

    def __init__(self, data: Data, *, require_target: bool = True, line_numbers: bool = False):
        self._data = data
        self._wanted = [c for c in data.columns if require_target or c != data.target]
        self._first = 2 if line_numbers else 1
        self._report = _Report("line" if line_numbers else "row", self._first)
        self.rows = 0
        self._ids: list[pd.Series | pa.Array] = []

    def check(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The next rows with declared types; their problems are kept for :meth:`finish`."""
        report = self._report
        report.offset = self._first + self.rows
        missing = [c for c in self._wanted if c not in frame.columns]
        if missing:
            report.note(-1, f"missing columns: {', '.join(missing)}")
        typed = {}
        for position, name in enumerate(self._wanted):
            if name in frame.columns:
                report.column(position)
                typed[name] = _coerce(name, frame[name], self._data.columns[name], report)
        if self._data.id in frame.columns:
            ids = frame[self._data.id]
            if self._ids:  # many chunks: ids kept as Arrow arrays, not Python strings
                self._ids = [self._arrow(chunk) for chunk in self._ids]
                ids = self._arrow(ids)
            self._ids.append(ids)
        self.rows += len(frame)
        return pd.DataFrame(typed)

    def finish(self) -> None:
        """Raise the report of every violation seen, if any."""
        if self.rows == 0:
            raise DataValidationError("the data has no rows")
        self._duplicates()
        self._ids = []  # up to 20 bytes a row: not held while the caller goes on
        if self._report.problems:
            raise DataValidationError(
                f"the data does not match copml.yaml ({len(self._report.problems)} problems):",
                self._report.problems,
            )

    def _duplicates(self) -> None:
        report = self._report
        report.offset = self._first
        report.column(len(self._wanted))
        if len(self._ids) == 1:
            ids = self._ids[0]
            dupes = ids.duplicated(keep=False).to_numpy() & ids.notna().to_numpy()
            report.add(self._data.id, "rows share a duplicate id", dupes, ids)
            return
        if not self._ids:
            return
        # Many chunks: compared in Arrow (a hash table of the ids, not a frame of them).
        import pyarrow.compute as pc

        arrays = [a for a in self._ids if isinstance(a, pa.Array)]
        if len({a.type for a in arrays}) > 1:
            arrays = [a.cast(pa.string()) for a in arrays]
        ids = pa.chunked_array(arrays)
        counts = pc.value_counts(ids)
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        repeated = pc.drop_null(repeated)
        if len(repeated) == 0:
            return
        dupes = pc.is_in(ids, value_set=repeated).to_numpy()
        hits = np.flatnonzero(dupes)[:_MAX_EXAMPLES].tolist()
        report.add(self._data.id, "rows share a duplicate id", dupes, _Shown(arrays, hits))

    @staticmethod
    def _arrow(ids: pd.Series | pa.Array) -> pa.Array:
        return ids if isinstance(ids, pa.Array) else pa.array(ids, from_pandas=True)


class _Shown:
    """The few values a report shows of a column held in chunks, by position (``.iloc[i]``),
    each as pandas gives it."""

    def __init__(self, chunks: list[pa.Array], positions: list[int]) -> None:
        self.iloc: dict[int, object] = {}
        for position in positions:
            row = position
            for chunk in chunks:
                if row < len(chunk):
                    self.iloc[position] = chunk.slice(row, 1).to_pandas().iloc[0]
                    break
                row -= len(chunk)


def validate(
    frame: pd.DataFrame,
    data: Data,
    *,
    require_target: bool = True,
    line_numbers: bool = False,
) -> pd.DataFrame:
    """Check ``frame`` against the declared data section and return it with declared types.

    Every violation is collected before raising, so one run shows the whole report.
    """
    if frame.shape[0] == 0:
        raise DataValidationError("the data has no rows")
    validation = Validation(data, require_target=require_target, line_numbers=line_numbers)
    typed = validation.check(frame)
    validation.finish()
    return typed


def typed(frame: pd.DataFrame, data: Data, columns: list[str]) -> pd.DataFrame:
    """``frame``'s ``columns`` with declared types, for rows that already passed
    :class:`Validation` (nothing is checked or reported again)."""
    return pd.DataFrame(
        {name: _coerce(name, frame[name], data.columns[name], None) for name in columns}
    )


# ------------------------------------------------------------------------------ freezing


def _categorical(values: pa.Array, categories: list[str]) -> pa.DictionaryArray:
    """Dictionary-encode with the declared categories, in declared order, as the dictionary.

    Canonical (same values, same bytes) and about ten times smaller than plain strings, so
    hashing and writing a large snapshot stay cheap.
    """
    import pyarrow.compute as pc

    declared = pa.array(categories, type=pa.string())
    encoded = pc.dictionary_encode(values)
    remap = pc.index_in(encoded.dictionary, value_set=declared)
    indices = pc.take(remap, encoded.indices).cast(pa.int16())
    return pa.DictionaryArray.from_arrays(indices, declared)


def _arrow_table(frame: pd.DataFrame, data: Data) -> pa.Table:
    arrays, fields = [], []
    private = {data.id, *data.pii}
    for name in frame.columns:
        col = data.columns[name]
        # A batch's id and PII columns arrive as keyed hashes (text), whatever their type.
        hashed = name in private and isinstance(frame[name].dtype, pd.StringDtype)
        kind = pa.string() if hashed else _ARROW_TYPES[col.type]
        values = pa.array(frame[name], type=kind, from_pandas=True)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if col.type == "category" and col.categories and not hashed:
            values = _categorical(values, [str(c) for c in col.categories])
        arrays.append(values)
        fields.append(pa.field(name, values.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A frozen Parquet file as plain columns (categories come back as text, not Categorical)."""
    return _plain(pq.read_table(path, columns=columns)).to_pandas()


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary-encoded (category) columns back to their plain value type."""
    fields = [
        pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


_HASH_ROWS = 1 << 16  # rows per record batch of the stream a content id hashes


def content_sha256(table: pa.Table) -> str:
    """sha256 of the table's Arrow IPC stream in fixed-size batches: same content, same id."""
    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=_HASH_ROWS)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def _kinds(data: Data, columns: list[str]) -> dict[str, str]:
    kinds = {}
    for c in columns:
        col = data.columns[c]
        if c == data.id or c in data.pii:
            kinds[c] = "identifier"
        elif col.type in ("integer", "float") and col.categories is None:
            kinds[c] = "numeric"
        else:
            kinds[c] = "categorical"
    return kinds


def _schema(data: Data, columns: list[str]) -> dict[str, Any]:
    return {
        "columns": {c: data.columns[c].model_dump(exclude_defaults=True) for c in columns},
        "id": data.id,
        "target": data.target if data.target in columns else None,
        "positive": data.positive,
    }


def prepare(
    frame: pd.DataFrame,
    data: Data,
    *,
    directory: Path,
    source: str,
    kind: str,
    manifest: list[dict[str, Any]] | None = None,
) -> Snapshot:
    """Hash a validated frame and write its Parquet file; nothing touches the store yet."""
    table = _arrow_table(frame, data)
    if manifest is None:
        snapshot_id = content_sha256(table)
        storage = "copy"
        path = directory / f"{snapshot_id}.parquet"
    else:
        snapshot_id = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        storage = "reference"
        path = Path(manifest[0]["path"])
    if storage == "copy" and not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        # zstd level 1 without column statistics: a third faster to write than the defaults
        # on a million rows; nothing reads snapshots by predicate. Row groups of 128k rows:
        # an audit reads one of them to find one decision's input, not the whole batch.
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            compression_level=1,
            write_statistics=False,
            row_group_size=ROW_GROUP_ROWS,
        )
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written snapshot
    columns = list(frame.columns)
    snap = Snapshot(
        id=snapshot_id,
        kind=kind,
        storage=storage,
        source=source,
        path=str(path),
        n_rows=len(frame),
        schema=_schema(data, columns),
        # Training data is the reference for drift; a batch is compared against it at
        # monitoring time, so profiling every batch here would only slow scoring down.
        profile=profiles.profile(frame, _kinds(data, columns)) if kind == "training" else {},
        manifest=manifest,
        created_at=datetime.now(UTC),
    )
    if data.target in frame.columns and data.positive is not None:  # a binary target
        positive = (frame[data.target].astype(str) == str(data.positive)).mean()
        snap.profile["__target__"] = {"kind": "target", "positive_rate": float(positive)}
    return snap


class _Digest:
    """A write-only file that keeps the sha256 of what is written to it."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.closed = False

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class BatchFreezer:
    """Freezes a batch that arrives in chunks as :func:`prepare` freezes it whole: the same
    content id and Parquet row groups, holding a few row groups at a time.

    The id is the sha256 of the IPC stream :func:`content_sha256` writes: record batches of
    ``_HASH_ROWS`` rows sliced from one table. Arrow writes a slice's validity bitmap as it
    lies in memory unless that buffer is longer than the slice needs, so each batch is
    written here as a slice of held rows with at least ``_HASH_ROWS`` more behind it (a
    longer buffer, as in the whole table), and the tail as the whole table's tail.
    """

    def __init__(self, data: Data, *, directory: Path, source: str) -> None:
        self._data, self._directory, self._source = data, directory, source
        directory.mkdir(parents=True, exist_ok=True)
        self._tmp = directory / f".batch-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        self._digest = _Digest()
        self._stream: pa.ipc.RecordBatchStreamWriter | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._held: list[pa.Table] = []
        self._held_rows = 0
        self._columns: list[str] = []
        self.rows = 0
        self._created: Path | None = None

    def add(self, frame: pd.DataFrame) -> None:
        table = _arrow_table(frame, self._data)
        if self._stream is None:
            self._columns = list(frame.columns)
            self._stream = pa.ipc.new_stream(self._digest, table.schema)
            # zstd level 1 without statistics, 128k-row groups: as prepare() writes them.
            self._parquet = pq.ParquetWriter(
                self._tmp,
                table.schema,
                compression="zstd",
                compression_level=1,
                write_statistics=False,
            )
        self._held.append(table)
        self._held_rows += table.num_rows
        self.rows += table.num_rows
        ready = (self._held_rows - _HASH_ROWS) // ROW_GROUP_ROWS * ROW_GROUP_ROWS
        if ready > 0:
            held = pa.concat_tables(self._held).combine_chunks()
            self._write(held.slice(0, ready))
            self._held, self._held_rows = [held.slice(ready)], self._held_rows - ready

    def _write(self, table: pa.Table) -> None:
        assert self._stream is not None and self._parquet is not None
        self._stream.write_table(table, max_chunksize=_HASH_ROWS)
        self._parquet.write_table(table, row_group_size=ROW_GROUP_ROWS)

    def finish(self) -> Snapshot:
        """The snapshot of every row added, its file in place (not yet in the store)."""
        if self._stream is None or self._parquet is None:
            raise DataValidationError("the data has no rows")
        self._write(pa.concat_tables(self._held).combine_chunks())
        self._held = []
        self._stream.close()
        self._parquet.close()
        snapshot_id = self._digest.sha256.hexdigest()
        path = self._directory / f"{snapshot_id}.parquet"
        if path.exists():  # the same content frozen before: content-addressed, kept
            self._tmp.unlink()
        else:
            os.replace(self._tmp, path)
            self._created = path
        return Snapshot(
            id=snapshot_id,
            kind="batch",
            storage="copy",
            source=self._source,
            path=str(path),
            n_rows=self.rows,
            schema=_schema(self._data, self._columns),
            profile={},  # batches are compared with the training data at monitoring time
            created_at=datetime.now(UTC),
        )

    def discard(self) -> None:
        """Remove what this freezing wrote: a refused batch leaves no file behind."""
        for writer in (self._stream, self._parquet):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
        self._tmp.unlink(missing_ok=True)
        if self._created is not None:
            self._created.unlink(missing_ok=True)


def record(conn: Connection, snap: Snapshot, *, actor: str = "system") -> Snapshot:
    """Store a prepared snapshot in the caller's transaction; an existing id is kept as is."""
    row = conn.execute(select(snapshots_table).where(snapshots_table.c.id == snap.id)).first()
    if row is not None:
        return _from_row(row)
    conn.execute(
        insert(snapshots_table).values(
            id=snap.id,
            created_at=snap.created_at,
            kind=snap.kind,
            storage=snap.storage,
            source=snap.source,
            path=snap.path,
            n_rows=snap.n_rows,
            n_bytes=Path(snap.path).stat().st_size if Path(snap.path).exists() else 0,
            schema=snap.schema,
            profile=snap.profile,
            manifest=snap.manifest,
        )
    )
    events.record(
        conn,
        events.Kind.SNAPSHOT_CREATED,
        actor=actor,
        subject=f"snapshot:{snap.id}",
        reason=f"{snap.kind} data from {snap.source}",
        evidence={"rows": snap.n_rows, "storage": snap.storage},
    )
    return dataclasses.replace(snap, created=True)


def create(
    engine: Engine,
    data: Data,
    *,
    root: Path,
    directory: Path,
    source: str | None = None,
    query: str | None = None,
    by_reference: bool = False,
    actor: str = "system",
) -> Snapshot:
    """Read, validate and freeze the training data declared in the spec (or ``source``)."""
    if source is None:
        source, query = data.source, data.query
    if data.kind != "table":  # read by the model kind that knows such data
        from copml.kinds import kind_reading

        return kind_reading(data.kind).snapshot(
            engine, data, root=root, directory=directory, source=source, actor=actor
        )
    if by_reference:
        if "://" in source:
            raise DataValidationError("snapshots by reference support local files only")
        files = source_files(source, root)
        manifest = [
            {"path": str(p.resolve()), "size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in files
        ]
        raw = read_files(files)
    else:
        manifest = None
        raw = read_source(source, root, query)
    is_csv = "://" not in source and source.lower().endswith(".csv")
    frame = validate(raw, data, line_numbers=is_csv)
    snap = prepare(
        frame, data, directory=directory, source=source, kind="training", manifest=manifest
    )
    with engine.begin() as conn:
        return record(conn, snap, actor=actor)


def freeze(
    engine: Engine,
    data: Data,
    frame: pd.DataFrame,
    *,
    snapshot_id: str,
    directory: Path,
    source: str,
    storage: str,
    profile: dict[str, Any] | None = None,
    actor: str = "system",
) -> Snapshot:
    """Record ``frame`` as a training snapshot under an id its reader computed (a kind whose
    data is not a table file hashes its own content); ``profile`` adds to the columns'."""
    frame = frame[list(data.columns)].reset_index(drop=True)
    path = directory / f"{snapshot_id}.parquet"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        pq.write_table(_arrow_table(frame, data), tmp, compression="zstd")
        os.replace(tmp, path)
    profiled = profiles.profile(frame[data.features], _kinds(data, data.features))
    profiled.update(profile or {})
    positive = float((frame[data.target] == str(data.positive)).mean())
    profiled["__target__"] = {"kind": "target", "positive_rate": positive}
    snap = Snapshot(
        id=snapshot_id,
        kind="training",
        storage=storage,
        source=source,
        path=str(path),
        n_rows=len(frame),
        schema=_schema(data, list(frame.columns)),
        profile=profiled,
        created_at=datetime.now(UTC),
    )
    with engine.begin() as conn:
        return record(conn, snap, actor=actor)


def _from_row(row: Any) -> Snapshot:
    m = row._mapping
    return Snapshot(
        id=m["id"],
        kind=m["kind"],
        storage=m["storage"],
        source=m["source"],
        path=m["path"],
        n_rows=m["n_rows"],
        schema=m["schema"],
        profile=m["profile"],
        manifest=m["manifest"],
        created_at=m["created_at"],
    )


def get(engine: Engine, snapshot_id: str, *, missing_ok: bool = False) -> Snapshot | None:
    """A snapshot by id or by a unique prefix of at least 8 characters."""
    with engine.connect() as conn:
        query = select(snapshots_table)
        if len(snapshot_id) == 64:
            rows = conn.execute(query.where(snapshots_table.c.id == snapshot_id)).all()
        elif len(snapshot_id) >= 8:
            rows = conn.execute(query.where(snapshots_table.c.id.startswith(snapshot_id))).all()
        else:
            rows = []
    if len(rows) == 1:
        return _from_row(rows[0])
    if missing_ok:
        return None
    raise NotFoundError(f"no snapshot {snapshot_id!r}" if not rows else "ambiguous snapshot id")


def latest(engine: Engine, kind: str = "training") -> Snapshot:
    with engine.connect() as conn:
        row = conn.execute(
            select(snapshots_table)
            .where(snapshots_table.c.kind == kind)
            .order_by(snapshots_table.c.created_at.desc())
            .limit(1)
        ).first()
    if row is None:
        raise NotFoundError("no training snapshot yet; run 'copml snapshot' first")
    return _from_row(row)
