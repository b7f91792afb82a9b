"""``copml serve`` as a real server process on loopback, with real keys and a real store."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
from sqlalchemy import func, select

from batches import month
from copml import events, keys, prediction_log
from copml.project import Project, load_project
from copml.store import batches, open_store, predictions
from store_state import assert_unchanged, capture


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    project: Project
    keys: dict[str, str]

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def kill(self) -> None:
        """SIGKILL to the server and every worker it started; no clean shutdown."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _free_port() -> int:
    """A free port from a range of this xdist worker's own, so that parallel tests never
    pick the same one between choosing it and their server binding it."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    start = 30000 + 2000 * worker + random.randrange(1000)
    for port in range(start, start + 1000):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                continue  # something listens there
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    """Poll /healthz until it answers (each try waits on the network, not on a timer)."""
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            with socket.socket() as probe:  # block until the port is at least bound
                probe.settimeout(0.1)
                probe.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    raise RuntimeError("server did not become healthy")


def _serve_command(project: Project, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "copml",
        "serve",
        "--project",
        str(project.root),
        "--port",
        str(port),
        *extra,
    ]


def start(
    project: Project, *extra: str, env: dict[str, str] | None = None, port: int | None = None
) -> Server:
    project.ensure_home()
    engine = open_store(project.db_url)
    issued = {role: keys.create(engine, role) for role in ("service", "auditor", "viewer")}
    port = port or _free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("COPML_", "MLFLOW_"))}
    process = subprocess.Popen(
        _serve_command(project, port, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**inherited, **(env or {})},
        start_new_session=True,  # its own process group: workers die with it
    )
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, process)
    return Server(url, process, project, issued)


def _copy(trained: Path, folder: Path, serving: str | None = None) -> Project:
    """A copy of the trained project, optionally with another ``serving`` section."""
    root = folder / "churn"
    shutil.copytree(trained, root)
    if serving:
        spec = root / "copml.yaml"
        text = spec.read_text().replace('serving: {mode: batch, schedule: "0 6 1 * *"}', serving)
        assert serving in text
        spec.write_text(text)
    return load_project(root)


REALTIME = "serving: {mode: realtime, availability: 0.999, review_band: [0.3, 0.7]}"


@pytest.fixture(scope="module")
def server(trained_churn: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that only talk to it."""
    srv = start(_copy(trained_churn, tmp_path_factory.mktemp("serve"), REALTIME))
    yield srv
    srv.kill()


@pytest.fixture
def own_server(churn: Project) -> Iterator[Server]:
    """A server of the test's own, for tests that kill it."""
    srv = start(churn)
    yield srv
    srv.kill()


def _instances(project: Project, n: int) -> list[dict[str, object]]:
    batch, _ = month(project.root / "in", size=max(n, 10))
    frame = pd.read_csv(batch, keep_default_na=False).head(n)
    frame["TotalCharges"] = pd.to_numeric(frame["TotalCharges"], errors="coerce")
    records = json.loads(frame.to_json(orient="records"))
    return records


def test_predict_is_stored_before_it_is_answered(server: Server) -> None:
    instances = _instances(server.project, 3)
    r = httpx.post(
        f"{server.url}/v1/predict", json={"instances": instances}, headers=server.headers("service")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "1" and len(body["predictions"]) == 3
    first = body["predictions"][0]
    assert first["label"] in ("Yes", "No") and 0 <= first["score"] <= 1
    engine = open_store(server.project.db_url)
    stored = prediction_log.record(engine, first["prediction_id"])
    assert stored is not None and stored["model_version"] == "1" and stored["origin"] == "api"
    assert stored["score"] == first["score"]
    assert stored["input"]["tenure"] == instances[0]["tenure"]
    assert stored["input"]["customerID"] != instances[0]["customerID"]  # keyed hash, not clear
    audit = httpx.get(
        f"{server.url}/v1/predictions/{first['prediction_id']}", headers=server.headers("auditor")
    )
    assert audit.status_code == 200 and audit.json()["input_hash"] == stored["input_hash"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda i: i.update(tenure="twelve"), "tenure"),
        (lambda i: i.pop("Contract"), "Contract"),
        (lambda i: i.update(colour="blue"), "colour"),
        (lambda i: i.update(Contract="Forever"), "Contract"),
        (lambda i: i.update(MonthlyCharges=-1.0), "MonthlyCharges"),
        (lambda i: i.update(MonthlyCharges=None), "MonthlyCharges"),
    ],
)
def test_bad_instances_get_422_naming_the_field(server: Server, change, field: str) -> None:
    instance = _instances(server.project, 1)[0]
    change(instance)
    r = httpx.post(
        f"{server.url}/v1/predict",
        json={"instances": [instance]},
        headers=server.headers("service"),
    )
    assert r.status_code == 422, r.text
    assert any(field in map(str, e["loc"]) for e in r.json()["detail"])


def test_nan_and_infinity_are_refused(server: Server) -> None:
    instance = _instances(server.project, 1)[0]
    for bad in ("NaN", "Infinity"):
        text = json.dumps({"instances": [instance]}).replace(
            f'"MonthlyCharges": {json.dumps(instance["MonthlyCharges"])}',
            f'"MonthlyCharges": {bad}',
        )
        r = httpx.post(
            f"{server.url}/v1/predict",
            content=text.encode(),
            headers={**server.headers("service"), "content-type": "application/json"},
        )
        assert r.status_code == 422, (bad, r.text)
        assert any("MonthlyCharges" in map(str, e["loc"]) for e in r.json()["detail"])


def test_oversized_and_malformed_bodies(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/predict",
        content=b"x" * (2 << 20),
        headers={**server.headers("service"), "content-type": "application/json"},
    )
    assert r.status_code == 413
    r = httpx.post(
        f"{server.url}/v1/predict",
        content=b"{not json",
        headers={**server.headers("service"), "content-type": "application/json"},
    )
    assert r.status_code == 422
    r = httpx.post(
        f"{server.url}/v1/predict", json={"instances": []}, headers=server.headers("service")
    )
    assert r.status_code == 422


def test_keys_and_roles(server: Server) -> None:
    body = {"instances": _instances(server.project, 1)}
    assert httpx.post(f"{server.url}/v1/predict", json=body).status_code == 401
    bad = {"Authorization": "Bearer cpml_00000000_nope"}
    assert httpx.post(f"{server.url}/v1/predict", json=body, headers=bad).status_code == 401
    r = httpx.post(f"{server.url}/v1/predict", json=body, headers=server.headers("viewer"))
    assert r.status_code == 403 and "viewer" in r.json()["detail"]
    pid = httpx.post(
        f"{server.url}/v1/predict", json=body, headers=server.headers("service")
    ).json()["predictions"][0]["prediction_id"]
    r = httpx.get(f"{server.url}/v1/predictions/{pid}", headers=server.headers("service"))
    assert r.status_code == 403
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # no key needed
    raw = (server.project.home / "copml.db").read_bytes() + (
        server.project.home / "copml.db-wal"
    ).read_bytes()
    for key in server.keys.values():
        assert key.split("_", 2)[2].encode() not in raw  # only scrypt hashes are stored


def test_insecure_is_refused_off_loopback(churn: Project) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "copml",
            "serve",
            "--project",
            str(churn.root),
            "--host",
            "0.0.0.0",
            "--insecure",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "only loopback" in done.stderr


async def _load_during(
    server: Server, n: int, concurrency: int, action: Callable[[], object], *, inline: bool = False
) -> tuple[list[tuple[str, str]], int]:
    """``n`` one-instance requests at ``concurrency``; ``action`` runs once half are answered:
    in a thread beside the load, or (``inline``) before another answer is read.

    Returns the acknowledged (prediction id, model version) pairs and how many requests got
    no HTTP answer at all (refused or cut connections: the server was gone).
    """
    instances = _instances(server.project, 50)
    acked: list[tuple[str, str]] = []
    failed: list[str] = []
    unanswered = 0
    half = asyncio.Event()
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers("service"), timeout=60
    ) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            nonlocal unanswered
            try:
                async with gate:
                    r = await client.post("/v1/predict", json={"instances": [instances[i % 50]]})
            except httpx.TransportError:
                unanswered += 1
                return
            if r.status_code != 200:
                failed.append(f"{r.status_code}: {r.text[:200]}")
                return
            body = r.json()
            acked.append((body["predictions"][0]["prediction_id"], body["model_version"]))
            if len(acked) == n // 2:
                if inline:
                    action()
                half.set()

        async def at_half() -> None:
            await half.wait()
            if not inline:
                await asyncio.to_thread(action)

        midway = asyncio.create_task(at_half())
        await asyncio.gather(*(one(i) for i in range(n)))
        half.set()  # a load that never got half its answers still ends
        await midway
    assert failed == [], failed[:5]
    return acked, unanswered


def _assert_stored(db_url: str, acked: list[tuple[str, str]]) -> None:
    """Every acknowledged prediction is stored with the version its answer named, and the
    store opens, checks and takes writes as usual."""
    if db_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    engine = open_store(db_url)  # runs the migrations check, as every command does
    seqs = prediction_log.resolve(engine, [pid for pid, _ in acked])
    assert seqs.notna().all()  # every acknowledged prediction survived the kill
    keys_of = {pid: pid[:-8] for pid, _ in acked}  # an id is its batch key + 8 hex digits
    with engine.connect() as conn:
        rows = conn.execute(
            select(func.count())
            .select_from(predictions)
            .where(predictions.c.seq.in_(seqs.tolist()))
        ).scalar_one()
        versions = dict(
            conn.execute(
                select(batches.c.key, batches.c.model_version).where(
                    batches.c.key.in_(set(keys_of.values()))
                )
            ).all()
        )
    assert rows == len(set(seqs.tolist()))
    assert [versions[keys_of[pid]] for pid, _ in acked] == [v for _, v in acked]
    assert keys.create(engine, "viewer").startswith("cpml_")  # the store takes writes again
    engine.dispose()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_during_load_loses_no_acknowledged_prediction(
    churn: Project,
    workers: int,
    store: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL to the server's whole process group as the 1,000th of 2,000 requests (16 in
    flight) is answered: whatever was acknowledged is stored, and the store is sound."""
    env: dict[str, str] = {}
    if store == "postgresql":
        from copml import snapshots

        url = request.getfixturevalue("pg_url")
        monkeypatch.setenv("COPML_DB_URL", url)
        snapshots.create(
            open_store(url), churn.spec.data, root=churn.root, directory=churn.snapshots_dir
        )
        env = {"COPML_DB_URL": url}
    server = start(churn, "--workers", str(workers), env=env)
    try:
        acked, unanswered = asyncio.run(_load_during(server, 2000, 16, server.kill, inline=True))
    finally:
        server.kill()
    assert len(acked) >= 1000 and unanswered > 0  # the kill came with requests in flight
    _assert_stored(churn.db_url, acked)


def _port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...); [] when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running; a zombie waiting for its reaper has ended."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def _workers(supervisor: int) -> set[int]:
    """The live server processes under ``supervisor`` (not multiprocessing's tracker)."""
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(proc.name))
        with contextlib.suppress(OSError):
            ours = fields[1:2] == [str(supervisor)] and fields[0] != "Z"
            if ours and b"spawn_main" in (proc / "cmdline").read_bytes():
                found.add(int(proc.name))
    return found


def _listens(pid: int, port: int) -> bool:
    """``pid`` holds a socket listening on ``port`` (from /proc/net/tcp, LISTEN is 0A)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1].endswith(f":{port:04X}") and cols[3] == "0A":
            inodes.add(f"socket:[{cols[9]}]")
    with contextlib.suppress(OSError):
        return any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


def _until(condition: Callable[[], bool], what: str, limit_s: float = 60) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` did not happen in time."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {limit_s} s: {what}"
        time.sleep(0.05)


def test_workers_end_with_their_supervisor(churn: Project) -> None:
    """SIGKILL to the supervising process alone: its workers stop serving and free the port."""
    server = start(churn, "--workers", "2")
    port = _port_of(server)
    again: Server | None = None
    try:
        workers = _workers(server.process.pid)
        assert len(workers) == 2
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        _until(lambda: not any(map(_alive, workers)), "the workers end with their supervisor")
        again = start(churn, "--workers", "2", port=port)  # the port is free again
        assert httpx.get(f"{again.url}/healthz").status_code == 200
    finally:
        server.kill()
        if again is not None:
            again.kill()


def test_a_worker_that_dies_is_restarted_and_logged(churn: Project) -> None:
    server = start(churn, "--workers", "2")
    port = _port_of(server)
    try:
        first = _workers(server.process.pid)
        assert len(first) == 2
        _until(lambda: all(_listens(pid, port) for pid in first), "both workers listen")
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        _until(
            lambda: len(_workers(server.process.pid) - first) == 1,
            "a new worker replaces the killed one",
        )
        (replacement,) = _workers(server.process.pid) - first
        _until(lambda: _listens(replacement, port), "the new worker listens on the port")
        body = {"instances": _instances(churn, 1)}
        for _ in range(20):
            r = httpx.post(f"{server.url}/v1/predict", json=body, headers=server.headers("service"))
            assert r.status_code == 200
    finally:
        server.kill()
    log = server.process.stderr.read().decode()  # type: ignore[union-attr]
    assert f"worker 0 (pid {victim}) ended (killed by SIGKILL); restarting it" in log or (
        f"worker 1 (pid {victim}) ended (killed by SIGKILL); restarting it" in log
    ), log[-2000:]


def test_a_second_server_on_a_served_port_refuses_to_start(churn: Project) -> None:
    """SO_REUSEPORT would let it bind beside the first: it must refuse, change nothing."""
    server = start(churn, "--workers", "2")
    port = _port_of(server)
    try:
        before = capture(churn)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("COPML_", "MLFLOW_"))}
        second = subprocess.Popen(
            _serve_command(churn, port, "--workers", "2"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=inherited,
            start_new_session=True,
        )
        try:
            _, err = second.communicate(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(second.pid, signal.SIGKILL)
        assert second.returncode == 1, err[-2000:]
        assert f"port {port} is already served by another copml serve" in err
        assert "Traceback" not in err
        assert_unchanged(before, churn)
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # the first still serves
    finally:
        server.kill()


def test_promotion_during_load_switches_once_without_failures(own_server: Server) -> None:
    from copml import registry
    from copml.train import train

    server = own_server
    candidate = train(server.project)  # version 2, registered beside champion 1
    engine = open_store(server.project.db_url)

    def promote_and_reload() -> None:
        registry.promote(
            server.project, engine, candidate.version, actor="user:test", reason="a better model"
        )
        r = httpx.post(
            f"{server.url}/v1/admin/reload",
            headers={"Authorization": f"Bearer {keys.create(engine, 'operator')}"},
            timeout=60,
        )
        # swapped now, or already by the server's own poll of the registry
        assert r.status_code == 200 and r.json()["model_version"] == "2"

    acked, unanswered = asyncio.run(_load_during(server, 2000, 16, promote_and_reload))
    assert len(acked) == 2000 and unanswered == 0
    seqs = prediction_log.resolve(engine, [pid for pid, _ in acked]).tolist()
    in_commit_order = [v for _, v in sorted(zip(seqs, (v for _, v in acked), strict=True))]
    switches = sum(a != b for a, b in itertools.pairwise(in_commit_order))
    assert in_commit_order[0] == "1" and in_commit_order[-1] == "2" and switches == 1
    # the stored version of every prediction is the one its response named
    for pid, version in acked[::50]:
        assert prediction_log.record(engine, pid)["model_version"] == version  # type: ignore[index]
    assert events.latest(engine, "serve.deployed", "model:telco-churn/2") is not None


def test_reload_refuses_a_tampered_version(own_server: Server) -> None:
    from copml import registry
    from copml.train import train

    server = own_server
    candidate = train(server.project)
    engine = open_store(server.project.db_url)
    mv = registry.get(server.project, candidate.version)
    pkl = registry.local_copy(server.project, mv) / "model.pkl"
    pkl.write_bytes(pkl.read_bytes() + b"tampered")
    registry.promote(server.project, engine, candidate.version, actor="user:test", reason="t")
    operator = {"Authorization": f"Bearer {keys.create(engine, 'operator')}"}
    r = httpx.post(f"{server.url}/v1/admin/reload", headers=operator, timeout=60)
    assert r.status_code == 200
    assert r.json()["swapped"] is False and "does not match" in r.json()["refused"]
    body = {"instances": _instances(server.project, 1)}
    answer = httpx.post(f"{server.url}/v1/predict", json=body, headers=server.headers("service"))
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"  # old one serves


def test_review_queue_and_resolution_as_feedback(server: Server) -> None:
    instances = _instances(server.project, 40)
    r = httpx.post(
        f"{server.url}/v1/predict", json={"instances": instances}, headers=server.headers("service")
    )
    answers = r.json()["predictions"]
    flagged = [a for a in answers if a["review"]]
    assert flagged and all(0.3 <= a["score"] < 0.7 for a in flagged)
    assert all(not (0.3 <= a["score"] < 0.7) for a in answers if not a["review"])
    operator = {
        "Authorization": f"Bearer {keys.create(open_store(server.project.db_url), 'operator')}"
    }
    queue = httpx.get(f"{server.url}/v1/reviews", params={"limit": 1000}, headers=operator).json()
    queued = {item["prediction_id"] for item in queue["reviews"]}
    assert {a["prediction_id"] for a in flagged} <= queued
    assert (
        httpx.get(f"{server.url}/v1/reviews", headers=server.headers("service")).status_code == 403
    )
    target = flagged[0]["prediction_id"]
    done = httpx.post(f"{server.url}/v1/reviews/{target}", json={"label": "Yes"}, headers=operator)
    assert done.status_code == 200
    assert prediction_log.record(open_store(server.project.db_url), target)["actual"] == 1  # type: ignore[index]
    again = httpx.post(f"{server.url}/v1/reviews/{target}", json={"label": "Yes"}, headers=operator)
    assert again.status_code == 404  # resolved once
    bad = httpx.post(
        f"{server.url}/v1/reviews/{flagged[-1]['prediction_id']}",
        json={"label": "maybe"},
        headers=operator,
    )
    assert bad.status_code == 422 and "label" in str(bad.json()["detail"])


def test_feedback_api_by_prediction_and_by_entity(server: Server) -> None:
    instances = _instances(server.project, 2)
    answers = httpx.post(
        f"{server.url}/v1/predict", json={"instances": instances}, headers=server.headers("service")
    ).json()["predictions"]
    engine = open_store(server.project.db_url)
    r = httpx.post(
        f"{server.url}/v1/feedback",
        headers=server.headers("service"),
        json={"prediction_id": answers[0]["prediction_id"], "actual": "No"},
    )
    assert r.status_code == 200 and r.json()["status"] == "loaded"
    r = httpx.post(
        f"{server.url}/v1/feedback",
        headers=server.headers("service"),
        json={"prediction_id": answers[0]["prediction_id"], "actual": "No"},
    )
    assert r.json()["status"] == "unchanged"
    r = httpx.post(
        f"{server.url}/v1/feedback",
        headers=server.headers("service"),
        json={"id": instances[1]["customerID"], "actual": "Yes"},
    )
    assert r.status_code == 200
    assert prediction_log.record(engine, answers[1]["prediction_id"])["actual"] == 1  # type: ignore[index]
    r = httpx.post(
        f"{server.url}/v1/feedback",
        headers=server.headers("service"),
        json={"id": "9999-NOONE", "actual": "Yes"},
    )
    assert r.status_code == 404
    r = httpx.post(
        f"{server.url}/v1/feedback",
        headers=server.headers("service"),
        json={"prediction_id": answers[0]["prediction_id"], "actual": "perhaps"},
    )
    assert r.status_code == 422 and "actual" in str(r.json()["detail"])


def test_metrics_are_exported(server: Server) -> None:
    httpx.post(
        f"{server.url}/v1/predict",
        json={"instances": _instances(server.project, 1)},
        headers=server.headers("service"),
    )
    text = httpx.get(f"{server.url}/metrics").text
    assert 'copml_requests_total{route="/v1/predict",status="200"}' in text
    assert 'copml_predictions_total{label="0",model_version="1"}' in text or (
        'copml_predictions_total{label="1",model_version="1"}' in text
    )
    assert "copml_request_latency_seconds_bucket" in text and "copml_reviews_total" in text
    assert 'copml_model_loads_total{result="loaded"} 1.0' in text


def test_rate_limit_and_score_precision(trained_churn: Path, tmp_path: Path) -> None:
    project = _copy(
        trained_churn,
        tmp_path,
        "serving: {mode: realtime, score_precision: 2, rate_limit: {per_second: 0.5, burst: 3}}",
    )
    srv = start(project)
    try:
        body = {"instances": _instances(project, 1)}
        codes = [
            httpx.post(f"{srv.url}/v1/predict", json=body, headers=srv.headers("service"))
            for _ in range(5)
        ]
        assert [c.status_code for c in codes] == [200, 200, 200, 429, 429]
        assert int(codes[3].headers["Retry-After"]) >= 1
        score = codes[0].json()["predictions"][0]["score"]
        assert score == round(score, 2)
        stored = prediction_log.record(
            open_store(project.db_url), codes[0].json()["predictions"][0]["prediction_id"]
        )
        assert stored is not None and round(stored["score"], 2) == score  # exact in the log
    finally:
        srv.kill()


def test_availability_and_latency_reach_monitoring(trained_churn: Path, tmp_path: Path) -> None:
    from copml.monitor.probes import probe
    from copml.monitor.status import requirements
    from copml.monitor.window import monitor

    project = _copy(trained_churn, tmp_path, REALTIME)
    srv = start(project)
    httpx.post(
        f"{srv.url}/v1/predict",
        json={"instances": _instances(project, 20)},
        headers=srv.headers("service"),
    )
    assert probe(project, srv.url).ok and probe(project, srv.url).ok
    srv.kill()
    down = probe(project, srv.url, timeout=2)
    assert not down.ok and "unreachable" in down.detail
    window = monitor(project)
    assert window.metrics["availability"] == pytest.approx(2 / 3)
    assert window.metrics["latency_p99_ms"] > 0 and window.n_predictions == 20
    assert set(window.drift) == set(project.spec.data.features)  # API inputs feed drift too
    state = {r.name: r.state for r in requirements(project.spec, window)}
    assert state["availability"] == "not met"


@pytest.mark.parametrize(
    ("role", "paths"),
    [
        ("service", "^/v1/(predict|feedback)$"),
        ("operator", "^/v1/(reviews|admin)"),
        ("auditor", "^/v1/predictions/"),
        ("viewer", "^/(healthz|readyz|metrics)$"),
    ],
)
def test_fuzzing_the_openapi_schema_finds_no_server_error(
    server: Server, role: str, paths: str, tmp_path: Path
) -> None:
    """schemathesis (from PyPI) generates requests from /openapi.json: no answer is a 5xx."""
    engine = open_store(server.project.db_url)
    key = server.keys.get(role) or keys.create(engine, role)
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--include-path-regex",
            paths,
            "--header",
            f"Authorization: Bearer {key}",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "passed" in done.stdout and "Server error" not in done.stdout
