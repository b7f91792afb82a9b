"""Out-of-distribution checks of the x-ray kind on the real images: false alarms on val/, the
pictures that are not x-rays, and the cost per request.

Model 1 is trained quickly (a sample of train/, few epochs: the embedding need not be the
best classifier to describe the training images); the profile is fitted on its fit part and
thresholded on a patient-disjoint holdout at the declared false-alarm rate (1 %), exactly as
``copml train`` does (:func:`copml.apps.xray.vision.distribution.profile`). Then every val/
image and four pictures that are not chest x-rays (a flat grey 12,000 x 12,000 JPEG, a green
PNG, a smooth colour "photograph", an x-ray rotated 90 degrees) go through what the server
does per upload: ``read_upload`` (header first) and ``distribution.unlike``.

Run: .venv/bin/python benchmarks/ood.py [DATA_DIR] [FIT_IMAGES=1500] [EPOCHS=3]
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from copml.apps.xray.vision import distribution, models
from copml.apps.xray.vision.cascade import _split_by_patient
from copml.apps.xray.vision.images import (
    ImageSet,
    load_arrays,
    read_folder,
    read_upload,
    statistics,
)

DATA = (Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data/chest-xray")).resolve()
FIT = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
EPOCHS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
SIZE = 64


def _facts(files: list[Path]) -> pd.DataFrame:
    rows = []
    for f in files:
        u = read_upload(f.read_bytes(), SIZE)
        mean, std = statistics(u.grey[None])
        rows.append((str(f), u.width, u.height, float(mean[0]), float(std[0])))
    return pd.DataFrame(
        rows, columns=["file", "width", "height", "intensity_mean", "intensity_std"]
    )


def _columns(content: bytes, profile: dict) -> dict:
    u = read_upload(content, SIZE, distribution.max_pixels(profile))
    mean, std = statistics(u.grey[None])
    return {"array": [u.grey], "mode": [u.mode], "colour": [u.colour], "width": [u.width],
            "height": [u.height], "intensity_mean": [float(mean[0])],
            "intensity_std": [float(std[0])]}  # fmt: skip


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def main() -> None:
    images = read_folder(DATA)
    frame = images.frame
    train = frame[frame["split"] == "train"].sample(frac=1.0, random_state=0).head(FIT * 5 // 4)
    train = train.reset_index(drop=True)
    held = _split_by_patient(train, 0.2, 0)
    files = [images.root / p for p in train["path"]]
    arrays = load_arrays(ImageSet(train, images.root), SIZE)
    positive = (train["label"] == "PNEUMONIA").to_numpy().astype(np.int64)
    started = time.perf_counter()
    detector = models.train_cnn(arrays[~held], positive[~held], seed=0, epochs=EPOCHS)
    trained_s = time.perf_counter() - started
    facts = _facts(files)

    def arrays_of(paths: list[str]) -> np.ndarray:
        return load_arrays(ImageSet(pd.DataFrame({"path": [Path(p) for p in paths]}), Path("/")))

    started = time.perf_counter()
    profile = distribution.profile(
        detector, arrays_of, facts[~held], facts[held], false_alarm_rate=0.01, seed=0
    )
    profile = distribution.prepared(profile)  # as the x-ray kind loads it
    profiled_s = time.perf_counter() - started
    val = frame[frame["split"] == "val"]
    flagged, costs, reads, why = 0, [], [], {}
    for path in val["path"]:
        content = (images.root / path).read_bytes()
        t = time.perf_counter()
        columns = _columns(content, profile)
        read = time.perf_counter()
        failed = distribution.unlike(profile, columns, detector)[0]
        costs.append((time.perf_counter() - t) * 1000)
        reads.append((read - t) * 1000)
        if failed:
            flagged += 1
            for check in failed:
                why[check.split(" ")[0]] = why.get(check.split(" ")[0], 0) + 1
    rng = np.random.default_rng(7)
    photo = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((320, 240))
    xray = Image.open(images.root / val["path"].iloc[0])
    others = {
        "grey 12000x12000 JPEG": _encoded(Image.new("RGB", (12_000, 12_000), (128,) * 3), "JPEG"),
        "green 256x256 PNG": _encoded(Image.new("RGB", (256, 256), (0, 200, 0)), "PNG"),
        "colour photograph": _encoded(photo, "JPEG"),
        "x-ray rotated 90": _encoded(xray.rotate(90, expand=True), "JPEG"),
    }
    print(f"model 1: {len(train) - held.sum()} fit images, {EPOCHS} epochs, {trained_s:.0f} s")
    print(
        f"profile: {profiled_s:.1f} s, embedding threshold {profile['embedding']['threshold']:.1f}"
    )
    print(f"val: {flagged} of {len(val)} flagged ({flagged / len(val):.2%}); checks: {why}")
    print(f"cost per image (read + checks): median {np.median(costs):.2f} ms, "
          f"p99 {np.percentile(costs, 99):.2f} ms; of it reading (header, decode, colour, "
          f"statistics) median {np.median(reads):.2f} ms; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    for name, content in others.items():
        t = time.perf_counter()
        failed = distribution.unlike(profile, _columns(content, profile), detector)[0]
        ms = (time.perf_counter() - t) * 1000
        print(f"{name}: {'FLAGGED' if failed else 'not flagged'} ({ms:.0f} ms) {list(failed)}")


if __name__ == "__main__":
    main()
