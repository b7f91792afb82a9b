"""Query results as Arrow columns, read by the database's own ADBC driver.

Monitoring reads every prediction of a window: millions of rows. Through SQLAlchemy or any
DB-API driver each row becomes a Python tuple (seconds and hundreds of megabytes per
million); Apache Arrow's ADBC drivers for SQLite and PostgreSQL hand back columns built in
C (PostgreSQL's through binary ``COPY``).

ADBC's SQLite driver carries its own copy of SQLite, and two copies of SQLite in one
process do not see each other's locks or WAL index (sqlite.org/howtocorrupt.html §2.2.1:
a read there misses what Python's copy committed since, or worse). So it reads in a child
process that streams the columns back in Arrow's IPC format; small reads, where starting
that process would cost more than it saves, go through SQLAlchemy. Another database
reads through SQLAlchemy too.

Select NOT NULL columns only: the SQLite driver infers each column's type from its first
rows and refuses a later value of another type (a ``NULL`` then a ``REAL``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from sqlalchemy import Engine, Select

from copml.errors import CopmlError

# Below this many rows a child process costs more than the rows through SQLAlchemy.
CHILD_ROWS = 200_000
_BATCH_ROWS = 1 << 16

_SQLITE_CHILD = """
import sys
import adbc_driver_sqlite.dbapi as driver
import pyarrow as pa
path, batch_rows = sys.argv[1], sys.argv[2]
try:
    with driver.connect(path) as conn, conn.cursor() as cursor:
        cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": batch_rows})
        cursor.execute(sys.stdin.read())
        reader = cursor.fetch_record_batch()
        with pa.ipc.new_stream(sys.stdout.buffer, reader.schema) as out:
            for batch in reader:
                out.write_batch(batch)
except Exception as exc:
    sys.exit(f"{type(exc).__name__}: {exc}")
"""


def _typed(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    """The batches cast to ``schema`` as they come (SQLite has no booleans and only 64-bit
    integers; an empty result has no types at all): wide columns never pile up."""
    return pa.Table.from_batches(
        [
            pa.record_batch([b.column(i).cast(f.type) for i, f in enumerate(schema)], schema=schema)
            for b in batches
        ],
        schema=schema,
    )


def _sqlite_in_child(path: str, sql: str, schema: pa.Schema) -> pa.Table:
    child = subprocess.Popen(
        [sys.executable, "-c", _SQLITE_CHILD, path, str(_BATCH_ROWS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    child.stdin.write(sql.encode())
    child.stdin.close()
    try:
        table = _typed(pa.ipc.open_stream(child.stdout), schema)
    except pa.ArrowInvalid:
        table = None  # the child failed before its stream began: its stderr says why
    error = child.stderr.read().decode(errors="replace")
    if child.wait() != 0 or table is None:
        raise CopmlError(f"reading the store failed: {error.strip()[-2000:]}")
    return table


def _postgresql(engine: Engine, sql: str, schema: pa.Schema) -> pa.Table | None:
    try:  # the ``postgres`` extra brings it
        import adbc_driver_postgresql.dbapi
    except ImportError:
        return None
    uri = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with adbc_driver_postgresql.dbapi.connect(uri) as conn, conn.cursor() as cursor:
        cursor.execute(sql)
        return _typed(cursor.fetch_record_batch(), schema)


def _sqlalchemy(engine: Engine, query: Select[Any], schema: pa.Schema) -> pa.Table:
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    return pa.table(
        [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )


def read(engine: Engine, query: Select[Any], schema: pa.Schema, rows: int) -> pa.Table:
    """The rows of ``query`` as a table of ``schema`` (its columns in the query's order);
    ``rows`` is about how many there may be.

    The query is rendered with its values inline (they are copml's own numbers and dates,
    never a caller's text), so one statement serves every driver's parameter style.
    """
    url = engine.url
    backend = url.get_backend_name()
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    if backend == "postgresql":
        found = _postgresql(engine, sql, schema)
        if found is not None:
            return found
    elif backend == "sqlite" and url.database not in (None, "", ":memory:") and rows >= CHILD_ROWS:
        return _sqlite_in_child(url.database, sql, schema)  # type: ignore[arg-type]
    return _sqlalchemy(engine, query, schema)
