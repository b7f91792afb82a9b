"""Engines and migrations: one function opens a store that is ready to use."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

HEAD_REVISION = "0012"
_MIGRATIONS = Path(__file__).parent / "migrations"
# Applications that keep tables of their own in the store register a :class:`Migrations`.
MIGRATIONS_GROUP = "copml.migrations"


@dataclass(frozen=True)
class Migrations:
    """An application's own tables and the Alembic branch that creates them.

    The branch's base revision has ``down_revision = None``, its own ``branch_labels`` and
    ``depends_on`` the core revision it needs; ``head`` is its latest revision. Every
    installed application's branch is applied to every store (as Django applies every
    installed app's), so the core schema never names an application's table. ``tables``
    hang off ``predictions.seq``: retention deletes their rows with the predictions'.
    """

    folder: Path
    head: str
    tables: tuple[Table, ...] = ()


@cache
def applications() -> tuple[Migrations, ...]:
    """The installed applications' migrations, in entry-point name order."""
    found = sorted(entry_points(group=MIGRATIONS_GROUP), key=lambda ep: ep.name)
    return tuple(ep.load() for ep in found)


def heads() -> frozenset[str]:
    """The revisions a store at the latest schema has: the core's and each application's."""
    return frozenset({HEAD_REVISION, *(m.head for m in applications())})


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
    # A server that is not there must be an error within seconds, never a hang: a request
    # waiting on the store is answered 503 (:data:`UNAVAILABLE`) for its client to retry.
    timeout = {"connect_timeout": 3} if make_url(url).get_driver_name() == "psycopg" else {}
    return create_engine(url, pool_pre_ping=True, connect_args=timeout)


def _unavailable() -> tuple[type[Exception], ...]:
    import sqlite3

    found: list[type[Exception]] = [OperationalError, InterfaceError]
    found += [sqlite3.OperationalError, sqlite3.InterfaceError]
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return tuple(found)
    return (*found, psycopg.OperationalError, psycopg.InterfaceError)


# What a store that cannot answer now raises (down, restarting, a dropped connection, SQLite
# busy past its timeout): SQLAlchemy's errors, and the driver's own where a raw cursor (a
# PostgreSQL COPY) met it. Worth a retry, never a 500.
UNAVAILABLE = _unavailable()


def upgrade(engine: Engine) -> None:
    """Run the Alembic migrations up to head on ``engine``."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    folders = [_MIGRATIONS / "versions", *(m.folder for m in applications())]
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(str(f) for f in folders))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")


def _revisions(engine: Engine) -> frozenset[str]:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return frozenset()
        return frozenset(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


@cache
def open_store(url: str) -> Engine:
    """An engine on a store at the latest schema; Alembic is imported only when needed."""
    engine = _engine(url)
    if not heads() <= _revisions(engine):
        try:
            upgrade(engine)
        except Exception:
            # Another process (a second server worker) may have migrated it meanwhile.
            if not heads() <= _revisions(engine):
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
