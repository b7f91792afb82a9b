"""``copml train`` of the x-ray example on the real chest x-rays, timed as a user runs it.

A new project from the example (``copml init --example xray``) with its source pointed at
``../shared/data/chest-xray`` (train/ and val/ by its manifest: val/ is the holdout), then
``copml snapshot`` and ``copml train`` as subprocesses, each timed (wall, and CPU of the
process and its children). The holdout figures come from the JSON ``copml train`` prints.

Targets (issue 16): ``copml train`` at most 4 minutes of wall time on 2 cores, model 1 recall
>= 0.97 at specificity >= 0.87, model 2 (bacteria / virus) accuracy >= 0.72 on val/.

Run: .venv/bin/python benchmarks/xray_train.py [DATA_DIR] [key=value params...]
(params override the example's ``model.params``, for trying e.g. ``epochs=12``)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from copml.scaffold import init

WORK = Path(__file__).parent / ".work"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest-xray"


def _timed(command: list[str], cwd: Path) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def main(data: Path, overrides: dict[str, str]) -> dict[str, float]:
    if not (data / "manifest.csv").is_file():
        sys.exit(f"needs the real x-rays at {data} (see ../shared/data/chest-xray/README)")
    root = WORK / "xray-train"
    shutil.rmtree(root, ignore_errors=True)
    init(root, "xray", generate=False)
    spec_path = root / "copml.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    text = spec_path.read_text().replace("source: data/images", f"source: {data}")
    for key, value in overrides.items():  # an experiment: a param of model.params
        params = spec["model"]["params"]
        text = text.replace(f"{key}: {params[key]}", f"{key}: {value}")
    spec_path.write_text(text)
    params = yaml.safe_load(spec_path.read_text())["model"]["params"]
    copml = [sys.executable, "-m", "copml"]
    snap_wall, snap_cpu, _ = _timed([*copml, "snapshot", "--project", str(root)], root)
    print(f"copml snapshot: {snap_wall:.1f} s wall, {snap_cpu:.1f} s CPU", flush=True)
    load = os.getloadavg()[0]
    wall, cpu, out = _timed([*copml, "train", "--project", str(root), "--json"], root)
    metrics = json.loads(out)["metrics"]
    figures = {
        "snapshot_wall_s": snap_wall,
        "train_wall_s": wall,
        "train_cpu_s": cpu,
        "load_before": load,
        "recall": metrics["recall"],
        "specificity": metrics["specificity"],
        "type_accuracy": metrics["type_accuracy"],
    }
    print(f"params: {params}")
    print(f"copml train: {wall:.1f} s wall ({wall / 60:.2f} min; target <= 4 min), {cpu:.1f} s CPU")
    print(
        f"model 1 on val/: recall {figures['recall']:.3f} (>= 0.97), specificity "
        f"{figures['specificity']:.3f} (>= 0.87); model 2 accuracy "
        f"{figures['type_accuracy']:.3f} (>= 0.72)"
    )
    return figures


if __name__ == "__main__":
    args = sys.argv[1:]
    folder = Path(args.pop(0)) if args and "=" not in args[0] else DATA
    print(json.dumps(main(folder, dict(a.split("=", 1) for a in args))))
