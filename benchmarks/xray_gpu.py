"""Optional: model 1 (the pneumonia CNN) trained on CPU and on CUDA, same data, same seed.

Run on a machine with an NVIDIA GPU (never needed by tests):
    PYTHONPATH=src python3 benchmarks/xray_gpu.py [--images 4000] [--epochs 8]
Generated chest-like images (no data needs to travel); prints seconds per epoch on each
device, the speed-up, and recall/specificity on a held-out part so that both devices are
seen to learn the same task. Writes the figures as JSON to $OUT or the current folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS

import numpy as np
import torch

from copml.apps.xray.vision import models
from copml.apps.xray.vision.images import load_arrays
from copml.apps.xray.vision.synthetic import generate


def _run(device: str, x: np.ndarray, y: np.ndarray, epochs: int, threads: int) -> dict:
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    model = models.train_cnn(x, y, seed=0, epochs=epochs, device=device, threads=threads)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"device": device, "seconds": seconds, "per_epoch": seconds / epochs, "model": model}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    third = args.images // 3
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        found = generate(
            Path(tmp), {"normal": third, "bacteria": third, "virus": args.images - 2 * third},
            size=128, seed=0,
        )  # fmt: skip
        arrays = load_arrays(found)
        print(f"{len(found)} images generated and loaded in {time.perf_counter() - started:.1f} s")
    labels = (found.frame["label"] == "PNEUMONIA").to_numpy().astype(np.int64)
    rng = np.random.default_rng(0)
    test = rng.random(len(labels)) < 0.2
    results = {}
    for device in ("cpu", "cuda"):
        if device == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: CPU only")
            continue
        run = _run(device, arrays[~test], labels[~test], args.epochs, args.cpu_threads)
        scores = models.predict_proba(run.pop("model"), arrays[test])
        figures = models.metrics(labels[test], scores, 0.5)
        run.update(recall=figures["recall"], specificity=figures["specificity"])
        run["roc_auc"] = figures["roc_auc"]
        results[device] = run
        print(
            f"{device}: {run['seconds']:.1f} s for {args.epochs} epochs "
            f"({run['per_epoch']:.2f} s/epoch), held-out recall {run['recall']:.3f}, "
            f"specificity {run['specificity']:.3f}, ROC AUC {run['roc_auc']:.3f}"
        )
    if "cuda" in results:
        speedup = results["cpu"]["seconds"] / results["cuda"]["seconds"]
        results["speedup"] = speedup
        results["gpu"] = torch.cuda.get_device_name(0)
        print(f"speed-up on {results['gpu']}: {speedup:.1f}x vs {args.cpu_threads} CPU threads")
    results["cpu_threads"] = args.cpu_threads
    results["images"] = int((~test).sum())
    out = Path(os.environ.get("OUT", "."))
    (out / "xray_gpu.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
