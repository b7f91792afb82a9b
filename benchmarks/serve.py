"""Real-time serving throughput and latency: copml serve against the usual alternatives.

One script, one model (ColumnTransformer + HistGradientBoosting, 200 trees), one machine;
each server is started in turn and loaded with ``wrk`` (Debian package ``wrk``) sending
one-instance requests:

- floor: a bare FastAPI + uvicorn app calling ``predict_proba`` per request, no logging;
- copml serve, with the durable prediction log on (1 and 2 workers);
- ``mlflow models serve --env-manager local``;
- BentoML with adaptive batching, in its own virtualenv (``benchmarks/.work/bentoml-venv``;
  skipped when absent: ``python3 -m venv benchmarks/.work/bentoml-venv && .../pip install
  bentoml scikit-learn==<ours> pandas==<ours> numpy==<ours> cloudpickle==<ours> scipy==<ours>``).

Every server runs with the same thread settings (``THREADS``: one BLAS/OpenMP thread, what
copml serve sets for itself; leaving the baselines unset would let their OpenMP threads
spin against the load generator on 2 cores) and every load uses the same ``wrk`` timeout
(``WRK_TIMEOUT``, long enough that a slow server still gets a figure). The table reports
wrk's errors for each server: timeouts, non-2xx answers and other socket errors.

Targets (issue 16) at concurrency 16, one worker: copml >= 2.5x BentoML in throughput
(stretch 3x), p99 <= 60 ms; at concurrency 1 copml's p50 at most 1 ms above the floor's.
(Issue 3's: >= 2x the floor and >= 2x MLflow, p99 <= the floor's, are still printed.)

Run: .venv/bin/python benchmarks/serve.py [SECONDS=10]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from workload import WORK, batch, hgb_project

from copml import keys, registry
from copml.store import open_store

BENTO_VENV = WORK / "bentoml-venv"
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WRK_TIMEOUT = "60s"

FLOOR_APP = """
import cloudpickle, pandas as pd
from fastapi import FastAPI, Request
FEATURES = {features!r}
with open({model!r}, "rb") as fh:
    model = cloudpickle.load(fh)
app = FastAPI()

@app.get("/healthz")
def healthz():
    return {{"status": "ok"}}

@app.post("/v1/predict")
async def predict(request: Request):
    body = await request.json()
    frame = pd.DataFrame(body["instances"])[FEATURES]
    return {{"scores": model.predict_proba(frame)[:, 1].tolist()}}
"""

BENTO_SERVICE = """
import bentoml, cloudpickle, pandas as pd
FEATURES = {features!r}

@bentoml.service(workers=1)
class Churn:
    def __init__(self) -> None:
        with open({model!r}, "rb") as fh:
            self.model = cloudpickle.load(fh)

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
    def predict(self, instances: list[dict]) -> list[float]:
        frame = pd.DataFrame(instances)[FEATURES]
        return self.model.predict_proba(frame)[:, 1].tolist()
"""


@dataclass
class Result:
    name: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    timeouts: int
    non_2xx: int
    socket_errors: int  # connect, read and write errors


def _path() -> str:
    """PATH with this virtualenv's scripts first (``mlflow models serve`` execs uvicorn)."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(url: str, process: subprocess.Popen[bytes], limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
            if answer.status == 200:
                return
        time.sleep(0.2)  # a benchmark, not a test: polling a server that is starting up
    raise RuntimeError(f"{url} not ready after {limit_s} s")


def _ms(text: str) -> float:
    found = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if found is None:
        raise ValueError(f"cannot read a wrk latency from {text!r}")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def _wrk(url: str, body: str, headers: dict[str, str], concurrency: int, seconds: int) -> dict:
    script = WORK / "wrk.lua"
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(body)}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    threads = min(2, concurrency)
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{seconds}s",
            "--latency",
            "--timeout",
            WRK_TIMEOUT,
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def field(pattern: str) -> str | None:
        found = re.search(pattern, out, re.M)
        return found.group(1) if found else None

    rps = float(field(r"Requests/sec:\s+([\d.]+)") or "nan")
    p50, p99 = (field(rf"^\s+{q}%\s+(\S+)\s*$") for q in (50, 99))
    if p50 is None or p99 is None:
        print(out[-1500:])
    p50 = _ms(p50) if p50 else float("nan")
    p99 = _ms(p99) if p99 else float("nan")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = dict(re.findall(r"(connect|read|write|timeout) (\d+)", out))
    return {
        "rps": rps,
        "p50": p50,
        "p99": p99,
        "timeouts": int(sockets.get("timeout", 0)),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(int(sockets.get(k, 0)) for k in ("connect", "read", "write")),
    }


def _run_server(
    name: str,
    command: list[str],
    ready: str,
    url: str,
    body: str,
    headers: dict[str, str],
    seconds: int,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> list[Result]:
    print(f"- {name}", flush=True)
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, **(env or {}), **THREADS, "PATH": _path()},
    )
    try:
        _ready(ready, process)
        _wrk(url, body, headers, 4, 2)  # warm up
        results = []
        for concurrency in (1, 16):
            m = _wrk(url, body, headers, concurrency, seconds)
            result = Result(
                name,
                concurrency,
                m["rps"],
                m["p50"],
                m["p99"],
                m["timeouts"],
                m["non_2xx"],
                m["socket_errors"],
            )
            results.append(result)
            print(
                f"    c={concurrency:2d}: {m['rps']:7.1f} req/s, p50 {m['p50']:6.2f} ms, "
                f"p99 {m['p99']:7.2f} ms, {_errors(result)}",
                flush=True,
            )
        return results
    finally:
        # BentoML's workers leave the process group: find every descendant first.
        family = _descendants(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


def _errors(r: Result) -> str:
    return f"timeouts {r.timeouts}, non-2xx {r.non_2xx}, socket errors {r.socket_errors}"


def _descendants(root: int) -> list[int]:
    """Every process below ``root``, from /proc (Linux)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def main(seconds: int = 10) -> list[Result]:
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    project = hgb_project("serve", max_iter=200)
    mv = registry.champion(project)
    assert mv is not None
    model_pkl = str(registry.local_copy(project, mv) / "model.pkl")
    features = project.spec.data.features
    source = batch(WORK / "serve-batch.parquet", 100)
    instance = json.loads(pd.read_parquet(source).head(1).to_json(orient="records"))[0]
    one = json.dumps({"instances": [instance]})
    (WORK / "floor_app.py").write_text(FLOOR_APP.format(features=features, model=model_pkl))
    (WORK / "bento_service.py").write_text(BENTO_SERVICE.format(features=features, model=model_pkl))
    service_key = keys.create(open_store(project.db_url), "service")
    auth = {"Authorization": f"Bearer {service_key}"}
    py = sys.executable
    results: list[Result] = []
    port = _port()
    results += _run_server(
        "floor: FastAPI + predict_proba per request",
        [py, "-m", "uvicorn", "floor_app:app", "--port", str(port), "--log-level", "warning"],
        f"http://127.0.0.1:{port}/healthz",
        f"http://127.0.0.1:{port}/v1/predict",
        one,
        {},
        seconds,
        WORK,
    )
    for workers in (1, 2):
        port = _port()
        results += _run_server(
            f"copml serve (durable log), {workers} worker{'s' if workers > 1 else ''}",
            [
                py,
                "-m",
                "copml",
                "serve",
                "--project",
                str(project.root),
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            f"http://127.0.0.1:{port}/readyz",
            f"http://127.0.0.1:{port}/v1/predict",
            one,
            auth,
            seconds,
            WORK,
        )
    port = _port()
    mlflow_body = json.dumps({"dataframe_records": [instance]})
    results += _run_server(
        "mlflow models serve --env-manager local",
        [
            str(Path(py).with_name("mlflow")),
            "models",
            "serve",
            "-m",
            str(Path(model_pkl).parent),
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        f"http://127.0.0.1:{port}/ping",
        f"http://127.0.0.1:{port}/invocations",
        mlflow_body,
        {},
        seconds,
        WORK,
    )
    bento = BENTO_VENV / "bin" / "bentoml"
    if bento.exists():
        port = _port()
        results += _run_server(
            "BentoML, adaptive batching",
            [
                str(bento),
                "serve",
                "bento_service:Churn",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
            ],
            f"http://127.0.0.1:{port}/readyz",
            f"http://127.0.0.1:{port}/predict",
            one,
            {},
            seconds,
            WORK,
        )
    else:
        print(f"- BentoML skipped: {BENTO_VENV} not found (see the docstring)")
    _table(results)
    _targets(results)
    return results


def _table(results: list[Result]) -> None:
    """The figures as the Markdown table of benchmarks/README.md, errors included."""
    print(f"threads: {THREADS}; wrk timeout {WRK_TIMEOUT}")
    print("| server | c | req/s | p50 ms | p99 ms | wrk timeouts | non-2xx | socket errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r.name} | {r.concurrency} | {r.rps:.1f} | {r.p50_ms:.2f} | {r.p99_ms:.1f} | "
            f"{r.timeouts} | {r.non_2xx} | {r.socket_errors} |"
        )


def _targets(results: list[Result]) -> None:
    def get(prefix: str, c: int) -> Result | None:
        return next((r for r in results if r.name.startswith(prefix) and r.concurrency == c), None)

    copml16, copml1 = (
        get("copml serve (durable log), 1 worker", 16),
        get("copml serve (durable log), 1 worker", 1),
    )
    floor16, floor1 = get("floor", 16), get("floor", 1)
    mlflow16, bento16 = get("mlflow", 16), get("BentoML", 16)
    assert copml16 and copml1 and floor16 and floor1
    print("targets at concurrency 16, one worker:")
    print(f"  copml's own errors: {_errors(copml16)}")
    for label, other, factor in (
        ("floor", floor16, 2.0),
        ("MLflow", mlflow16, 2.0),
        ("BentoML", bento16, 2.5),
    ):
        if other is None:
            continue
        failed = other.timeouts + other.non_2xx + other.socket_errors
        if other.rps > 0 and not failed:
            ratio = copml16.rps / other.rps
            state = "met" if ratio >= factor else "not met"
            print(f"  throughput vs {label}: {ratio:.2f}x (target >= {factor}x: {state})")
        elif other.rps == 0:  # nothing completed within the run: no figure to divide by
            print(f"  throughput vs {label}: no verdict, {label} completed no request")
        else:  # a ratio against failed requests would flatter copml: no verdict
            print(f"  throughput vs {label}: no verdict, {label} had errors ({_errors(other)})")
    state = "met" if copml16.p99_ms <= 60 else "not met"
    print(
        f"  p99: copml {copml16.p99_ms:.1f} ms (target <= 60 ms: {state}); "
        f"floor {floor16.p99_ms:.1f} ms"
    )
    gap = copml1.p50_ms - floor1.p50_ms
    state = "met" if gap <= 1.0 else "not met"
    print(
        f"  concurrency 1 p50: copml {copml1.p50_ms:.2f} ms vs floor {floor1.p50_ms:.2f} ms, "
        f"{gap:+.2f} ms (target at most +1 ms: {state})"
    )


if __name__ == "__main__":
    found = main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
    print(json.dumps([r.__dict__ for r in found]))
