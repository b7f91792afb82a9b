"""What scoring in fixed chunks, one thread each, costs (``copml.batch_independence``).

Before: one ``predict_proba`` call for the whole batch (tables) and batches of 256 images at
torch's default threads (the CNN), as copml scored until issue 12. After: ``positive_scores``
(chunks of ``ROWS`` rows) and ``vision.models.predict_proba`` (one image per call). Measured in
CPU seconds (the machine is shared; its wall time says more about the neighbours), the best of
``REPEAT`` runs, for a one-row request and per 1,000 rows of a 20,000-row batch, on the churn
example's logistic pipeline, the HistGradientBoosting pipeline of benchmarks/score.py and the
x-ray CNN on generated 64×64 images. No copml project is built: the models are fitted here.

Run: .venv/bin/python benchmarks/batch_independence.py [REPEAT=3]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from workload import HGB_TRAIN

from copml import batch_independence
from copml.apps.churn.simulation import Population
from copml.apps.xray.vision import models
from copml.apps.xray.vision.images import load_arrays
from copml.apps.xray.vision.synthetic import generate
from copml.evaluation import positive_scores
from copml.scaffold import EXAMPLES

ROWS = 20_000


def best_cpu(run: Callable[[], Any], repeat: int) -> float:
    """The least CPU time of ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def fitted(code: str) -> Any:
    """The pipeline a churn ``train(data, params, seed)`` returns, on 5,000 simulated rows."""
    data = Population(seed=7).history(5000).drop(columns=["customerID"])
    data["Churn"] = (data["Churn"] == "Yes").astype(int)
    space: dict[str, Any] = {}
    exec(compile(code, "train", "exec"), space)  # the example's own module text
    return space["train"](data, {}, 42)


def table(name: str, model: Any, repeat: int) -> dict[str, float]:
    rows = Population(seed=8).history(ROWS).drop(columns=["customerID", "Churn"])
    one = rows.iloc[:1]
    figures = {
        "before_one_row_ms": best_cpu(lambda: model.predict_proba(one), repeat) * 1000,
        "after_one_row_ms": best_cpu(lambda: positive_scores(model, one), repeat) * 1000,
        "before_per_1000_rows_ms": best_cpu(lambda: model.predict_proba(rows), repeat)
        * 1000
        / (ROWS / 1000),
        "after_per_1000_rows_ms": best_cpu(lambda: positive_scores(model, rows), repeat)
        * 1000
        / (ROWS / 1000),
    }
    print(name, {k: round(v, 1) for k, v in figures.items()}, flush=True)
    return figures


def batched_before(model: models.CompactCNN, images: np.ndarray) -> np.ndarray:
    """The CNN's scoring before issue 12: batches of 256 at torch's default threads."""
    x = torch.from_numpy(images.astype(np.float32)[:, None] / 255.0)
    with torch.no_grad():
        return torch.cat([torch.sigmoid(model(x[i : i + 256])) for i in range(0, len(x), 256)])


def cnn(repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        found = generate(Path(tmp), {"normal": 100, "bacteria": 60, "virus": 40}, size=64)
        images = (load_arrays(found, 64) * 255).astype(np.uint8)
    labels = (found.frame["label"] == "PNEUMONIA").to_numpy().astype(int)
    model = models.train_cnn(images, labels, seed=0, epochs=1)
    batch = images[np.arange(1000) % len(images)]
    figures = {
        "before_one_image_ms": best_cpu(lambda: batched_before(model, batch[:1]), repeat) * 1000,
        "after_one_image_ms": best_cpu(lambda: models.predict_proba(model, batch[:1]), repeat)
        * 1000,
        "before_per_1000_images_s": best_cpu(lambda: batched_before(model, batch), repeat),
        "after_per_1000_images_s": best_cpu(lambda: models.predict_proba(model, batch), repeat),
    }
    print("x-ray CNN", {k: round(v, 2) for k, v in figures.items()}, flush=True)
    return figures


def main(repeat: int) -> dict[str, Any]:
    print(f"chunk rows {batch_independence.ROWS}, torch threads {torch.get_num_threads()}")
    return {
        "rows_per_chunk": batch_independence.ROWS,
        "logistic": table(
            "churn logistic", fitted((EXAMPLES["churn"] / "churn.py").read_text()), repeat
        ),
        "hgb": table("HistGradientBoosting", fitted(HGB_TRAIN), repeat),
        "cnn": cnn(repeat),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3), indent=2))
