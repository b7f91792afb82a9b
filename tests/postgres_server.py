"""A PostgreSQL server of a test's own, to stop and restart under load without touching the
server the other tests share (CI's, on port 5432)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _bin() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    bin: Path
    data: Path
    port: int
    as_owner: list[str]  # runs a command as the data folder's owner (postgres when root)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.data / "server.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def restart(self) -> None:
        """What ``pg_ctlcluster … restart`` does: a fast stop (every session is ended),
        then a start with the same options."""
        self._ctl("-m", "fast", "restart")


@contextlib.contextmanager
def postgres_server(port: int) -> Iterator[PostgresServer]:
    """A fresh cluster (trust authentication, loopback only) on ``port``; removed after."""
    found = _bin()
    if found is None:
        if os.environ.get("COPML_REQUIRE_PG"):
            pytest.fail("COPML_REQUIRE_PG is set but no PostgreSQL server binaries are installed")
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs them)")
    root = Path(tempfile.mkdtemp(prefix="copml-pg-"))  # under /tmp: reachable by postgres
    as_owner: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to postgres
        shutil.chown(root, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    subprocess.run(
        [*as_owner, str(found / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = PostgresServer(found, data, port, as_owner)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(
                [*as_owner, str(found / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)
