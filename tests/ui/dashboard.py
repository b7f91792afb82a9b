"""What the dashboard tests share besides fixtures: the browser path, the site record and
a real `copml ui` process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


@dataclass(frozen=True)
class Site:
    """The demo project behind the running dashboard, and a key per role."""

    root: Path
    base: str
    slug: str
    keys: dict[str, str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(server: subprocess.Popen[bytes], url: str, log: Path, seconds: float) -> None:
    """Poll the health endpoint until it answers; fail early if the server died."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"copml ui exited with {server.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"copml ui did not answer {url} within {seconds:.0f} s")


@contextlib.contextmanager
def running_ui(root: Path, log: Path, *extra: str) -> Iterator[str]:
    """``copml ui --project ROOT EXTRA…`` on a free loopback port; yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("COPML_HOME", "COPML_DB_URL")}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "copml", "ui", "--project", str(root), "--port", str(port)]
    with log.open("wb") as errors:
        server = subprocess.Popen(
            [*command, *extra], env=env, stdout=subprocess.DEVNULL, stderr=errors
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, f"{base}/healthz", log, 60)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
