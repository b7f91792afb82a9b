"""Serving under an API-key guessing attack (issue 12, item 12).

One ``copml serve`` (1 worker, durable log) of the HGB churn model. Legitimate traffic is
``wrk`` at concurrency 4 with a valid service key, one instance per request; it is
measured alone, then while 4 attacking connections (a second ``wrk``) send the same
requests with the service key's prefix and ever-changing wrong secrets. Target: the
legitimate throughput under attack within 20 % of the throughput without it.

Before the load, the time of a wrong secret for a known prefix and of an unknown prefix
are compared (a timing signal would tell an attacker which prefixes exist).

Run: .venv/bin/python benchmarks/auth_attack.py [SECONDS=10]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import httpx
import pandas as pd
from serve import _port, _ready, _wrk
from workload import WORK, batch, hgb_project

from copml import keys
from copml.store import open_store

ATTACK = """
counter = 0
request = function()
    counter = counter + 1
    wrk.headers["Authorization"] = "Bearer cpml_{prefix}_wrong" .. counter
    return wrk.format("POST", nil, nil, {body})
end
wrk.headers["Content-Type"] = "application/json"
"""


def _timing(url: str, body: str, prefix: str) -> dict[str, float]:
    """Median ms of a wrong secret at a known prefix and at an unknown one (4 each, in
    turn: fewer than the 10 failures after which the address is refused)."""
    spent: dict[str, list[float]] = {"known prefix, wrong secret": [], "unknown prefix": []}
    for n in range(4):
        for case, key in (
            ("known prefix, wrong secret", f"cpml_{prefix}_wrong{n}"),
            ("unknown prefix", f"cpml_{n:08x}_wrong{n}"),
        ):
            start = time.perf_counter()
            answer = httpx.post(
                url,
                content=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            spent[case].append((time.perf_counter() - start) * 1000)
            assert answer.status_code == 401, answer.text
    return {case: statistics.median(ms) for case, ms in spent.items()}


def main(seconds: int = 10) -> dict[str, float]:
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    project = hgb_project("auth-attack", max_iter=200)
    source = batch(WORK / "serve-batch.parquet", 100)
    instance = json.loads(pd.read_parquet(source).head(1).to_json(orient="records"))[0]
    one = json.dumps({"instances": [instance]})
    service_key = keys.create(open_store(project.db_url), "service")
    prefix = service_key.split("_", 2)[1]
    auth = {"Authorization": f"Bearer {service_key}"}
    port = _port()
    url = f"http://127.0.0.1:{port}/v1/predict"
    command = [sys.executable, "-m", "copml", "serve", "-p", str(project.root), "--port", str(port)]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _ready(f"http://127.0.0.1:{port}/readyz", server)
        _wrk(url, one, auth, 4, 2)  # warm up; the service key is verified once here
        timing = _timing(url, one, prefix)
        normal = _wrk(url, one, auth, 4, seconds)
        script = WORK / "wrk-attack.lua"
        script.write_text(ATTACK.format(prefix=prefix, body=json.dumps(one)))
        attack_command = ["wrk", "-t", "2", "-c", "4", "-d", f"{seconds + 2}s", "-s", str(script)]
        attackers = subprocess.Popen(
            [*attack_command, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        attacked = _wrk(url, one, auth, 4, seconds)
        attack_out = attackers.communicate()[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    rate = next((ln for ln in attack_out.splitlines() if "Requests/sec" in ln), "").split()
    ratio = attacked["rps"] / normal["rps"]
    for case, ms in timing.items():
        print(f"{case}: median {ms:.1f} ms")
    print(
        f"legitimate, alone:        {normal['rps']:7.1f} req/s, p50 {normal['p50']:6.1f} ms, "
        f"p99 {normal['p99']:7.1f} ms, errors {normal['errors']}"
    )
    print(
        f"legitimate, under attack: {attacked['rps']:7.1f} req/s, p50 {attacked['p50']:6.1f} ms, "
        f"p99 {attacked['p99']:7.1f} ms, errors {attacked['errors']}"
    )
    print(f"attackers: {rate[-1] if rate else '?'} req/s, all refused (401, then 429)")
    met = "met" if ratio >= 0.8 else "NOT met"
    print(f"under attack / alone: {ratio:.2f} (target >= 0.80: {met})")
    return {"normal_rps": normal["rps"], "attacked_rps": attacked["rps"], "ratio": ratio}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
