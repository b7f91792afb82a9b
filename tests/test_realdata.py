"""The churn example on the real IBM Telco file from ../shared/data (skips when absent)."""

from pathlib import Path

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
