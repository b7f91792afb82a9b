"""``copml operate --once`` on a project with 1,000,000 logged predictions and 24 windows.

Target (issue 4): policy evaluation (recover, evaluate every policy over the stored windows,
store the evaluations, create and run the actions) under 2 s. The policies here alert (to
the log) so that what is timed is the evaluation machinery, not a retraining. Setup
(scoring, feedback, 23 earlier windows) is not timed. The whole CLI pass, which also
computes the current window over the million predictions, is reported beside it.

Run: .venv/bin/python benchmarks/operate.py [ROWS]
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
from copml.monitor.window import Window, monitor, store
from copml.operate.runner import operate_once
from copml.project import load_project
from copml.score import score

POLICIES = """
policies:
  - name: decay
    when: accuracy < 0.75
    do: [alert]
  - name: escalate
    when: accuracy <= 0.70 for 3 windows and churn_rate >= 0.10
    do: [alert, review]
  - name: drift-or-cost
    when: drift > 0.3 or cost > 500 for 2 windows
    do: [alert]
"""
END = datetime(2026, 4, 1, tzinfo=UTC)


def main(rows: int) -> dict[str, float]:
    print(f"operate benchmark: {rows:,} logged predictions with feedback, 24 windows")
    project = hgb_project("operate")
    spec = project.root / "copml.yaml"
    text = spec.read_text()
    spec.write_text(
        text[: text.index("policies:")] + POLICIES + "\n" + text[text.index("costs:") :]
    )
    project = load_project(project.root)
    start = time.perf_counter()
    out = WORK / "operate-scores.parquet"
    score(
        project,
        batch(WORK / f"batch-{rows}.parquet", rows),
        out,
        at=datetime(2026, 3, 1, 6, tzinfo=UTC),
    )
    scored = pd.read_parquet(out)
    truth = WORK / "operate-truth.parquet"
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "prediction_id": scored["prediction_id"],
            "actual": np.where(rng.random(rows) < 0.2, "Yes", "No"),
        }
    ).to_parquet(truth)
    load(project, truth, at=datetime(2026, 3, 31, tzinfo=UTC))
    for i in range(23):  # two earlier years of monthly windows
        end = (pd.Timestamp(END) - pd.DateOffset(months=23 - i)).to_pydatetime()
        begin = (pd.Timestamp(end) - pd.DateOffset(months=1)).to_pydatetime()
        figures = {"accuracy": 0.8 - 0.004 * i, "churn_rate": 0.12, "drift": 0.0, "cost": 200.0}
        store(project, Window(begin, end, "1", rows, rows, figures, {}))
    window = monitor(project, end=END)
    assert window.n_predictions == rows
    print(
        f"  setup: {time.perf_counter() - start:.1f} s; current window accuracy "
        f"{window.metrics['accuracy']:.3f}"
    )
    start = time.perf_counter()
    result = operate_once(project, at=END)
    evaluation = time.perf_counter() - start
    print(
        f"  policy evaluation (in process): {evaluation:.3f} s (target < 2 s): "
        + ", ".join(f"{e.policy} {e.outcome}" for e in result.evaluations)
        + f"; {len(result.actions)} action(s)"
    )
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "copml",
            "operate",
            "--once",
            "--project",
            str(project.root),
            "--at",
            "2026-04-01T00:00:00",
            "--json",
        ],
        check=True,
        capture_output=True,
    )
    cli = time.perf_counter() - start
    print(f"  copml operate --once (CLI, fresh process, recomputes the 1M-row window): {cli:.2f} s")
    return {"rows": rows, "windows": 24, "evaluation_s": evaluation, "operate_cli_s": cli}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)))
