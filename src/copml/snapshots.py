"""Validated, immutable, content-addressed data snapshots.

A snapshot is the data exactly as a model saw it: read from a file or a query, checked
against the spec's ``data`` section, converted to declared types, and frozen as Parquet
named by the sha256 of its canonical Arrow content, so the same content always gets the
same id. Large data can be frozen *by reference*: a manifest of file hashes instead of a
copy, checked again on every read.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
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
        if self.storage == "reference":
            return self.load().iloc[[index]].reset_index(drop=True)
        parquet = pq.ParquetFile(self.path)
        start = 0
        for group in range(parquet.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            if index < start + size:
                return _plain(parquet.read_row_group(group).slice(index - start, 1)).to_pandas()
            start += size
        raise IndexError(f"snapshot {self.id[:12]} has {self.n_rows} rows, not {index + 1}")


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
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=CSV_LINE_LIMIT),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            null_values=[""],
            strings_can_be_null=True,
        ),
    )
    return table.to_pandas()


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
class _Report:
    label: str  # "line" for CSV (header is line 1), "row" otherwise
    offset: int
    problems: list[str] = field(default_factory=list)

    def add(self, column: str, what: str, mask: np.ndarray, values: pd.Series) -> None:
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        shown = ", ".join(
            f"{self.label} {i + self.offset}: {_example(values.iloc[i])}"
            for i in idx[:_MAX_EXAMPLES]
        )
        more = f" and {len(idx) - _MAX_EXAMPLES} more" if len(idx) > _MAX_EXAMPLES else ""
        self.problems.append(f"{column}: {len(idx)} {what} ({shown}{more})")


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
        if unseen.any() and report is not None:
            values = sorted({str(v) for v in raw[unseen].tolist()})[:_MAX_EXAMPLES]
            report.add(
                name,
                f"values outside the declared categories (unseen: {', '.join(map(repr, values))})",
                unseen,
                raw,
            )
    if not col.nullable:
        flag("missing values (the column is not nullable)", missing)
    return out


def _coerce_all(frame: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    columns = {name: Column.model_validate(spec) for name, spec in schema["columns"].items()}
    return pd.DataFrame(
        {name: _coerce(name, frame[name], col, None) for name, col in columns.items()}
    )


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
    report = _Report("line" if line_numbers else "row", 2 if line_numbers else 1)
    if frame.shape[0] == 0:
        raise DataValidationError("the data has no rows")
    wanted = [c for c in data.columns if require_target or c != data.target]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        report.problems.append(f"missing columns: {', '.join(missing)}")
    present = [c for c in wanted if c in frame.columns]
    typed = {name: _coerce(name, frame[name], data.columns[name], report) for name in present}
    if data.id in frame.columns:
        ids = frame[data.id]
        dupes = ids.duplicated(keep=False).to_numpy() & ids.notna().to_numpy()
        report.add(data.id, "rows share a duplicate id", dupes, ids)
    if report.problems:
        raise DataValidationError(
            f"the data does not match copml.yaml ({len(report.problems)} problems):",
            report.problems,
        )
    return pd.DataFrame(typed)


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


def content_sha256(table: pa.Table) -> str:
    """sha256 of the table's Arrow IPC stream in fixed-size batches: same content, same id."""
    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 16)
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
