"""Serving throughput by task: a 10-class and a regression model against a binary one.

The three projects read the same data (scikit-learn's handwritten digits: 1,797 rows of 64
pixel features) with the same kind of model, so that what differs is copml's work for the
task, not the model's cost: the binary one predicts "is it a 0" with a logistic regression,
the multiclass one the digit among 10 classes with the same (multinomial) logistic
regression, the regression one the digit's value with a ridge regression, each behind a
``StandardScaler``. Each is served by ``copml serve`` (one worker, durable log, the same
thread settings) and loaded with ``wrk`` sending one-instance requests, at concurrency 1
and 16 (``serve.py``'s load and settings).

Target (issue 13): the multiclass and the regression model at concurrency 16 >= 0.9x the
binary model's throughput.

Run: .venv/bin/python benchmarks/tasks.py [SECONDS=10]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
from serve import Result, _port, _run_server
from workload import WORK

from copml import keys, snapshots
from copml.project import load_project
from copml.store import open_store
from copml.train import train

TRAIN = """
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def train(data, params, seed):
    features = data.drop(columns=["digit"])
    model = Ridge() if params["task"] == "regression" else LogisticRegression(max_iter=300)
    return make_pipeline(StandardScaler(), model).fit(features, data["digit"])
"""

TARGETS = {
    "binary": "{type: category, categories: ['0', other]}",
    "multiclass": "{type: category, categories: [" + ", ".join(f"'{d}'" for d in range(10)) + "]}",
    "regression": "{type: float}",
}
THRESHOLDS = {"binary": "accuracy: {min: 0.5}", "multiclass": "accuracy: {min: 0.5}"}


def _digits() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    frame.columns = [c.replace("pixel_", "p") for c in frame.columns]
    frame.insert(0, "image", [f"d{i:05d}" for i in range(len(frame))])
    return frame


def _project(task: str, digits: pd.DataFrame) -> Path:
    """A served project of ``task`` over the digits, trained, its first version champion."""
    root = WORK / f"tasks-{task}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    frame = digits.copy()
    if task == "binary":
        frame["digit"] = frame["target"].map(lambda d: "0" if d == 0 else "other")
    elif task == "multiclass":
        frame["digit"] = frame["target"].astype(str)
    else:
        frame["digit"] = frame["target"].astype(float)
    frame.drop(columns=["target"]).to_csv(root / "data" / "digits.csv", index=False)
    pixels = [c for c in frame.columns if c.startswith("p")]
    columns = "\n".join(f"    {c}: {{type: float}}" for c in pixels)
    positive = "  positive: '0'\n" if task == "binary" else ""
    (root / "digits_model.py").write_text(TRAIN)
    (root / "copml.yaml").write_text(
        f"""project: digits-{task}
objective: which digit a scanned image shows ({task})
impact: low
owners: {{data_science: ds@example.com, data_engineering: de@example.com, ml_ops: ops@example.com}}
data:
  source: data/digits.csv
  id: image
  target: digit
{positive}  columns:
    image: {{type: string}}
    digit: {TARGETS[task]}
{columns}
model:
  task: {task}
  train: digits_model:train
  params: {{task: {task}}}
effectiveness:
  window: 1 month
  {THRESHOLDS.get(task, "r2: {min: 0.1}")}
serving: {{mode: realtime}}
"""
    )
    project = load_project(root)
    project.ensure_home()
    engine = open_store(project.db_url)
    snapshots.create(engine, project.spec.data, root=root, directory=project.snapshots_dir)
    result = train(project)
    assert result.champion, result.failures
    return root


def main(seconds: int = 10) -> dict[str, list[Result]]:
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    digits = _digits()
    instance = json.loads(digits.drop(columns=["target"]).head(1).to_json(orient="records"))[0]
    instance["image"] = "d-bench"
    body = json.dumps({"instances": [instance]})
    found: dict[str, list[Result]] = {}
    for task in TARGETS:
        root = _project(task, digits)
        project = load_project(root)
        auth = {"Authorization": f"Bearer {keys.create(open_store(project.db_url), 'service')}"}
        port = _port()
        found[task] = _run_server(
            f"copml serve, {task} (1 worker, durable log)",
            [sys.executable, "-m", "copml", "serve", "--project", str(root), "--port", str(port)],
            f"http://127.0.0.1:{port}/readyz",
            f"http://127.0.0.1:{port}/v1/predict",
            body,
            auth,
            seconds,
            WORK,
        )
    _report(found)
    return found


def _report(found: dict[str, list[Result]]) -> None:
    print("\n| task | c | req/s | p50 ms | p99 ms | vs binary |")
    print("|---|---|---|---|---|---|")
    binary = {r.concurrency: r.rps for r in found["binary"]}
    for task, results in found.items():
        for r in results:
            ratio = r.rps / binary[r.concurrency]
            print(
                f"| {task} | {r.concurrency} | {r.rps:.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
                f"| {ratio:.2f}x |"
            )
    for task in ("multiclass", "regression"):
        at16 = next(r.rps for r in found[task] if r.concurrency == 16) / binary[16]
        verdict = "met" if at16 >= 0.9 else "NOT met"
        print(f"target {task} >= 0.9x binary at c=16: {at16:.2f}x ({verdict})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
