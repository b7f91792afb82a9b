"""``kill -9`` of ``copml serve`` with requests in flight, repeated: no acknowledged loss.

Each round starts ``copml serve``, sends ``REQUESTS`` one-instance predictions at
concurrency 16 and, as the ``REQUESTS / 2``-th answer arrives (answers are counted, no
timer), sends SIGKILL to the server's whole process group. Then it checks that every
acknowledged prediction id is in the store with the model version its answer named, and
that the store opens cleanly (SQLite: ``PRAGMA integrity_check``; both: open, migrations
check, a write). Cases: 1 and 2 workers on SQLite and, when ``COPML_BENCH_PG_URL`` names a
PostgreSQL database, on PostgreSQL (a fresh schema, dropped afterwards).

Run: .venv/bin/python benchmarks/crash.py [ROUNDS=5] [REQUESTS=2000]
     (PostgreSQL too: COPML_BENCH_PG_URL=postgresql+psycopg://user:pw@127.0.0.1/db)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx
import pandas as pd
from sqlalchemy import create_engine, func, select, text
from workload import WORK, batch, hgb_project

from copml import keys, prediction_log, snapshots
from copml.project import Project
from copml.store import batches, open_store, predictions

CONCURRENCY = 16


@dataclass
class Round:
    case: str
    acknowledged: int
    unanswered: int
    missing: int  # acknowledged but not in the store
    wrong_version: int
    integrity: str
    reopen_s: float


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(project: Project, workers: int, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "copml", "serve", "--project", str(project.root)),
            *("--port", str(port), "--workers", str(workers)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        time.sleep(0.2)  # a benchmark, not a test: polling a server that is starting up
    raise RuntimeError("server not ready after 180 s")


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


async def _load(
    url: str, key: str, instances: list[dict], n: int, kill: Callable[[], None]
) -> tuple[list[tuple[str, str]], int]:
    acked: list[tuple[str, str]] = []
    unanswered = 0
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:

        async def one(i: int) -> None:
            nonlocal unanswered
            try:
                async with gate:
                    r = await client.post("/v1/predict", json={"instances": [instances[i % 50]]})
            except httpx.TransportError:
                unanswered += 1
                return
            r.raise_for_status()
            body = r.json()
            acked.append((body["predictions"][0]["prediction_id"], body["model_version"]))
            if len(acked) == n // 2:
                kill()

        await asyncio.gather(*(one(i) for i in range(n)))
    return acked, unanswered


def _check(case: str, db_url: str, acked: list[tuple[str, str]], unanswered: int) -> Round:
    start = time.perf_counter()
    integrity = "n/a (PostgreSQL)"
    if db_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    engine = open_store(db_url)
    keys.create(engine, "viewer")  # takes writes again
    reopen = time.perf_counter() - start
    seqs = prediction_log.resolve(engine, [pid for pid, _ in acked])
    found = seqs.dropna().astype(int).tolist()
    batch_keys = {pid[:-8] for pid, _ in acked}
    with engine.connect() as conn:
        rows = conn.execute(
            select(func.count()).select_from(predictions).where(predictions.c.seq.in_(found))
        ).scalar_one()
        versions = dict(
            conn.execute(
                select(batches.c.key, batches.c.model_version).where(batches.c.key.in_(batch_keys))
            ).all()
        )
    engine.dispose()
    missing = len(acked) - min(rows, int(seqs.notna().sum()))
    wrong = sum(versions.get(pid[:-8]) != version for pid, version in acked)
    return Round(case, len(acked), unanswered, missing, wrong, integrity, reopen)


def _case(project: Project, workers: int, db_url: str, rounds: int, n: int) -> list[Round]:
    env = {"COPML_DB_URL": db_url}
    os.environ.update(env)  # this process's store too
    engine = open_store(db_url)
    snapshots.create(engine, project.spec.data, root=project.root, directory=project.snapshots_dir)
    key = keys.create(engine, "service")
    engine.dispose()
    data = project.spec.data
    source = pd.read_parquet(batch(WORK / "crash-batch.parquet", 100)).dropna().head(50)
    instances = json.loads(source[[data.id, *data.features]].to_json(orient="records"))
    case = f"{workers} worker{'s' if workers > 1 else ''}, {db_url.split(':', 1)[0]}"
    out = []
    for i in range(rounds):
        process, url = _start(project, workers, env)
        try:
            kill = functools.partial(_kill, process)
            acked, unanswered = asyncio.run(_load(url, key, instances, n, kill))
        finally:
            _kill(process)
        found = _check(case, db_url, acked, unanswered)
        out.append(found)
        print(f"  {case}, round {i + 1}: {json.dumps(asdict(found))}", flush=True)
    return out


def main(rounds: int, n: int) -> list[Round]:
    project = hgb_project("crash")
    sqlite_url = f"sqlite:///{project.home / 'copml.db'}"
    results: list[Round] = []
    for workers in (1, 2):
        results += _case(project, workers, sqlite_url, rounds, n)
    pg = os.environ.get("COPML_BENCH_PG_URL")
    if pg:
        schema = f"crash_{uuid.uuid4().hex[:8]}"
        admin = create_engine(pg)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        try:
            sep = "&" if "?" in pg else "?"
            url = f"{pg}{sep}options=-csearch_path%3D{schema}"
            for workers in (1, 2):
                results += _case(project, workers, url, rounds, n)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    else:
        print("- PostgreSQL skipped: set COPML_BENCH_PG_URL")
    print("| case | rounds | acknowledged (min-max) | missing | wrong version | integrity |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case in dict.fromkeys(r.case for r in results):
        mine = [r for r in results if r.case == case]
        acked = [r.acknowledged for r in mine]
        print(
            f"| {case} | {len(mine)} | {sum(acked)} ({min(acked)}-{max(acked)}) | "
            f"{sum(r.missing for r in mine)} | {sum(r.wrong_version for r in mine)} | "
            f"{', '.join(sorted({r.integrity for r in mine}))} |"
        )
    return results


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    found = main(args[0] if args else 5, args[1] if len(args) > 1 else 2000)
    lost = sum(r.missing + r.wrong_version for r in found)
    sys.exit(1 if lost else 0)
