"""What a shadow costs the client (issue 15.1): p50 latency at concurrency 1 of
``copml serve`` with and without a shadow version scoring every answered request.

One server (one worker, the durable log on, the benchmark's HistGradientBoosting model of
200 trees as champion and another fit of it as the shadow); ``wrk`` sends one-instance
requests at concurrency 1. The rollout alternates off, on, off, on, ... (``ROUNDS`` pairs,
``copml models shadow`` / ``abort`` and a reload between them), so that a drift of the
machine hits both sides alike; each on round is compared with the off round just before
it, and the median of those differences is the shadow's cost (this 2-vCPU machine drifts
by more than a millisecond between rounds, so many short rounds beat a few long ones). The
shadow's rows written and its drops (when it falls behind) come from the store and ``/metrics``.

Target: the client's p50 grows by at most 1 ms with the shadow on.

Run: .venv/bin/python benchmarks/shadow.py [SECONDS=5] [ROUNDS=8]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import urllib.request

import pandas as pd
from serve import THREADS, _path, _port, _ready, _wrk
from sqlalchemy import func, select
from workload import WORK, batch, hgb_project

from copml import keys
from copml.operate import lifecycle
from copml.store import batches, open_store
from copml.train import train


def _challenger(project) -> str:  # type: ignore[no-untyped-def]
    """Another fit of the champion's model (its 200 trees, its seed: the same holdout, so
    the gate compares them fairly) that a shadow may be: it passes the gate, and costs
    what the champion costs to score."""
    version = train(project, params={"max_iter": 200}).version
    report = lifecycle.gate(project, version, actor="user:bench")
    if not report.passed:
        raise RuntimeError(f"the challenger did not pass the gate: {report.reasons}")
    return version


def _post(url: str, key: str) -> None:
    request = urllib.request.Request(
        url, method="POST", data=b"", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert answer.status == 200


def _dropped(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    found = re.findall(r"^copml_shadow_dropped_total(?:\{[^}]*\})? ([\d.e+]+)$", text, re.M)
    return sum(float(v) for v in found)


def main(seconds: int = 5, rounds: int = 8) -> dict[str, object]:
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    project = hgb_project("shadow", max_iter=200)
    version = _challenger(project)
    engine = open_store(project.db_url)
    service, operator = keys.create(engine, "service"), keys.create(engine, "operator")
    source = batch(WORK / "shadow-batch.parquet", 100)
    instance = json.loads(pd.read_parquet(source).head(1).to_json(orient="records"))[0]
    body = json.dumps({"instances": [instance]})
    port = _port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "copml", "serve", "--project", str(project.root)]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--workers", "1"],
        cwd=WORK,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, **THREADS, "PATH": _path()},
    )
    auth = {"Authorization": f"Bearer {service}"}
    p50: dict[str, list[float]] = {"off": [], "on": []}
    try:
        _ready(f"{url}/readyz", process)
        _wrk(f"{url}/v1/predict", body, auth, 1, 2)  # warm up
        for i in range(rounds):
            for side in ("off", "on"):
                if side == "on":
                    lifecycle.shadow(project, version, actor="user:bench", reason=f"round {i}")
                _post(f"{url}/v1/admin/reload", operator)
                m = _wrk(f"{url}/v1/predict", body, auth, 1, seconds)
                p50[side].append(m["p50"])
                print(
                    f"  round {i + 1} shadow {side:3}: p50 {m['p50']:.3f} ms, "
                    f"{m['rps']:.0f} req/s, non-2xx {m['non_2xx']}",
                    flush=True,
                )
                if side == "on":
                    lifecycle.abort(project, actor="user:bench", reason="round done", arm="shadow")
        dropped = _dropped(url)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                select(batches.c.arm, func.sum(batches.c.n_rows)).group_by(batches.c.arm)
            ).all()
        )
    off, on = statistics.median(p50["off"]), statistics.median(p50["on"])
    added = statistics.median(b - a for a, b in zip(p50["off"], p50["on"], strict=True))
    found = {
        "p50_off_ms": off,
        "p50_on_ms": on,
        "added_ms": added,
        "rounds": p50,
        "rows": {k: int(v) for k, v in rows.items()},
        "shadow_dropped": dropped,
    }
    print(json.dumps(found, indent=2))
    verdict = "met" if added <= 1.0 else "MISSED"
    print(f"target: p50 grows by <= 1 ms with the shadow on: {added:+.3f} ms ({verdict})")
    return found


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
