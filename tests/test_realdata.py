"""The examples on the real files from ../shared/data (skip when absent): churn on the IBM
Telco file, the x-ray model 1 on the Kermany chest x-rays at the declared figures."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import shared_file
from copml import snapshots
from copml.project import load_project
from copml.scaffold import init
from copml.store import open_store
from copml.train import train


def test_real_telco_data_trains_to_auc_080(tmp_path: Path) -> None:
    csv = shared_file("telco-churn", "WA_Fn-UseC_-Telco-Customer-Churn.csv")
    root = tmp_path / "telco"
    init(root, "churn")
    spec = root / "copml.yaml"
    spec.write_text(spec.read_text().replace("source: data/customers.csv", f"source: {csv}"))
    project = load_project(root)
    project.ensure_home()
    snap = snapshots.create(
        open_store(project.db_url), project.spec.data, root=root, directory=project.snapshots_dir
    )
    assert snap.n_rows == 7043
    frame = snap.load()
    assert frame["TotalCharges"].isna().sum() == 11  # the 11 blanks, declared as na_values
    assert (frame.loc[frame["TotalCharges"].isna(), "tenure"] == 0).all()
    result = train(project)
    assert result.metrics["roc_auc"] >= 0.80, result.metrics


@dataclass(frozen=True)
class _RealXrays:
    found: Any  # the image set of ../shared/data/chest-xray
    arrays: np.ndarray
    detector: Any  # model 1 trained on train/ for 2 epochs


@pytest.fixture(scope="module")
def real_xrays() -> _RealXrays:
    """Model 1 trained once on the real train/ images for the tests below: 2 epochs, its
    threshold chosen for recall 0.98 on a patient-disjoint calibration part of train/.
    About 90 s of CPU on one thread (decoding 4,871 images 12 s, an epoch 33 s)."""
    from copml.apps.xray.vision import models
    from copml.apps.xray.vision.cascade import train_detector
    from copml.apps.xray.vision.images import load_arrays, read_folder

    found = read_folder(shared_file("chest-xray", "manifest.csv").parent)
    arrays = load_arrays(found, models.SIZE)
    frame = found.frame
    train = (frame["split"] == "train").to_numpy()
    detector = train_detector(
        frame[train].reset_index(drop=True),
        arrays[train],
        (frame["label"] == "PNEUMONIA").to_numpy()[train],
        seed=42,
        recall_target=0.98,
        epochs=2,
        threads=1,  # one core of two: a second thread only spins while the other test runs
    )
    return _RealXrays(found, arrays, detector)


@pytest.mark.realdata
def test_real_xrays_model_1_keeps_recall_095_at_specificity_070(real_xrays: _RealXrays) -> None:
    """The x-ray tests train on generated images with loosened minimums (recall 0.5); this
    holds model 1 to the example's declared figures on the real images, judged on val/
    (other patients than train/); it saw recall 0.979 at specificity 0.789."""
    from copml.apps.xray.vision import models

    frame, detector = real_xrays.found.frame, real_xrays.detector
    train, val = (frame["split"] == "train").to_numpy(), (frame["split"] == "val").to_numpy()
    pneumonia = (frame["label"] == "PNEUMONIA").to_numpy()
    assert (train.sum(), val.sum()) == (4067, 804)
    assert not set(frame.loc[train, "group"]) & set(frame.loc[val, "group"])
    scores = models.predict_proba(detector.model, real_xrays.arrays[val])
    figures = models.metrics(pneumonia[val], scores, detector.threshold)
    assert figures["recall"] >= 0.95 and figures["specificity"] >= 0.70, figures


@pytest.mark.realdata
def test_at_most_2_percent_of_real_val_xrays_are_out_of_distribution(
    real_xrays: _RealXrays,
) -> None:
    """Issue 17 item 6 on the real images: model 1 trained as above (2 epochs), the profile
    fitted on its fit part and thresholded on its calibration part at 1 % false alarms, as
    ``copml train`` does; then every val/ image through what the server does per upload
    (header first, then the checks): at most 2 % flagged, and a green PNG, a flat grey
    12,000-pixel JPEG and an x-ray on its side all flagged. benchmarks/ood.py measures the
    same with its cost per image."""
    import io

    import pandas as pd
    from PIL import Image

    from copml.apps.xray.vision import distribution, models
    from copml.apps.xray.vision.images import ImageSet, load_arrays, read_upload, statistics

    found, arrays, detector = real_xrays.found, real_xrays.arrays, real_xrays.detector
    frame = found.frame
    train = (frame["split"] == "train").to_numpy()
    fit_frame = frame[train].reset_index(drop=True)
    mean, std = statistics(arrays[train])
    facts = pd.DataFrame(
        {
            "file": [str(found.root / p) for p in fit_frame["path"]],
            "width": fit_frame["width"],
            "height": fit_frame["height"],
            "intensity_mean": mean,
            "intensity_std": std,
        }
    )

    def arrays_of(files: list[str]) -> np.ndarray:
        listed = ImageSet(pd.DataFrame({"path": [Path(f) for f in files]}), Path("/"))
        return load_arrays(listed, models.SIZE)

    held = detector.calibration
    profile = distribution.prepared(
        distribution.profile(
            detector.model, arrays_of, facts[~held], facts[held], false_alarm_rate=0.01, seed=42
        )
    )

    def failed(content: bytes) -> tuple[str, ...]:
        upload = read_upload(content, models.SIZE, distribution.max_pixels(profile))
        m, s = statistics(upload.grey[None])
        columns = {"array": [upload.grey], "mode": [upload.mode], "colour": [upload.colour],
                   "width": [upload.width], "height": [upload.height],
                   "intensity_mean": [float(m[0])], "intensity_std": [float(s[0])]}  # fmt: skip
        return distribution.unlike(profile, columns, detector.model)[0]

    val = [found.root / p for p in frame.loc[~train, "path"]]
    flagged = [p.name for p in val if failed(p.read_bytes())]
    assert len(flagged) <= 0.02 * len(val), (len(flagged), flagged[:20])

    def encoded(image: Image.Image, fmt: str) -> bytes:
        out = io.BytesIO()
        image.save(out, fmt)
        return out.getvalue()

    with Image.open(val[0]) as xray:
        rotated = encoded(xray.rotate(90, expand=True), "JPEG")
    assert failed(encoded(Image.new("RGB", (256, 256), (0, 200, 0)), "PNG"))
    assert failed(encoded(Image.new("RGB", (12_000, 12_000), (128,) * 3), "JPEG"))
    assert failed(rotated)
