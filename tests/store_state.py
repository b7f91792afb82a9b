"""Everything a request could change, captured so a test can assert that nothing did.

A refused request must leave every table and every file of the project as it was
(issue 12.5). The only rows that change on their own are the server's clock-driven ones
(heartbeats and the cost of the process since the last one), so they are left out by name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, select

from copml.project import Project

# Written by the server's heartbeat timer, never by a request.
CLOCK_DRIVEN = frozenset({"heartbeats", "usage", "alembic_version"})
# The databases are compared row by row above; their files change on checkpoints.
_DATABASE_FILES = (".db", ".db-wal", ".db-shm", ".db-journal")


def _rows(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_engine(db_url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {
                name: sorted(tuple(map(repr, row)) for row in conn.execute(select(table)))
                for name, table in meta.tables.items()
                if name not in CLOCK_DRIVEN
            }
    finally:
        engine.dispose()


def _files(home: Path) -> dict[str, str]:
    return {
        str(path.relative_to(home)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(home.rglob("*"))
        if path.is_file() and not path.name.endswith(_DATABASE_FILES)
    }


def capture(project: Project) -> dict[str, Any]:
    """Every table's rows (but the clock-driven ones) and every file under COPML_HOME."""
    return {"tables": _rows(project.db_url), "files": _files(project.home)}


def assert_unchanged(before: dict[str, Any], project: Project) -> None:
    """Fail naming the tables and files that differ from ``before``."""
    after = capture(project)
    tables = [
        t
        for t in before["tables"].keys() | after["tables"].keys()
        if before["tables"].get(t) != after["tables"].get(t)
    ]
    files = sorted(before["files"].items() ^ after["files"].items())
    assert not tables and not files, f"changed tables {sorted(tables)}, files {files}"
