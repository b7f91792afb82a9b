"""Query results as Arrow columns, read by the database's own ADBC driver.

Monitoring reads every prediction of a window: millions of rows. Through SQLAlchemy or any
DB-API driver each row becomes a Python tuple (seconds and hundreds of megabytes per
million); Apache Arrow's ADBC drivers for SQLite and PostgreSQL hand back columns built in
C (PostgreSQL's through binary ``COPY``). Another database falls back to SQLAlchemy.

Select NOT NULL columns only: the SQLite driver infers each column's type from its first
rows and refuses a later value of another type (a ``NULL`` then a ``REAL``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import Engine, Select


def _connect(engine: Engine) -> Any | None:
    """An ADBC connection to the store, or ``None`` where copml has no driver for it."""
    url = engine.url
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database not in (None, "", ":memory:"):
        import adbc_driver_sqlite.dbapi

        # Read-only: the driver links its own SQLite, whose locks this process's other
        # SQLite cannot see, so closing its connection as "the last" checkpointed and
        # deleted the WAL file under the store's open connections (their later commits
        # went to the deleted file, unseen until they closed). A read-only one never does.
        return adbc_driver_sqlite.dbapi.connect(Path(url.database).resolve().as_uri() + "?mode=ro")
    if backend == "postgresql":
        try:  # the ``postgres`` extra brings it
            import adbc_driver_postgresql.dbapi
        except ImportError:
            return None

        uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return adbc_driver_postgresql.dbapi.connect(uri)
    return None


def read(engine: Engine, query: Select[Any], schema: pa.Schema) -> pa.Table:
    """The rows of ``query`` as a table of ``schema`` (its columns in the query's order).

    The query is rendered with its values inline (they are copml's own numbers and dates,
    never a caller's text), so one statement serves every driver's parameter style.
    """
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    conn = _connect(engine)
    if conn is None:
        with engine.connect() as sa:
            rows = sa.execute(query).all()
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
        return pa.table(
            [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)],
            schema=schema,
        )
    with conn, conn.cursor() as cursor:
        cursor.execute(sql)
        found = cursor.fetch_arrow_table()
    # Same names, the declared types (SQLite has no booleans, an empty result no types).
    found = found.rename_columns(schema.names)
    return pa.table([found.column(i).cast(f.type) for i, f in enumerate(schema)], schema=schema)
