"""``copml monitor`` over a window of 1,000,000 predictions that all have ground truth.

Target (issue 2): under 10 s. Setup (scoring the batch, loading the feedback) is not timed.
Run: .venv/bin/python benchmarks/monitor.py [ROWS]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from workload import WORK, batch, hgb_project

from copml.feedback import load
from copml.monitor.window import monitor
from copml.score import score

SCORED_AT = datetime(2026, 3, 1, 6, tzinfo=UTC)


def main(rows: int) -> dict[str, float]:
    print(f"monitor benchmark: one window of {rows:,} predictions with feedback")
    project = hgb_project("monitor")
    source = batch(WORK / f"batch-{rows}.parquet", rows)
    out = WORK / "monitor-scores.parquet"
    start = time.perf_counter()
    score(project, source, out, at=SCORED_AT)
    scored = pd.read_parquet(out)
    truth = WORK / "monitor-truth.parquet"
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "prediction_id": scored["prediction_id"],
            "actual": np.where(rng.random(rows) < 0.2, "Yes", "No"),
        }
    ).to_parquet(truth)
    loaded = load(project, truth, at=datetime(2026, 3, 31, tzinfo=UTC))
    assert loaded.loaded == rows
    print(f"  setup (score + feedback): {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    window = monitor(project, end=datetime(2026, 4, 1, tzinfo=UTC))
    elapsed = time.perf_counter() - start
    assert window.n_predictions == window.n_labelled == rows
    print(
        f"  monitor (in process): {elapsed:.2f} s; accuracy "
        f"{window.metrics['accuracy']:.3f}, drift share {window.metrics['drift']:.2f}"
    )
    start = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "copml",
        "monitor",
        "--project",
        str(project.root),
        "--at",
        "2026-04-01T00:00:00",
        "--json",
    ]
    subprocess.run(command, check=True, capture_output=True)
    cli = time.perf_counter() - start
    print(f"  copml monitor (CLI: a fresh process, imports included): {cli:.2f} s (target < 10 s)")
    return {"rows": rows, "monitor_in_process_s": elapsed, "monitor_cli_s": cli}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)))
