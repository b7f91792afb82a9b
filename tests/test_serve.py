"""``copml serve`` as a real server process on loopback, with real keys and a real store."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import random
import select as io_select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from sqlalchemy import func, select

import key_changes
from batches import month
from copml import events, keys, prediction_log
from copml.project import Project, load_project
from copml.store import batches, idempotency_keys, open_store, predictions
from copml.store import events as event_log
from projects import freeze
from store_state import assert_unchanged, capture


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    project: Project
    keys: dict[str, str]
    stderr: Path

    def log(self) -> str:
        """What the server wrote to stderr so far (a file: a pipe nobody reads could fill
        and block the server)."""
        return self.stderr.read_text(errors="replace")

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
    start = 30000 + 2000 * worker + random.SystemRandom().randrange(1000)  # not the seeded one
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


def _wait_ready(url: str, process: subprocess.Popen[bytes], limit_s: float = 300.0) -> None:
    """Poll /healthz until it answers, up to a deadline: a refused connection answers at
    once, so a count of tries (as before) ran out in seconds when a loaded machine took
    long to start the server. Between tries the wait is on the process (its exit ends it)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        try:
            process.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        raise RuntimeError(f"server exited with {process.returncode}; see its stderr")
    raise RuntimeError(f"server did not become healthy in {limit_s:.0f} s")


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
    stderr = project.root / f"serve-{port}.stderr"
    with stderr.open("wb") as log:
        process = subprocess.Popen(
            _serve_command(project, port, *extra),
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**inherited, **(env or {})},
            start_new_session=True,  # its own process group: workers die with it
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: {stderr.read_text(errors='replace')[-3000:]}") from None
    return Server(url, process, project, issued, stderr)


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
    """One server for the tests that only talk to it (at most 3 requests may wait for the
    rest of their bodies, for as long as a test needs)."""
    srv = start(
        _copy(trained_churn, tmp_path_factory.mktemp("serve"), REALTIME),
        *("--max-pending-bodies", "3", "--body-timeout", "600"),
    )
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


def _predict_one(server: Server, instance: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/predict",
        json={"instances": [instance]},
        headers=server.headers("service"),
    )


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
    before = capture(server.project)
    r = _predict_one(server, instance)
    assert r.status_code == 422, r.text
    assert any(field in map(str, e["loc"]) for e in r.json()["detail"])
    assert_unchanged(before, server.project)


def test_nan_and_infinity_are_refused(server: Server) -> None:
    instance = _instances(server.project, 1)[0]
    before = capture(server.project)
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
    assert_unchanged(before, server.project)


def test_oversized_and_malformed_bodies(server: Server) -> None:
    before = capture(server.project)
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
    assert_unchanged(before, server.project)


def _predict(server: Server, instances: list[dict[str, object]]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/predict", json={"instances": instances}, headers=server.headers("service")
    )


def _partial_body(server: Server, path: str = "/v1/predict") -> socket.socket:
    """A connection that announces a 1,000-byte body, sends 10 bytes of it and goes idle."""
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {server.keys['service']}\r\nContent-Length: 1000\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"instanc')
    return sock


def _answer(sock: socket.socket, deadline_s: float = 60.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(deadline_s)
    got = b""
    with contextlib.suppress(ConnectionResetError):  # a reset after the answer, unread rest
        while data := sock.recv(65536):
            got += data
    return got


def test_chunked_body_over_the_limit_is_refused_at_once(server: Server) -> None:
    """Issue 12.19: 50 MB chunked without Content-Length got 400 once all of it was sent."""
    before = capture(server.project)
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {server.keys['service']}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
    whole, sent, pending = 50 << 20, 0, b""
    sock.setblocking(False)
    while sent < whole:  # send until the server answers (or has all 50 MB)
        readable, _, _ = io_select.select([sock], [sock], [], 60)
        if readable:
            break
        pending = pending or chunk
        try:
            n = sock.send(pending)
        except (BrokenPipeError, ConnectionResetError):
            break  # closed by the server: its answer is waiting to be read
        sent, pending = sent + n, pending[n:]
    sock.setblocking(True)
    answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower() and b"over the limit" in answer
    assert sent < whole // 2  # answered while the body was still coming, not after it
    assert_unchanged(before, server.project)


def test_idle_partial_bodies_get_408_and_are_closed(churn: Project) -> None:
    """Issue 12.19: idle partial bodies were held for ever; now a body-read timeout."""
    srv = start(churn, "--body-timeout", "0.5")
    try:
        before = capture(srv.project)
        idle = [_partial_body(srv) for _ in range(5)]
        for sock in idle:
            answer = _answer(sock)  # ends: the server closes the connection
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b"connection: close" in answer.lower()
            sock.close()
        assert_unchanged(before, srv.project)
        body = {"instances": _instances(srv.project, 1)}
        ok = httpx.post(f"{srv.url}/v1/predict", json=body, headers=srv.headers("service"))
        assert ok.status_code == 200, ok.text
    finally:
        srv.kill()


def test_requests_waiting_for_their_bodies_are_capped(server: Server) -> None:
    """Issue 12.19: over ``--max-pending-bodies`` (3 here) a request waiting for its body
    gets 503 at once; the others keep waiting (their timeout is long)."""
    before = capture(server.project)
    idle = [_partial_body(server) for _ in range(4)]
    try:
        readable, _, _ = io_select.select(idle, [], [], 60)
        assert len(readable) == 1, "exactly one of four waiting requests is refused"
        answer = _answer(readable[0])
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"waiting for their bodies" in answer
        assert_unchanged(before, server.project)
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [("SeniorCitizen", True), ("SeniorCitizen", False), ("tenure", True), ("MonthlyCharges", True)],
)
def test_booleans_are_not_numbers(server: Server, field: str, value: bool) -> None:
    """Issue 12.19/22: JSON Schema's integer and number exclude true and false."""
    instance = _instances(server.project, 1)[0]
    instance[field] = value
    before = capture(server.project)
    r = _predict_one(server, instance)
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "instances", 0, field]]
    assert_unchanged(before, server.project)


def test_a_whole_float_is_an_integer(server: Server) -> None:
    """Issue 12.22: ``78.0`` is a JSON Schema integer, so the API accepts it as 78."""
    instance = _instances(server.project, 1)[0]
    instance["tenure"], instance["SeniorCitizen"] = 78.0, 1.0
    r = httpx.post(
        f"{server.url}/v1/predict",
        json={"instances": [instance]},
        headers=server.headers("service"),
    )
    assert r.status_code == 200, r.text
    stored = prediction_log.record(
        open_store(server.project.db_url), r.json()["predictions"][0]["prediction_id"]
    )
    assert stored is not None and stored["input"]["tenure"] == 78
    assert stored["input"]["SeniorCitizen"] == 1
    refused = {**instance, "tenure": 78.5}
    r = _predict(server, [refused])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "tenure"


def test_a_key_given_twice_is_refused(server: Server) -> None:
    """Issue 12.19: duplicate keys were silently last-wins; now a 422 naming the key."""
    instance = json.dumps(_instances(server.project, 1)[0])
    twice = instance.replace('"tenure":', '"tenure": 5, "tenure":', 1)
    cases = {
        "/v1/predict": (f'{{"instances": [{instance}, {twice}]}}', ["instances", 1, "tenure"]),
        "/v1/feedback": (
            '{"prediction_id": "0123456789abcdef01234567", "actual": "Yes", "actual": "No"}',
            ["actual"],
        ),
    }
    before = capture(server.project)
    for path, (text, where) in cases.items():
        r = httpx.post(
            f"{server.url}{path}",
            content=text.encode(),
            headers={**server.headers("service"), "content-type": "application/json"},
        )
        assert r.status_code == 422, (path, r.text)
        (issue,) = r.json()["detail"]
        assert issue["loc"] == ["body", *where] and "more than once" in issue["msg"]
    assert_unchanged(before, server.project)


def test_feedback_takes_exactly_one_id_as_its_schema_says(server: Server) -> None:
    """Issue 12.22: the rule is in the schema (``oneOf``) and the labels are an enum."""
    schema = httpx.get(f"{server.url}/openapi.json").json()["components"]["schemas"]
    assert schema["FeedbackRequest"]["oneOf"] == [
        {"required": ["prediction_id"]},
        {"required": ["id"]},
    ]
    assert schema["FeedbackRequest"]["properties"]["actual"]["enum"] == ["Yes", "No", True, False]
    pid = "0123456789abcdef01234567"
    before = capture(server.project)
    for body, field in [
        ({"prediction_id": pid, "id": "7590-VHVEG", "actual": "Yes"}, "prediction_id"),
        ({"actual": "Yes"}, "prediction_id"),
        ({"prediction_id": None, "actual": "Yes"}, "prediction_id"),
        ({"prediction_id": pid, "actual": "yes please"}, "actual"),
    ]:
        r = httpx.post(f"{server.url}/v1/feedback", json=body, headers=server.headers("service"))
        assert r.status_code == 422, (body, r.text)
        assert field in str(r.json()["detail"]), r.text
    assert_unchanged(before, server.project)


def test_no_documentation_pages_from_a_cdn(server: Server) -> None:
    """Issue 12.19: /docs and /redoc loaded their scripts from a CDN; they are off."""
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(f"{server.url}{page}").status_code == 404, page
    assert httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_keys_and_roles(server: Server) -> None:
    body = {"instances": _instances(server.project, 1)}
    before = capture(server.project)
    assert httpx.post(f"{server.url}/v1/predict", json=body).status_code == 401
    bad = {"Authorization": "Bearer cpml_00000000_nope"}
    assert httpx.post(f"{server.url}/v1/predict", json=body, headers=bad).status_code == 401
    r = httpx.post(f"{server.url}/v1/predict", json=body, headers=server.headers("viewer"))
    assert r.status_code == 403 and "viewer" in r.json()["detail"]
    feedback = {"id": body["instances"][0]["customerID"], "actual": "Yes"}
    r = httpx.post(f"{server.url}/v1/feedback", json=feedback, headers=server.headers("viewer"))
    assert r.status_code == 403
    assert httpx.post(f"{server.url}/v1/feedback", json=feedback, headers=bad).status_code == 401
    assert_unchanged(before, server.project)
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


def _until(condition: Callable[[], bool], what: str, limit_s: float = 60) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` did not happen in time."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {limit_s} s: {what}"
        time.sleep(0.05)


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

    monkeypatch.setenv("COPML_DB_URL", pg_url)
    freeze(churn, pg_url)
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
            _until(lambda: conn.execute(blocked).scalar() > 0, "the key check waits on the lock")
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
    key_changes.revoke(srv.project.root, srv.keys["service"])
    key_changes.expire(engine, expiring["Authorization"].removeprefix("Bearer "))
    _until(
        lambda: httpx.post(url, json=body, headers=revoked).status_code == 401,
        "the revoked key is refused",
    )
    _until(
        lambda: httpx.post(url, json=body, headers=expiring).status_code == 401,
        "the expired key is refused",
    )


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
    """SIGKILL to the server's whole process group as the 500th of 1,000 requests (16 in
    flight) is answered: whatever was acknowledged is stored, and the store is sound."""
    env: dict[str, str] = {}
    if store == "postgresql":
        url = request.getfixturevalue("pg_url")
        monkeypatch.setenv("COPML_DB_URL", url)
        freeze(churn, url)
        env = {"COPML_DB_URL": url}
    server = start(churn, "--workers", str(workers), env=env)
    try:
        acked, unanswered = asyncio.run(_load_during(server, 1000, 16, server.kill, inline=True))
    finally:
        server.kill()
    assert len(acked) >= 500 and unanswered > 0  # the kill came with requests in flight
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
        try:  # a generous deadline: CI's 2 cores also run the x-ray demo's training
            _until(
                lambda: len(_workers(server.process.pid) - first) == 1,
                "a new worker replaces the killed one",
                limit_s=240,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the server's log: {server.log()[-2000:]}") from None
        (replacement,) = _workers(server.process.pid) - first
        _until(lambda: _listens(replacement, port), "the new worker listens on the port", 240)
        body = {"instances": _instances(churn, 1)}
        for _ in range(20):
            r = httpx.post(f"{server.url}/v1/predict", json=body, headers=server.headers("service"))
            assert r.status_code == 200
    finally:
        server.kill()
    log = server.log()
    assert f"worker 0 (pid {victim}) ended (killed by SIGKILL); restarting it" in log or (
        f"worker 1 (pid {victim}) ended (killed by SIGKILL); restarting it" in log
    ), log[-2000:]


def _deployed(project: Project) -> int:
    """How many times a server process loaded a model of this project (one event each)."""
    with open_store(project.db_url).connect() as conn:
        return conn.execute(
            select(func.count()).select_from(event_log).where(event_log.c.kind == "serve.deployed")
        ).scalar_one()


def test_a_second_server_on_a_served_port_refuses_to_start(churn: Project) -> None:
    """SO_REUSEPORT would let it bind beside the first: it must refuse, change nothing."""
    deployed_before = _deployed(churn)
    server = start(churn, "--workers", "2")
    port = _port_of(server)
    try:
        # /healthz answers once one worker is up; the other records its start a moment later.
        _until(lambda: _deployed(churn) == deployed_before + 2, "both workers loaded the model")
        before = capture(churn)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("COPML_", "MLFLOW_"))}
        # The same address, and the wildcard address that overlaps it.
        for host in ("127.0.0.1", "0.0.0.0"):
            second = subprocess.Popen(
                _serve_command(churn, port, "--workers", "2", "--host", host),
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
            assert f"port {port} is already served by another copml serve" in err, err
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
    before = capture(server.project)
    again = httpx.post(f"{server.url}/v1/reviews/{target}", json={"label": "Yes"}, headers=operator)
    assert again.status_code == 404  # resolved once
    bad = httpx.post(
        f"{server.url}/v1/reviews/{flagged[-1]['prediction_id']}",
        json={"label": "maybe"},
        headers=operator,
    )
    assert bad.status_code == 422 and "label" in str(bad.json()["detail"])
    assert_unchanged(before, server.project)


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
    before = capture(server.project)
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
    r = httpx.post(
        f"{server.url}/v1/feedback",
        headers={**server.headers("service"), "content-type": "application/json"},
        content=json.dumps({"id": "\udc00", "actual": "Yes"}).encode(),  # a lone surrogate
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "id"], r.text
    assert_unchanged(before, server.project)


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


def test_score_precision_rounds_answers_not_the_log(trained_churn: Path, tmp_path: Path) -> None:
    project = _copy(trained_churn, tmp_path, "serving: {mode: realtime, score_precision: 2}")
    srv = start(project)
    try:
        body = {"instances": _instances(project, 1)}
        answer = httpx.post(f"{srv.url}/v1/predict", json=body, headers=srv.headers("service"))
        assert answer.status_code == 200, answer.text
        first = answer.json()["predictions"][0]
        assert first["score"] == round(first["score"], 2)
        stored = prediction_log.record(open_store(project.db_url), first["prediction_id"])
        assert stored is not None and round(stored["score"], 2) == first["score"]  # exact
    finally:
        srv.kill()


# A burst of 12 instances, then one instance every 20 s: nothing the test does waits that long.
RATE, BURST = 0.05, 12
RATE_LIMITED = f"serving: {{mode: realtime, rate_limit: {{per_second: {RATE}, burst: {BURST}}}}}"


async def _at_once(url: str, headers: dict[str, str], bodies: list[dict[str, object]]) -> list[int]:
    """Every body posted concurrently, each on a connection of its own (so that the kernel
    spreads them over the workers); the status codes."""

    async def one(body: dict[str, object]) -> int:
        async with httpx.AsyncClient(headers=headers, timeout=60) as client:
            return (await client.post(url, json=body)).status_code

    return await asyncio.gather(*(one(body) for body in bodies))


@pytest.mark.parametrize("workers", [1, 2])
def test_rate_limit_counts_instances_across_workers(
    trained_churn: Path, tmp_path: Path, workers: int
) -> None:
    """The declared rate holds in total: instances, not requests, over every worker; and
    /v1/feedback has a budget of its own."""
    project = _copy(trained_churn, tmp_path, RATE_LIMITED)
    srv = start(project, "--workers", str(workers))
    try:
        service = srv.headers("service")
        three = {"instances": _instances(project, 3)}
        began = time.monotonic()
        codes = asyncio.run(_at_once(f"{srv.url}/v1/predict", service, [three] * 12))
        elapsed = time.monotonic() - began
        assert set(codes) <= {200, 429}, codes
        accepted = 3 * codes.count(200)
        # The burst, plus what refilled while the test ran (measured, not assumed).
        assert BURST <= accepted <= BURST + RATE * elapsed, (codes, elapsed)
        with open_store(project.db_url).connect() as conn:
            assert conn.execute(select(func.count()).select_from(predictions)).scalar_one() == (
                accepted
            )

        # Refused requests leave nothing behind: a spent budget, and a request over the burst.
        before = capture(project)
        spent = httpx.post(f"{srv.url}/v1/predict", json=three, headers=service)
        assert spent.status_code == 429 and int(spent.headers["Retry-After"]) >= 1
        assert "instances/s" in spent.json()["detail"]
        huge = {"instances": _instances(project, BURST + 1)}
        over = httpx.post(f"{srv.url}/v1/predict", json=huge, headers=service)
        assert over.status_code == 429 and f"burst of {BURST}" in over.json()["detail"]
        assert_unchanged(before, project)

        # Feedback: its own budget (the spent predict budget does not refuse it), limited too.
        nobody = {"id": "9999-NOONE", "actual": "Yes"}  # matches nothing: 404 when let through
        began = time.monotonic()
        codes = asyncio.run(_at_once(f"{srv.url}/v1/feedback", service, [nobody] * (BURST + 6)))
        elapsed = time.monotonic() - began
        assert set(codes) <= {404, 429}, codes
        assert BURST <= codes.count(404) <= BURST + RATE * elapsed, (codes, elapsed)
    finally:
        srv.kill()


def test_a_poison_request_fails_alone(server: Server) -> None:
    """A lone surrogate in a string (valid JSON, not valid Unicode) among 15 good concurrent
    requests: it gets a 422 naming the field, the 15 are answered and logged."""
    good = _instances(server.project, 15)
    poison = {**good[0], "customerID": "\udc00"}
    headers = {**server.headers("service"), "content-type": "application/json"}
    engine = open_store(server.project.db_url)
    with engine.connect() as conn:
        logged_before = conn.execute(select(func.count()).select_from(predictions)).scalar_one()

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server.url,
            headers=headers,
            timeout=60,
            limits=httpx.Limits(max_connections=16),
        ) as client:
            bodies = [{"instances": [row]} for row in [*good[:7], poison, *good[7:]]]
            return await asyncio.gather(
                # json.dumps escapes the surrogate (httpx's own encoder cannot send it)
                *(client.post("/v1/predict", content=json.dumps(b).encode()) for b in bodies)
            )

    answers = asyncio.run(send())
    refused = answers.pop(7)
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["body", "instances", 0, "customerID"]
    assert [a.status_code for a in answers] == [200] * 15, [a.text[:100] for a in answers]
    ids = [a.json()["predictions"][0]["prediction_id"] for a in answers]
    assert prediction_log.resolve(engine, ids).notna().all()
    with engine.connect() as conn:
        logged = conn.execute(select(func.count()).select_from(predictions)).scalar_one()
    assert logged == logged_before + 15


def in_one_group(scorer: Callable[..., list[Any]], requests: list[list[Any]]) -> list[Any]:
    """Each request's result (or exception) when all are submitted as one group to a real
    micro-batcher in front of ``scorer``."""
    from copml.serve.batcher import MicroBatcher

    async def run() -> list[object]:
        batcher = MicroBatcher(scorer)
        submitted = [asyncio.create_task(batcher.submit(rows)) for rows in requests]
        await asyncio.sleep(0)  # one turn of the loop: every request is queued, one group
        batcher.start()
        try:
            return await asyncio.gather(*submitted, return_exceptions=True)
        finally:
            await batcher.stop()

    return asyncio.run(run())


def test_a_request_that_fails_inside_its_group_fails_alone(churn: Project) -> None:
    """Whatever still fails inside a group (here a row that lacks a feature, past the edge
    checks) fails only its own request: the group is split, the others scored and logged."""
    from copml.serve.champion import ChampionSlot
    from copml.serve.scoring import GroupScorer

    engine = open_store(churn.db_url)
    slot = ChampionSlot(churn, engine)
    slot.refresh()
    scorer = GroupScorer(churn, engine, slot)
    good = scorer.encode(_instances(churn, 15))
    lacking = {k: v for k, v in good[0].features.items() if k != "tenure"}
    requests = [[row] for row in good[:7]] + [[dataclasses.replace(good[0], features=lacking)]]
    requests += [[row] for row in good[7:]]

    results = in_one_group(scorer, requests)
    assert isinstance(results.pop(7), KeyError)
    assert not [r for r in results if isinstance(r, BaseException)], results
    ids = [r[1][0]["prediction_id"] for r in results]  # type: ignore[index]
    assert prediction_log.resolve(engine, ids).notna().all()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(predictions)).scalar_one() == 15


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
        ("viewer", "."),  # may use no route: every keyed one answers 401/403 as documented
    ],
)
def test_openapi_describes_the_server_for_every_role(
    server: Server, role: str, paths: str, tmp_path: Path
) -> None:
    """Issue 12.22: schemathesis (from PyPI) runs every check it has (status codes, content
    types, schemas, negative data refused, positive data accepted, auth) in its coverage,
    fuzzing and stateful phases against /openapi.json: no failure."""
    engine = open_store(server.project.db_url)
    key = server.keys.get(role) or keys.create(engine, role)
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "coverage,fuzzing,stateful",
            "--include-path-regex",
            paths,
            "--header",
            f"Authorization: Bearer {key}",
            "--max-examples",
            "10",
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
    assert done.returncode == 0, done.stdout[-5000:]
    summary = done.stdout.split("SUMMARY")[-1]
    assert "\u2705 Coverage" in summary and "\u2705 Fuzzing" in summary, summary
    # Stateful runs where responses link to other operations (not for GET-only roles).
    assert "\u2705 Stateful" in summary or "Stateful (not applicable)" in summary, summary
    assert "failure" not in summary and "\u274c" not in summary, summary


def test_status_lists_the_serving_replica_that_beats(churn: Project) -> None:
    """Each server beats with its address, process and loaded version; ``copml status``
    lists the replicas the store has seen."""
    srv = start(churn)
    try:
        status = [sys.executable, "-m", "copml", "status", "--project", str(churn.root)]
        shown = json.loads(
            subprocess.run([*status, "--json"], capture_output=True, text=True, check=True).stdout
        )["replicas"]
        table = subprocess.run(status, capture_output=True, text=True, check=True).stdout
    finally:
        srv.kill()
    address = srv.url.removeprefix("http://")
    assert [r["replica"] for r in shown] == [address]  # the server beat once it started
    (replica,) = shown
    assert replica["model_version"] == "1" and replica["ok"] and replica["live"]
    assert isinstance(replica["pid"], int) and replica["pid"] > 0
    assert address in table and "live" in table


def _stored_keys(project: Project) -> list[tuple[str, str, int]]:
    engine = open_store(project.db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(idempotency_keys.c.caller, idempotency_keys.c.key, idempotency_keys.c.seq)
        )
        return sorted(tuple(row) for row in rows)


def test_a_retry_with_its_idempotency_key_gets_the_same_answer_and_logs_nothing(
    server: Server,
) -> None:
    instances = _instances(server.project, 2)
    headers = {**server.headers("service"), "Idempotency-Key": f"order-{uuid.uuid4()}"}
    url = f"{server.url}/v1/predict"
    first = httpx.post(url, json={"instances": instances}, headers=headers)
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    before = capture(server.project)
    again = httpx.post(url, json={"instances": instances}, headers=headers)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.text == first.text  # the same prediction ids, scores, version
    assert_unchanged(before, server.project)

    # The same key with other instances is a conflict, and stores nothing.
    other = httpx.post(url, json={"instances": instances[:1]}, headers=headers)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"], other.text
    for bad in ("two words", "x" * 256, ""):
        refused = httpx.post(
            url, json={"instances": instances}, headers={**headers, "Idempotency-Key": bad}
        )
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"], bad
    twice = httpx.post(
        url,
        json={"instances": instances},
        headers=[
            *server.headers("service").items(),
            ("Idempotency-Key", "a"),
            ("Idempotency-Key", "b"),
        ],
    )
    assert twice.status_code == 422 and "more than once" in twice.text
    assert_unchanged(before, server.project)

    # A key is the caller's own: another service key's request with it is a new prediction.
    other_key = keys.create(open_store(server.project.db_url), "service")
    theirs = httpx.post(
        url,
        json={"instances": instances},
        headers={
            "Authorization": f"Bearer {other_key}",
            "Idempotency-Key": headers["Idempotency-Key"],
        },
    )
    assert theirs.status_code == 200, theirs.text
    assert (
        theirs.json()["predictions"][0]["prediction_id"]
        != first.json()["predictions"][0]["prediction_id"]
    )
    assert (
        len(
            {
                caller
                for caller, key, _ in _stored_keys(server.project)
                if key == headers["Idempotency-Key"]
            }
        )
        == 2
    )


def test_one_key_sent_many_times_at_once_is_predicted_once(server: Server) -> None:
    """Twelve copies of one request with one key, in flight together: whatever groups they
    fall in, every copy gets the same answer and one prediction is logged."""
    instance = _instances(server.project, 1)
    key = f"burst-{uuid.uuid4()}"
    headers = {**server.headers("service"), "Idempotency-Key": key}
    engine = open_store(server.project.db_url)
    with engine.connect() as conn:
        logged_before = conn.execute(select(func.count()).select_from(predictions)).scalar_one()

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/v1/predict", json={"instances": instance}) for _ in range(12))
            )

    answers = asyncio.run(send())
    assert [a.status_code for a in answers] == [200] * 12, [a.text[:200] for a in answers]
    assert len({a.text for a in answers}) == 1
    with engine.connect() as conn:
        logged = conn.execute(select(func.count()).select_from(predictions)).scalar_one()
    assert logged == logged_before + 1
    assert [k for _, k, _ in _stored_keys(server.project)].count(key) == 1
