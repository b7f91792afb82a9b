"""Engines and migrations: one function opens a store that is ready to use."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, create_engine, event, inspect, text

HEAD_REVISION = "0006"
_MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed transaction survives power loss, not only a process crash.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade(engine: Engine) -> None:
    """Run the Alembic migrations up to head on ``engine``."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@cache
def open_store(url: str) -> Engine:
    """An engine on a store at the latest schema; Alembic is imported only when needed."""
    engine = _engine(url)
    if _revision(engine) != HEAD_REVISION:
        try:
            upgrade(engine)
        except Exception:
            # Another process (a second server worker) may have migrated it meanwhile.
            if _revision(engine) != HEAD_REVISION:
                raise
    return engine


def lock_for_writing(conn: Connection) -> None:
    """Take SQLite's write lock now, at the start of a read-then-write transaction.

    In WAL mode a transaction that has read and then writes fails at once (no busy wait)
    if another process committed in between; holding the write lock from the start makes
    concurrent writers queue up instead. PostgreSQL needs nothing here.
    """
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = version_num WHERE 0")


def bind_value(engine: Engine | Connection, column: Column[Any], value: Any) -> Any:
    """``value`` as the driver expects it for ``column`` (e.g. SQLite's datetime text)."""
    processor = column.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
    return processor(value) if processor else value


def bulk_insert(
    conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert many driver-ready rows fast: ``executemany`` on SQLite, ``COPY`` on PostgreSQL.

    Values must already be in driver form (see :func:`bind_value`); this bypasses
    SQLAlchemy's per-row processing, which would cost more than the insert itself.
    """
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    batch = list(rows)
    if batch:  # an empty list would run the statement once, without parameters
        marks = ", ".join("?" for _ in columns)
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", batch)


def json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: stored (and sent) as null, never as invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
