"""One operator at a time on a shared store (design §9): a PostgreSQL advisory lock.

Several ``copml operate`` processes (replicas, a CronJob that overlaps itself) may point at
one PostgreSQL store. Each pass first tries a session-level advisory lock keyed on the
store's database, schema and project: the process that gets it leads the pass (batch,
window, policies, actions); the others skip theirs, so a window and policy are acted on
once. The lock lives as long as the leader's database session: a leader killed mid-pass
loses it when its connection closes, and the next pass of another process takes over.

While a process leads, no other process runs actions on the store, so an action another
process left ``running`` was interrupted, whatever machine that process ran on (see
:func:`copml.operate.actions.recover`). An embedded SQLite store serves one process: there
is no lock, and liveness is judged by process id as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from copml.project import Project
from copml.store import open_store


@dataclass(frozen=True)
class Lead:
    """The pass this process may run: ``sole`` when it holds the store's operator lock (no
    other process acts on the store meanwhile)."""

    sole: bool


def _key(conn: Connection, project: Project) -> int:
    """The lock's 64-bit key: one per database, schema and project."""
    where = conn.execute(text("SELECT current_database(), current_schema()")).one()
    name = f"copml.operate/{where[0]}/{where[1]}/{project.spec.project}"
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def lead(project: Project) -> Iterator[Lead | None]:
    """Lead one pass on the project's store: a :class:`Lead`, or None when another process
    leads it now (the caller skips its pass)."""
    engine = open_store(project.db_url)
    if engine.dialect.name != "postgresql":
        yield Lead(sole=False)
        return
    with engine.connect() as conn:
        key = _key(conn, project)
        held = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
        conn.commit()  # a session lock outlives the transaction; none is left open
        if not held:
            yield None
            return
        try:
            yield Lead(sole=True)
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
            except DBAPIError:
                conn.invalidate()  # the session is gone, and its lock with it
