"""Capacity per process on PostgreSQL: the measured figures behind docs/scaling.md.

1. The prediction log's insert rate on PostgreSQL, the one thing every replica and every
   scoring run shares (writers take ``LOCK TABLE batches`` to get contiguous sequence
   numbers, so the log takes one batch at a time):
   - the batch path: ``prediction_log.write`` of 1,000,000 rows in one batch (COPY);
   - the API path: group commits as ``copml serve`` makes them (the predictions, their
     redacted inputs and one Idempotency-Key per request in one transaction), groups of 1,
     16 and 64 rows, from 1 and 8 writer processes at once.
2. One serving replica (``copml serve``, one worker, durable log) with its store on
   PostgreSQL, loaded by ``wrk`` at concurrency 16 with one-instance requests: without and
   with an ``Idempotency-Key`` per request (every key new), and with its store on SQLite for
   reference. Same model, thread settings and wrk timeout as ``serve.py``.

Needs a PostgreSQL URL (``COPML_BENCH_PG_URL``, else ``COPML_TEST_PG_URL``); the figures
land in a fresh schema, dropped at the end.

Run: .venv/bin/python benchmarks/capacity.py [SECONDS=10]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from serve import WRK_TIMEOUT, _ms, _port, _ready, _wrk
from sqlalchemy import Connection, create_engine, text
from workload import WORK, batch, hgb_project

from copml import keys, prediction_log, snapshots
from copml.project import Project
from copml.serve import idempotency
from copml.store import bulk_insert, open_store, prediction_inputs

INPUT = json.dumps({f"feature_{i}": "some value" for i in range(20)})  # ~600 bytes, as a row


@contextmanager
def _schema() -> Iterator[str]:
    url = os.environ.get("COPML_BENCH_PG_URL") or os.environ.get("COPML_TEST_PG_URL")
    if not url:
        sys.exit("needs COPML_BENCH_PG_URL (or COPML_TEST_PG_URL): a PostgreSQL server")
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {name}"))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


def _header(model_version: str = "1", origin: str = "batch") -> prediction_log.Header:
    return prediction_log.Header(
        prediction_log.new_key(), datetime.now(UTC), "bench", model_version, None, origin
    )


def batch_rate(url: str, rows: int = 1_000_000) -> float:
    engine = open_store(url)
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, rows).astype(np.int16)
    score = rng.random(rows)
    review = np.zeros(rows, dtype=bool)
    prediction_log.write(engine, _header(), label[:1000], score[:1000], review[:1000])  # warm
    start = time.perf_counter()
    prediction_log.write(engine, _header(), label, score, review)
    rate = rows / (time.perf_counter() - start)
    engine.dispose()
    return rate


def _writer(url: str, group: int, seconds: float, commits: Any, start: Any) -> None:
    """One writer process: API-style group commits for ``seconds`` once all are ready."""
    engine = open_store(url)
    label = np.ones(group, dtype=np.int16)
    score = np.full(group, 0.5)
    review = np.zeros(group, dtype=bool)
    start.wait()
    stop = time.perf_counter() + seconds
    done = 0
    while time.perf_counter() < stop:
        claim = idempotency.Claim("", uuid.uuid4().hex, "0" * 32)
        now = datetime.now(UTC)

        def alongside(
            conn: Connection, first: int, claim: idempotency.Claim = claim, now: datetime = now
        ) -> None:
            bulk_insert(
                conn,
                prediction_inputs,
                ("seq", "input", "input_hash", "entity_key", "latency_ms"),
                [(first + i, INPUT, "0" * 64, None, 1.0) for i in range(group)],
            )
            idempotency.record(conn, [(claim, first, '{"predictions": []}')], now)

        prediction_log.write(engine, _header(origin="api"), label, score, review, alongside)
        done += 1
    engine.dispose()
    with commits.get_lock():
        commits.value += done


def api_rate(url: str, group: int, writers: int, seconds: float) -> tuple[float, float]:
    """(commits/s, rows/s) of API-style group commits from ``writers`` processes at once,
    as many replicas write (processes: threads of one process would measure its GIL)."""
    context = multiprocessing.get_context("spawn")
    commits = context.Value("l", 0)
    ready = context.Barrier(writers + 1)
    processes = [
        context.Process(target=_writer, args=(url, group, seconds, commits, ready))
        for _ in range(writers)
    ]
    for process in processes:
        process.start()
    ready.wait()
    for process in processes:
        process.join()
    per_s = commits.value / seconds
    return per_s, per_s * group


KEYED_WRK = """
wrk.method = "POST"
local body = {body}
local auth = {auth}
local n = 0
local threads = 0
-- Each thread's own prefix (a global of its Lua state): no key is sent twice.
function setup(thread)
  threads = threads + 1
  thread:set("prefix", tostring(threads))
end
function request()
  n = n + 1
  return wrk.format(nil, nil, {{["Content-Type"] = "application/json",
    ["Authorization"] = auth, ["Idempotency-Key"] = prefix .. "-" .. n}}, body)
end
"""


def serve_rate(project: Project, db_url: str | None, keyed: bool, seconds: int) -> dict:
    """One replica's figures at concurrency 16 (its store on ``db_url``, else SQLite)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if db_url:
        env["COPML_DB_URL"] = db_url
    engine = open_store(db_url or project.db_url)
    # The champion's training snapshot in that store (same content, same id).
    snapshots.create(engine, project.spec.data, root=project.root, directory=project.snapshots_dir)
    auth = f"Bearer {keys.create(engine, 'service')}"
    instance = json.loads(
        pd.read_parquet(batch(WORK / "serve-batch.parquet", 100)).head(1).to_json(orient="records")
    )[0]
    body = json.dumps({"instances": [instance]})
    port = _port()
    command = [sys.executable, "-m", "copml", "serve", "--project", str(project.root)]
    process = subprocess.Popen(
        [*command, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _ready(f"http://127.0.0.1:{port}/readyz", process)
        url = f"http://127.0.0.1:{port}/v1/predict"
        headers = {"Authorization": auth}
        _wrk(url, body, headers, 4, 2)  # warm up
        if not keyed:
            return _wrk(url, body, headers, 16, seconds)
        script = KEYED_WRK.format(body=json.dumps(body), auth=json.dumps(auth))
        return _keyed_wrk(url, script, seconds)
    finally:
        os.killpg(process.pid, 9)
        process.wait()
        engine.dispose()


def _keyed_wrk(url: str, script: str, seconds: int) -> dict:
    """``wrk`` with a script that sends a new Idempotency-Key with every request."""
    path = WORK / "wrk-keyed.lua"
    path.write_text(script)
    out = subprocess.run(
        [
            *("wrk", "-t", "2", "-c", "16", "-d", f"{seconds}s", "--latency"),
            *("--timeout", WRK_TIMEOUT, "-s", str(path), url),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50, p99 = (re.search(rf"^\s+{q}%\s+(\S+)\s*$", out, re.M).group(1) for q in (50, 99))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": rps,
        "p50": _ms(p50),
        "p99": _ms(p99),
        "non_2xx": int(bad.group(1)) if bad else 0,
    }


def main(seconds: int = 10) -> None:
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    with _schema() as url:
        print("The prediction log on PostgreSQL", flush=True)
        print(
            f"  batch path, 1,000,000 rows in one batch: {batch_rate(url):,.0f} rows/s", flush=True
        )
        for writers in (1, 8):
            for group in (1, 16, 64):
                commits, rows = api_rate(url, group, writers, seconds / 2)
                print(
                    f"  API path, groups of {group:2d} rows, {writers} writer(s): "
                    f"{commits:7.1f} commits/s, {rows:8.0f} rows/s",
                    flush=True,
                )
    print("One serving replica (1 worker, durable log), concurrency 16", flush=True)
    project = hgb_project("capacity", max_iter=200)
    for name, keyed, on_pg in (
        ("SQLite store", False, False),
        ("PostgreSQL store", False, True),
        ("PostgreSQL store, Idempotency-Key per request", True, True),
    ):
        with _schema() as url:
            m = serve_rate(project, url if on_pg else None, keyed, seconds)
        print(
            f"  {name}: {m['rps']:7.1f} req/s, p50 {m['p50']:6.2f} ms, p99 {m['p99']:7.2f} ms, "
            f"non-2xx {m['non_2xx']}",
            flush=True,
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
