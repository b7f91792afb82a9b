"""Batch scoring of 10,000,000 generated rows, every prediction logged, on each engine with
2 workers (Spark ``local[2]``, a local Ray of 2 CPUs) against today's single-process
``copml score`` and bare pandas, in the same run, on the same Parquet file and the same
fitted pipeline (issue 14, "Engines").

Every contender is a real process (``copml score …`` as a user runs it; bare pandas as a
script), timed from start to exit; its peak resident memory is the process's and that of
the children it waited for (``wait4``). The engines' scores are checked bit-equal to the
single-process path's, row by row. All contenders log into the same SQLite store, in the
order listed.

Run: .venv/bin/python benchmarks/score_cluster.py [ROWS=10000000]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from workload import WORK, batch, hgb_project

BATCH_ROWS = 100_000  # bare pandas scores in chunks of this size, as copml does


def bare(project_root: str, source: str, output: str) -> None:
    """Read, predict_proba in chunks, write: no validation, no log, no snapshot."""
    from copml import registry
    from copml.project import load_project

    project = load_project(project_root)
    model = registry.load(project, registry.champion(project))
    features = project.spec.data.features
    frame = pq.read_table(source).to_pandas()
    scores = [
        model.predict_proba(frame.iloc[i : i + BATCH_ROWS][features])[:, 1]
        for i in range(0, len(frame), BATCH_ROWS)
    ]
    out = pa.table({"customerID": frame["customerID"], "score": np.concatenate(scores)})
    pq.write_table(out, output)


def _run(name: str, args: list[str]) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed:\n{err.decode()[-3000:]}\n{out.decode()[-2000:]}")
    figures = {"wall_s": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2)}
    print(f"  {name:<14} {figures['wall_s']:>7.1f} s  peak RSS {figures['peak_rss_gb']:.2f} GB")
    return figures


def _scores(path: Path) -> np.ndarray:
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    return np.concatenate([pq.read_table(f, columns=["score"])["score"].to_numpy() for f in files])


def prepare(rows: int) -> None:
    """The trained project and the generated batch (cached), in a process of their own:
    the parent stays small, so the peak RSS that its children inherit at fork is too."""
    project = hgb_project("score_cluster")
    source = batch(WORK / f"batch-{rows}-cluster.parquet", rows, seed=7)
    print(json.dumps([str(project.root), str(source)]))


def main(rows: int) -> dict[str, object]:
    print(f"distributed scoring benchmark: {rows:,} rows, every prediction logged")
    made = subprocess.run(
        [sys.executable, __file__, "--prepare", str(rows)], capture_output=True, check=True
    )
    root, source = json.loads(made.stdout.splitlines()[-1])
    copml = [sys.executable, "-m", "copml", "score", source, "--project", root]
    outputs = {
        "bare pandas": WORK / "cluster-bare.parquet",
        "copml local": WORK / "cluster-local.parquet",
        "copml spark": WORK / "cluster-spark",
        "copml ray": WORK / "cluster-ray",
    }
    for path in outputs.values():
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    commands = {
        "bare pandas": [sys.executable, __file__, "--bare", root, source],
        "copml local": [*copml, "-o", str(outputs["copml local"])],
        "copml spark": [*copml, "-o", str(outputs["copml spark"]), "--engine", "spark"],
        "copml ray": [*copml, "-o", str(outputs["copml ray"]), "--engine", "ray"],
    }
    commands["bare pandas"].append(str(outputs["bare pandas"]))
    figures: dict[str, object] = {"rows": rows}
    for name, args in commands.items():
        figures[name] = _run(name, args)
    single = _scores(outputs["copml local"])
    for name in ("copml spark", "copml ray"):
        same = bool(np.array_equal(_scores(outputs[name]), single))
        print(f"  {name}: every score bit-equal to copml local's: {same}")
        assert same, name
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare"]:
        bare(*sys.argv[2:5])
    elif sys.argv[1:2] == ["--prepare"]:
        prepare(int(sys.argv[2]))
    else:
        print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000)))
