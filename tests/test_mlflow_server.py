"""The churn lifecycle against a real ``mlflow server`` process (issue 14 item 2).

The server keeps its runs and registry in PostgreSQL (a schema of its own) and serves the
artifacts from a folder only it knows (``--serve-artifacts``); copml's store is another
schema of the same PostgreSQL. Everything copml does with a model (train, gate and promote,
serve, audit replay, reproduce) goes through the server's HTTP API: copml's project folder
never holds, and copml never opens, the server's artifact folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from conftest import _pg_schema
from copml import audit, registry
from copml.project import Project
from copml.reproduce import reproduce
from projects import freeze
from store_state import assert_unchanged, capture
from test_serve import _free_port, start


@dataclass(frozen=True)
class MlflowServer:
    url: str
    artifacts: Path  # the server's own folder: copml must never touch it


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll the server's /health until it answers or the process exits, up to a deadline
    (its first start runs MLflow's migrations on the empty schema)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        try:
            process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
        raise RuntimeError(f"mlflow server exited: {log.read_text(errors='replace')[-3000:]}")
    raise RuntimeError(f"mlflow server not healthy: {log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` on loopback: PostgreSQL backend store (a fresh schema),
    artifacts served from a folder outside every project; stopped with its whole group."""
    backend = next(schemas := _pg_schema())  # skips when no PostgreSQL is configured
    folder = tmp_path / "mlflow-server"
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True)
    port = _free_port()
    log = folder / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COPML_", "MLFLOW_"))}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runners: copml starts none
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--backend-store-uri", backend),
        *("--serve-artifacts", "--artifacts-destination", str(artifacts)),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=folder,  # whatever MLflow writes beside itself stays in its folder
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: its workers die with it
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process, log)
        yield MlflowServer(url, artifacts)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        with contextlib.suppress(StopIteration):
            next(schemas)  # drops the schema


_WATCHED: list[Path] = []
_SEEN: list[str] = []
_FILE_EVENTS = ("open", "os.listdir", "os.scandir", "shutil.copytree", "shutil.copyfile")


def _watch(event: str, args: tuple[Any, ...]) -> None:
    """A Python audit hook: notes every file this process opens or lists under a watched
    folder (installed once per process; idle while nothing is watched)."""
    if not _WATCHED or event not in _FILE_EVENTS or not args:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, (str, os.PathLike)):
        full = Path(os.path.abspath(path))
        if any(full == w or w in full.parents for w in _WATCHED):
            _SEEN.append(f"{event} {full}")


@contextlib.contextmanager
def _never_touched(folder: Path) -> Iterator[list[str]]:
    """Within the block, every file access of this process under ``folder`` is noted."""
    if not getattr(sys, "_copml_watch_hook", False):
        sys.addaudithook(_watch)
        sys._copml_watch_hook = True  # type: ignore[attr-defined]
    _WATCHED.append(folder.resolve())
    _SEEN.clear()
    try:
        yield _SEEN
    finally:
        _WATCHED.clear()


def test_the_file_watch_sees_an_access(tmp_path: Path) -> None:
    """The watch the lifecycle test relies on does note a file opened or listed."""
    with _never_touched(tmp_path) as touched:
        (tmp_path / "seen").write_text("x")
        list(tmp_path.iterdir())
        (tmp_path.parent / "beside").write_text("x")  # outside: not noted
    assert len(touched) == 2 and touched[0].startswith("open ")


def _copml(project: Project, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "copml", *args, "--project", str(project.root)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )


@pytest.mark.cluster
def test_churn_lifecycle_against_an_mlflow_server(
    mlflow_server: MlflowServer,
    pg_url: str,
    fresh_churn: Project,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = fresh_churn
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "COPML_DB_URL": pg_url}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert project.root not in mlflow_server.artifacts.parents
    assert mlflow_server.artifacts not in project.root.parents

    with _never_touched(mlflow_server.artifacts) as touched:
        freeze(project)
        # Train, gate and promote in a real `copml train`: stdout is its JSON and nothing
        # else (MLflow's "View run … at: URL" lines for a tracking server stay out of it).
        trained = _copml(project, env, "train", "--json")
        assert trained.returncode == 0, trained.stderr
        result = json.loads(trained.stdout)
        assert result["meets_minimums"] and result["champion"], result
        mv = registry.champion(project)
        assert mv is not None and mv.version == result["version"] == "1"
        # The model lives on the server, reached through its artifact proxy, not a path.
        assert mv.source.startswith("mlflow-artifacts:/"), mv.source

        # A real `copml serve`: it downloads the champion through the server, verifies its
        # sha256 and answers; every answer is in copml's store on PostgreSQL. While it
        # starts, this process reproduces v1 (it fetches the same version meanwhile).
        with ThreadPoolExecutor(1) as pool:
            starting = pool.submit(start, project, env=env)
            reproduced = reproduce(project, "1")
            server = starting.result()
        assert reproduced.reproduced, reproduced
        assert reproduced.max_prediction_difference <= 1e-9
        try:
            customers = pd.read_csv(project.root / "data" / "customers.csv", nrows=3)
            customers["TotalCharges"] = pd.to_numeric(customers["TotalCharges"], errors="coerce")
            instances = json.loads(customers.drop(columns="Churn").to_json(orient="records"))
            answer = httpx.post(
                f"{server.url}/v1/predict",
                json={"instances": instances},
                headers=server.headers("service"),
                timeout=60,
            )
            assert answer.status_code == 200, f"{answer.text}\n{server.log()[-3000:]}"
        finally:
            server.kill()
        body = answer.json()
        assert body["model_version"] == "1" and len(body["predictions"]) == 3
        assert registry.directory_sha256(project.models_dir / "1") == mv.artifact_sha256

        # Audit replay in a process with no local copy: downloaded again, through the server.
        shutil.rmtree(project.models_dir)
        for prediction in body["predictions"]:
            replayed = audit.replay(project, prediction["prediction_id"])
            assert replayed.identical, replayed
            assert replayed.replayed_score == prediction["score"]

    assert touched == [], touched[:5]
    # The server did keep the model (the test may look; copml did not).
    assert len(list(mlflow_server.artifacts.rglob("MLmodel"))) >= 1
    assert not any(p.is_symlink() for p in project.root.rglob("*"))


@pytest.fixture
def hangs_up() -> Iterator[tuple[str, list[int]]]:
    """A loopback port that accepts every connection and closes it at once (a server that
    is down behind a live address); the list counts the connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)  # closing a socket does not wake a blocked accept()
    accepted: list[int] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        done.set()
        thread.join()
        listener.close()


def test_an_unanswering_tracking_server_is_one_clear_error_at_once(
    churn: Project, hangs_up: tuple[str, list[int]]
) -> None:
    """MLflow's client retries a failed connection with backoff for minutes; copml asks the
    server once and exits 1 naming it, having changed nothing."""
    url, accepted = hangs_up
    before = capture(churn)
    failed = _copml(churn, {"MLFLOW_TRACKING_URI": url}, "train")
    assert failed.returncode == 1, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and f"MLflow tracking server {url} cannot be reached" in lines[0]
    assert "MLFLOW_TRACKING_URI" in lines[0]
    assert len(accepted) == 1  # asked once: no retries with backoff
    assert_unchanged(before, churn)


def test_a_tls_server_with_its_own_certificate_is_left_to_mlflows_settings(
    tmp_path: Path,
) -> None:
    """A tracking server whose certificate only MLflow's settings trust (a private CA) is
    reachable: the probe does not refuse it, MLflow's client decides."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    handshakes: list[int] = []

    def serve() -> None:
        conn, _ = listener.accept()
        refused = contextlib.suppress(ssl.SSLError, OSError)  # the client does not trust it
        with conn, refused, context.wrap_socket(conn, server_side=True):
            pass
        handshakes.append(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        registry._answering(f"https://127.0.0.1:{listener.getsockname()[1]}")  # no error
    finally:
        thread.join(timeout=30)
        listener.close()
    assert handshakes == [1]
