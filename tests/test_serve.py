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
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest

from batches import month
from copml import events, keys, prediction_log
from copml.project import Project, load_project
from copml.store import api_keys, open_store
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


def start(project: Project, *extra: str, env: dict[str, str] | None = None) -> Server:
    project.ensure_home()
    engine = open_store(project.db_url)
    issued = {role: keys.create(engine, role) for role in ("service", "auditor", "viewer")}
    port = _free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("COPML_", "MLFLOW_"))}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "copml",
            "serve",
            "--project",
            str(project.root),
            "--port",
            str(port),
            *extra,
        ],
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


def _until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll ``condition`` (each try waits on the server) until true; fail at the deadline."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {seconds:.0f} s")
        time.sleep(0.1)


def test_wrong_keys_get_429_after_ten_failures_and_leave_nothing(own_server: Server) -> None:
    """Failed attempts are limited per client address and per key prefix (no scrypt once
    refused); a key already verified keeps working from that same address."""
    srv = own_server
    url, body = f"{srv.url}/v1/predict", {"instances": _instances(srv.project, 1)}
    assert httpx.post(url, json=body, headers=srv.headers("service")).status_code == 200
    viewer = srv.keys["viewer"].split("_", 2)[1]
    before = capture(srv.project)
    guesses = [{"Authorization": f"Bearer cpml_{viewer}_guess{n}"} for n in range(10)]
    assert [httpx.post(url, json=body, headers=h).status_code for h in guesses] == [401] * 10
    for refused in (
        httpx.post(url, json=body, headers={"Authorization": "Bearer cpml_0badc0de_guess"}),
        httpx.get(f"{srv.url}/v1/reviews", headers=srv.headers("viewer")),  # the prefix too
    ):
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "too many failed API key attempts" in refused.json()["detail"]
    assert_unchanged(before, srv.project)
    assert httpx.post(url, json=body, headers=srv.headers("service")).status_code == 200


def test_key_checks_never_block_the_event_loop(
    churn: Project, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key check that waits (here on a locked ``api_keys`` table; in the wild on scrypt)
    leaves the server answering everyone else."""
    from sqlalchemy import create_engine, text

    from copml import snapshots

    monkeypatch.setenv("COPML_DB_URL", pg_url)
    snapshots.create(
        open_store(pg_url), churn.spec.data, root=churn.root, directory=churn.snapshots_dir
    )
    srv = start(churn, env={"COPML_DB_URL": pg_url})
    locker = create_engine(pg_url)
    try:
        with locker.connect() as conn, ThreadPoolExecutor(1) as pool:
            conn.execute(text("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"))
            waiting = pool.submit(
                httpx.post,
                f"{srv.url}/v1/predict",
                json={"instances": _instances(churn, 1)},
                headers={"Authorization": "Bearer cpml_0badc0de_guess"},
                timeout=120,
            )
            blocked = text(
                "SELECT count(*) FROM pg_locks WHERE relation = 'api_keys'::regclass "
                "AND NOT granted"
            )
            _until(lambda: conn.execute(blocked).scalar() > 0)  # the check waits on the lock
            assert httpx.get(f"{srv.url}/healthz", timeout=30).status_code == 200
            assert httpx.get(f"{srv.url}/readyz", timeout=30).status_code == 200
            conn.rollback()  # releases the lock
            assert waiting.result().status_code == 401
    finally:
        srv.kill()
        locker.dispose()


def test_revoked_and_expired_keys_are_refused_by_a_running_server(own_server: Server) -> None:
    srv = own_server
    url, body = f"{srv.url}/v1/predict", {"instances": _instances(srv.project, 1)}
    engine = open_store(srv.project.db_url)
    soon = datetime.now(UTC) + timedelta(hours=1)
    expiring = {"Authorization": f"Bearer {keys.create(engine, 'service', expires_at=soon)}"}
    revoked = srv.headers("service")
    assert httpx.post(url, json=body, headers=revoked).status_code == 200
    assert httpx.post(url, json=body, headers=expiring).status_code == 200
    prefix = srv.keys["service"].split("_", 2)[1]
    root = str(srv.project.root)
    done = subprocess.run(
        [sys.executable, "-m", "copml", "keys", "revoke", prefix, "--reason", "x", "-p", root],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with engine.begin() as conn:  # an hour passes for this key
        past = datetime.now(UTC) - timedelta(seconds=1)
        conn.execute(
            api_keys.update()
            .where(api_keys.c.prefix == expiring["Authorization"].split("_", 2)[1])
            .values(expires_at=past)
        )
    _until(lambda: httpx.post(url, json=body, headers=revoked).status_code == 401)
    _until(lambda: httpx.post(url, json=body, headers=expiring).status_code == 401)


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


async def _load(server: Server, n: int, concurrency: int) -> list[tuple[str, str]]:
    instances = _instances(server.project, 50)
    acked: list[tuple[str, str]] = []
    refused: list[str] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers("service"), limits=limits, timeout=30
    ) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                r = await client.post("/v1/predict", json={"instances": [instances[i % 50]]})
                if r.status_code == 200:
                    body = r.json()
                    acked.append((body["predictions"][0]["prediction_id"], body["model_version"]))
                else:
                    refused.append(f"{r.status_code}: {r.text[:200]}")

        await asyncio.gather(*(one(i) for i in range(n)))
    assert not refused, refused[:5]
    return acked


def _killed_after_load(server: Server) -> None:
    """2,000 requests at concurrency 16, ``kill -9``, then every acknowledged id is stored."""
    try:
        acked = asyncio.run(_load(server, 2000, 16))
    finally:
        server.kill()
    assert len(acked) == 2000
    engine = open_store(server.project.db_url)
    seqs = prediction_log.resolve(engine, [pid for pid, _ in acked])
    assert seqs.notna().all()  # every acknowledged prediction survived the kill
    for pid, version in acked[::97]:
        assert prediction_log.record(engine, pid)["model_version"] == version  # type: ignore[index]


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_after_load_loses_no_acknowledged_prediction(churn: Project, workers: int) -> None:
    _killed_after_load(start(churn, "--workers", str(workers)))


def test_kill_9_with_two_workers_on_postgresql(
    churn: Project, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on a real PostgreSQL store shared by two workers (group commit by COPY)."""
    from copml import snapshots

    monkeypatch.setenv("COPML_DB_URL", pg_url)
    spec = churn.spec
    snapshots.create(open_store(pg_url), spec.data, root=churn.root, directory=churn.snapshots_dir)
    _killed_after_load(start(churn, "--workers", "2", env={"COPML_DB_URL": pg_url}))


async def _load_during(server: Server, n: int, concurrency: int, action) -> list[tuple[str, str]]:
    """``n`` requests at ``concurrency``; ``action`` runs (in a thread) once half are done."""
    instances = _instances(server.project, 50)
    acked: list[tuple[str, str]] = []
    failed: list[int] = []
    half = asyncio.Event()
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers("service"), timeout=60
    ) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                r = await client.post("/v1/predict", json={"instances": [instances[i % 50]]})
            if r.status_code != 200:
                failed.append(r.status_code)
                return
            body = r.json()
            acked.append((body["predictions"][0]["prediction_id"], body["model_version"]))
            if len(acked) == n // 2:
                half.set()

        async def promote_midway() -> None:
            await half.wait()
            await asyncio.to_thread(action)

        await asyncio.gather(promote_midway(), *(one(i) for i in range(n)))
    assert failed == []
    return acked


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

    acked = asyncio.run(_load_during(server, 2000, 16, promote_and_reload))
    assert len(acked) == 2000
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
