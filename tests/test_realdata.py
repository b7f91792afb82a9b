"""The examples on the real files from ../shared/data (skip when absent): churn on the IBM
Telco file, the x-ray model 1 on the Kermany chest x-rays at the declared figures."""

from pathlib import Path

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


@pytest.mark.realdata
def test_real_xrays_model_1_keeps_recall_095_at_specificity_070() -> None:
    """The x-ray tests train on generated images with loosened minimums (recall 0.5); this
    holds model 1 to the example's declared figures on the real images: trained on train/ for
    2 epochs, its threshold chosen for recall 0.98 on a patient-disjoint calibration part of
    train/, judged on val/ (other patients). About 90 s of CPU on one thread (decoding 4,871
    images 12 s, an epoch 33 s); it saw recall 0.979 at specificity 0.789."""
    from copml.apps.xray.vision import models
    from copml.apps.xray.vision.cascade import train_detector
    from copml.apps.xray.vision.images import load_arrays, read_folder

    found = read_folder(shared_file("chest-xray", "manifest.csv").parent)
    arrays = load_arrays(found, models.SIZE)
    frame = found.frame
    train, val = (frame["split"] == "train").to_numpy(), (frame["split"] == "val").to_numpy()
    pneumonia = (frame["label"] == "PNEUMONIA").to_numpy()
    assert (train.sum(), val.sum()) == (4067, 804)
    assert not set(frame.loc[train, "group"]) & set(frame.loc[val, "group"])
    detector = train_detector(
        frame[train].reset_index(drop=True),
        arrays[train],
        pneumonia[train],
        seed=42,
        recall_target=0.98,
        epochs=2,
        threads=1,  # one core of two: a second thread only spins while the other test runs
    )
    scores = models.predict_proba(detector.model, arrays[val])
    figures = models.metrics(pneumonia[val], scores, detector.threshold)
    assert figures["recall"] >= 0.95 and figures["specificity"] >= 0.70, figures
