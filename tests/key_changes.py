"""A key revoked as a person revokes it (the CLI), and one whose expiry has passed."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from copml.store import api_keys


def prefix(key: str) -> str:
    return key.split("_", 2)[1]


def revoke(root: Path, key: str) -> None:
    """``copml keys revoke`` in its own process, as a person would run it."""
    command = ["keys", "revoke", prefix(key), "--reason", "x", "-p", str(root)]
    done = subprocess.run(
        [sys.executable, "-m", "copml", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def expire(engine: Engine, key: str) -> None:
    """An hour passes for this key: its expiry is now in the past."""
    with engine.begin() as conn:
        conn.execute(
            api_keys.update()
            .where(api_keys.c.prefix == prefix(key))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
