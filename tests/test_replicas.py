"""Serving replicas on one store (issue 14 item 3): three ``copml serve`` processes on
127.0.0.2-4 behind a real HAProxy (deploy/haproxy/haproxy.cfg as shipped), one killed with
SIGKILL and a promotion under load; and two replicas through a PostgreSQL restart and a
10-second outage.

Every request carries its own ``Idempotency-Key``; every tenth is sent again after its
answer, as a client whose response was lost would. The load is driven by the counts of
acknowledged requests, never by the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from copml import prediction_log, registry
from copml.project import Project, load_project
from copml.store import idempotency_keys, open_store, predictions
from copml.train import train
from postgres_server import postgres_server
from projects import freeze
from test_mlflow_server import MlflowServer, mlflow_server  # noqa: F401 (a fixture)
from test_serve import _free_port, _instances

pytestmark = pytest.mark.cluster

HAPROXY_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy" / "haproxy.cfg"
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
DEADLINE = 240.0
RECOVERY_S = 5.0


@dataclass
class Replica:
    address: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def version(self) -> str | None:
        """The version its /readyz names (None: not ready, or not answering)."""
        with contextlib.suppress(httpx.HTTPError):
            ready = httpx.get(f"{self.url}/readyz", timeout=2)
            if ready.status_code == 200:
                return str(ready.json()["model_version"])
        return None


def _until(condition: Callable[[], bool], what: str, limit_s: float = DEADLINE) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit_s:.0f} s: {what}")
        time.sleep(0.1)


def _port_free_on(addresses: tuple[str, ...]) -> int:
    """A port that every one of ``addresses`` can bind."""
    for _ in range(50):
        port = _free_port()
        with contextlib.ExitStack() as stack:
            try:
                for address in addresses:
                    sock = stack.enter_context(socket.socket())
                    sock.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on every address")


@contextlib.contextmanager
def _replicas(
    project: Project, addresses: tuple[str, ...], env: dict[str, str]
) -> Iterator[list[Replica]]:
    """``copml serve`` on each address (one port for all), polling the registry twice a
    second; every one killed at the end."""
    port = _port_free_on(addresses)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("COPML_", "MLFLOW_"))}
    started: list[Replica] = []
    try:
        for address in addresses:
            log = project.root / f"serve-{address}.log"
            command = [
                *(sys.executable, "-m", "copml", "serve", "--project", str(project.root)),
                *("--host", address, "--port", str(port), "--insecure", "--poll", "0.5"),
            ]
            with log.open("wb") as out:
                process = subprocess.Popen(
                    command,
                    stdout=subprocess.DEVNULL,
                    stderr=out,
                    env={**inherited, **env},
                    start_new_session=True,
                )
            started.append(Replica(address, port, process, log))
        for replica in started:

            def ready(r: Replica = replica) -> bool:
                if r.process.poll() is not None:
                    raise AssertionError(f"{r.address} exited: {r.log.read_text()[-3000:]}")
                return r.version() is not None

            _until(ready, f"replica {replica.address} ready")
        yield started
    finally:
        for replica in started:
            replica.kill()


def _haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found is None:
        if os.environ.get("COPML_REQUIRE_HAPROXY"):
            pytest.fail("COPML_REQUIRE_HAPROXY is set but haproxy is not installed")
        pytest.skip("haproxy is not installed (Debian's package; .ci/run installs it)")
    return found


@contextlib.contextmanager
def _haproxy(folder: Path, replicas: list[Replica]) -> Iterator[str]:
    """The shipped HAProxy configuration with the test's addresses, in the foreground."""
    port = _free_port()
    servers = "".join(
        f"    server replica{i} {r.address}:{r.port} check\n" for i, r in enumerate(replicas, 1)
    )
    config = HAPROXY_CONFIG.read_text()
    config = re.sub(r"^    bind .*$", f"    bind 127.0.0.1:{port}", config, count=1, flags=re.M)
    config = re.sub(r"(?:^    server .*\n)+", servers, config, count=1, flags=re.M)
    assert servers in config and f"bind 127.0.0.1:{port}" in config
    path = folder / "haproxy.cfg"
    path.write_text(config)
    log = folder / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [_haproxy_binary(), "-db", "-f", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def routes() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"haproxy exited: {log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            return False

        _until(routes, "HAProxy routes to a ready replica")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Load:
    """What the clients saw: each key's answer, the failures, the answers to retries."""

    answers: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    retried: list[tuple[str, str]] = field(default_factory=list)  # (first answer, retry's)
    unavailable: list[tuple[int, str | None, float]] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [
            json.loads(text)["predictions"][0]["prediction_id"] for text in self.answers.values()
        ]

    def versions(self) -> list[str]:
        return [json.loads(text)["model_version"] for text in self.answers.values()]


async def _drive(
    urls: list[str],
    instances: list[dict[str, object]],
    total: int,
    concurrency: int,
    *,
    prefix: str,
    at: dict[int, Callable[[], None]] | None = None,
    until: Callable[[], bool] = lambda: True,
    retry_unavailable: bool = False,
    on_answer: Callable[[str, float], None] = lambda url, t: None,
) -> Load:
    """Send at least ``total`` requests (and on until ``until()`` holds), ``concurrency`` at
    a time, each with its own key, round robin over ``urls``. When the count of answered
    requests reaches a key of ``at``, its function runs in a thread while the load goes on.
    With ``retry_unavailable``, a 503 is sent again with its key after its Retry-After."""
    load, counter, answered, tasks = Load(), itertools.count(), 0, []
    loop_deadline = time.monotonic() + DEADLINE
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set() and not await asyncio.to_thread(until):
            await asyncio.sleep(0.2)
        done.set()

    async def send(client: httpx.AsyncClient, url: str, key: str, body: object) -> httpx.Response:
        while True:
            sent = time.monotonic()
            answer = await client.post(
                f"{url}/v1/predict", json=body, headers={"Idempotency-Key": key}
            )
            took = time.monotonic() - sent
            if answer.status_code != 503 or not retry_unavailable:
                return answer
            load.unavailable.append((503, answer.headers.get("retry-after"), took))
            if time.monotonic() > loop_deadline:
                return answer
            await asyncio.sleep(float(answer.headers.get("retry-after", "1")))

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal answered
        while True:
            i = next(counter)
            if (i >= total and done.is_set()) or time.monotonic() > loop_deadline:
                return
            url, key = urls[i % len(urls)], f"{prefix}-{i}"
            body = {"instances": [instances[i % len(instances)]]}
            try:
                first = await send(client, url, key, body)
                if first.status_code != 200:
                    load.failures.append(f"{key}: {first.status_code} {first.text[:200]}")
                    continue
                load.answers[key] = first.text
                on_answer(url, time.monotonic())
                if i % 10 == 0:  # the client's own retry, as after a lost response
                    again = await send(client, url, key, body)
                    load.retried.append((first.text, again.text))
            except httpx.HTTPError as exc:  # a hang (timeout) or a dropped connection
                load.failures.append(f"{key}: {type(exc).__name__} {exc}")
                continue
            answered += 1
            if at and answered in at:
                tasks.append(asyncio.create_task(asyncio.to_thread(at[answered])))

    timeout = httpx.Timeout(RECOVERY_S)  # an answer later than this is a hang
    limits = httpx.Limits(max_connections=concurrency * len(urls))
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        done.set()
        await watcher
        await asyncio.gather(*tasks)
    return load


def _assert_stored_once(engine_url: str, loads: list[Load]) -> None:
    """Every acknowledged prediction id is stored, once; nothing else was predicted; every
    retry got the first answer; one stored key per acknowledged request."""
    ids = [pid for load in loads for pid in load.ids()]
    assert len(set(ids)) == len(ids)
    engine = open_store(engine_url)
    seqs = prediction_log.resolve(engine, ids)
    assert seqs.notna().all() and seqs.is_unique
    with engine.connect() as conn:
        logged = conn.execute(select(func.count()).select_from(predictions)).scalar_one()
        keys = conn.execute(select(func.count()).select_from(idempotency_keys)).scalar_one()
    assert logged == len(ids) and keys == len(ids)
    for load in loads:
        assert load.retried and all(first == again for first, again in load.retried)
    engine.dispose()


def test_three_replicas_behind_haproxy_lose_nothing_to_a_kill_and_follow_a_promotion(
    request: pytest.FixtureRequest,
    pg_url: str,
    fresh_churn: Project,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _haproxy_binary()  # skip before the expensive part when it is missing
    project = fresh_churn
    mlflow: MlflowServer = request.getfixturevalue("mlflow_server")
    env = {"MLFLOW_TRACKING_URI": mlflow.url, "COPML_DB_URL": pg_url}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    freeze(project)
    assert train(project).champion
    candidate = train(project)  # version 2, registered beside champion 1
    assert registry.champion(project).version == "1" and candidate.version == "2"
    instances = _instances(project, 40)
    engine = open_store(pg_url)

    with _replicas(project, ADDRESSES, env) as replicas, _haproxy(tmp_path, replicas) as url:
        killed, survivors = replicas[0], replicas[1:]
        promoted = threading.Event()

        def promote() -> None:
            registry.promote(project, engine, "2", actor="user:test", reason="a better model")
            promoted.set()

        def switched() -> bool:
            return promoted.is_set() and all(r.version() == "2" for r in survivors)

        load = asyncio.run(
            _drive(
                [url],
                instances,
                3000,
                32,
                prefix="load",
                at={1000: killed.kill, 1500: promote},
                until=switched,
            )
        )
        after = asyncio.run(_drive([url], instances, 100, 8, prefix="after"))
        status = subprocess.run(
            [sys.executable, "-m", "copml", "status", "--json", "--project", str(project.root)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **env},
        )
        assert all(r.process.poll() is None for r in survivors)

    print(f"replicas: {len(load.answers)} answered, versions {Counter(load.versions())}")
    assert load.failures == [] and after.failures == []
    assert len(load.answers) >= 3000
    assert set(after.versions()) == {"2"}  # every replica left serves the promoted version
    assert killed.process.returncode == -signal.SIGKILL
    _assert_stored_once(pg_url, [load, after])
    seen = {r["replica"] for r in json.loads(status.stdout)["replicas"]}
    assert {f"{r.address}:{r.port}" for r in replicas} <= seen


def test_a_postgresql_restart_and_outage_get_503s_and_the_replicas_recover_alone(
    trained_churn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with postgres_server(_free_port()) as pg:
        shutil.copytree(trained_churn, tmp_path / "churn")
        monkeypatch.setenv("COPML_DB_URL", pg.url)
        project = load_project(tmp_path / "churn")
        freeze(project)  # the champion's training snapshot, in this store (same content, same id)
        env = {"COPML_DB_URL": pg.url}
        with _replicas(project, ADDRESSES[:2], env) as replicas:
            pids = [r.process.pid for r in replicas]
            urls = [r.url for r in replicas]
            back: list[float] = []  # when the database was back
            first_after: dict[str, float] = {}

            def answered(url: str, t: float) -> None:
                if back and url not in first_after:
                    first_after[url] = t

            def outage() -> None:
                time.sleep(10)  # the outage itself: the database is down this long
                pg.start()
                back.append(time.monotonic())

            def stop_for_10_s() -> None:
                pg.stop()
                outage()

            load = asyncio.run(
                _drive(
                    urls,
                    _instances(project, 40),
                    600,
                    8,
                    prefix="outage",
                    at={150: pg.restart, 300: stop_for_10_s},
                    until=lambda: bool(back) and len(first_after) == len(urls),
                    retry_unavailable=True,
                    on_answer=answered,
                )
            )
            assert [r.process.poll() for r in replicas] == [None, None]  # never restarted
            assert [r.process.pid for r in replicas] == pids
        _assert_stored_once(pg.url, [load])

    took = [t for _, _, t in load.unavailable]
    recovery = {url: round(first_after[url] - back[0], 2) for url in urls}
    print(
        f"outage: {len(load.answers)} answered, {len(took)} 503s "
        f"(slowest {max(took, default=0):.2f} s), recovered after {recovery} s"
    )
    assert load.failures == []  # no 500, no other error, no answer later than 5 s
    assert load.unavailable, "no request met the outage"
    assert all(retry_after is not None for _, retry_after, _ in load.unavailable)
    assert max(took for _, _, took in load.unavailable) < RECOVERY_S
    for url in urls:
        assert first_after[url] - back[0] < RECOVERY_S, (url, first_after[url] - back[0])
