"""``copml models import``: a model logged by plain MLflow in a team's own store becomes a
copml version that is gated, promoted, served, audited and replayed (issue 13.5)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from copml import registry, snapshots
from copml.errors import CopmlError
from copml.kinds import kind_for
from copml.model_import import import_model
from copml.project import Project, load_project
from copml.scaffold import init
from copml.store import open_store
from projects import freeze
from store_state import assert_unchanged, capture
from test_cli import run
from test_serve import REALTIME, Server, _instances, start

# The team's own code: plain MLflow, no copml. Its model is trained on the features and
# the 0/1 target, as copml's binary models are, and logged the way MLflow's docs show.
_TEAM_SCRIPT = """
import json, sys
import mlflow, pandas as pd
sys.path.insert(0, sys.argv[2])
from churn import train

data = pd.read_parquet(sys.argv[1])
mlflow.set_tracking_uri(sys.argv[3])
with mlflow.start_run() as run:
    model = train(data, {"C": 0.5}, 7)
    features = data.drop(columns=["Churn"])
    mlflow.sklearn.log_model(
        model, name="model", registered_model_name="team-churn",
        input_example=features.head(3), pip_requirements=["scikit-learn"],
        skops_trusted_types=["numpy.dtype"],  # MLflow 3's skops format asks for it
    )
mlflow.MlflowClient().set_registered_model_alias("team-churn", "prod", "1")
# Another team's habit: the target left as its labels ("Yes"/"No"), not 0/1.
labelled = data.assign(Churn=data["Churn"].map({1: "Yes", 0: "No"}))
with mlflow.start_run():
    mlflow.sklearn.log_model(
        train(labelled, {"C": 0.5}, 7), name="model", registered_model_name="team-labels",
        pip_requirements=["scikit-learn"], skops_trusted_types=["numpy.dtype"],
    )
print(json.dumps({"run_id": run.info.run_id}))
"""


def _snapshotted(root: Path, serving: str | None = None) -> Project:
    """A new churn project with one snapshot and no model yet."""
    init(root, "churn")
    if serving:
        spec = root / "copml.yaml"
        spec.write_text(
            spec.read_text().replace('serving: {mode: batch, schedule: "0 6 1 * *"}', serving)
        )
    project = load_project(root)
    freeze(project)
    return project


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A separate MLflow store (SQLite, artifacts beside it) holding the team's model."""
    folder = tmp_path_factory.mktemp("team")
    donor = _snapshotted(folder / "donor")
    data = folder / "train.parquet"
    snap = snapshots.latest(open_store(donor.db_url))
    kind_for(donor.spec).training_frame(donor, snap).to_parquet(data)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "-c", _TEAM_SCRIPT, str(data), str(donor.root), uri],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"tracking_uri": uri, "run_id": json.loads(done.stdout.splitlines()[-1])["run_id"]}


@pytest.fixture
def server_of() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for srv in started:
        srv.kill()


def test_an_imported_model_is_gated_promoted_served_audited_and_replayed(
    team: dict[str, str], tmp_path: Path, server_of: list[Server]
) -> None:
    project = _snapshotted(tmp_path / "churn", REALTIME)
    root, source = project.root, team["tracking_uri"]
    imported = json.loads(
        run(
            "models",
            "import",
            "models:/team-churn@prod",
            "--tracking-uri",
            source,
            "--json",
            cwd=root,
        ).stdout
    )
    assert imported["version"] == "1" and imported["source_run_id"] == team["run_id"]
    latest = snapshots.latest(open_store(project.db_url))
    assert imported["reference_snapshot_id"] == latest.id

    listing = json.loads(run("models", "list", "--json", cwd=root).stdout)
    (v1,) = listing
    assert v1["lineage"] == "imported" and v1["source_uri"] == "models:/team-churn@prod"
    assert v1["source_run_id"] == team["run_id"] and v1["snapshot_id"] == ""
    assert {"sklearn", "python_function"} <= set(v1["flavors"])
    assert "tenure" in v1["signature"]["inputs"]
    mv = registry.get(project, "1")
    local = registry.local_copy(project, mv)  # refuses a copy that does not match
    assert v1["artifact_sha256"] == registry.directory_sha256(local) == imported["artifact_sha256"]
    assert (local / "MLmodel").is_file()
    # The table is as wide as the terminal (80 columns under CI): the URI may be cut short
    # there; the JSON above carries it whole.
    assert "imported from" in run("models", "list", cwd=root).stdout

    gated = json.loads(run("models", "validate", "1", "--json", cwd=root).stdout)
    assert gated["passed"] and gated["snapshot_id"] == latest.id and gated["rows"] > 0
    assert set(project.spec.effectiveness.thresholds) <= set(gated["candidate_metrics"])
    run("models", "promote", "1", "--reason", "the team's model, gated", cwd=root)
    assert registry.champion(project).version == "1"
    shown = json.loads(run("models", "show", "1", "--json", cwd=root).stdout)
    assert shown["tags"]["copml.lineage"] == "imported" and shown["metrics"] == {}
    # Its card says where it came from and what it lacks, and shows the data it was
    # checked on instead of a training snapshot it does not have.
    run("models", "show", "1", "--card", "-o", str(tmp_path / "card"), cwd=root)
    card = (tmp_path / "card" / "model-card-v1.md").read_text()
    assert f"imported from models:/team-churn@prod (source run {team['run_id']}" in card
    assert "no recorded snapshot and code" in card and "Seed" not in card
    assert f"| Snapshot | {latest.id} |" in card and f"| Rows | {latest.n_rows} |" in card
    html = (tmp_path / "card" / "model-card-v1.html").read_text()
    assert "imported from <code>models:/team-churn@prod</code>" in html

    srv = start(project)
    server_of.append(srv)
    answer = httpx.post(
        f"{srv.url}/v1/predict",
        json={"instances": _instances(project, 4)},
        headers=srv.headers("service"),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == "1"
    last = answer.json()["predictions"][-1]  # one of a batch, replayed alone
    audited = json.loads(run("audit", last["prediction_id"], "--replay", "--json", cwd=root).stdout)
    assert audited["lineage"]["lineage"] == "imported"
    assert audited["lineage"]["source_uri"] == "models:/team-churn@prod"
    assert audited["lineage"]["artifact_sha256"] == imported["artifact_sha256"]
    assert audited["replay"]["identical"] and audited["score"] == last["score"]
    # explained against the snapshot it was checked on (it has no training snapshot)
    assert audited["explanation"]["values"].keys() == set(project.spec.data.features)

    before = capture(project)
    refused = run("reproduce", "1", cwd=root, check_exit=1)
    assert "Traceback" not in refused.stdout + refused.stderr
    assert "imported from models:/team-churn@prod" in refused.stderr
    assert "no recorded snapshot and code" in refused.stderr
    assert_unchanged(before, project)


def test_a_run_uri_and_a_version_uri_import_the_same_artifact_and_a_retrain_faces_it(
    team: dict[str, str], tmp_path: Path
) -> None:
    from copml.operate import lifecycle
    from copml.train import train

    project = _snapshotted(tmp_path / "churn")
    source = team["tracking_uri"]
    by_run = import_model(project, f"runs:/{team['run_id']}/model", tracking_uri=source)
    by_version = import_model(project, "models:/team-churn/1", tracking_uri=source)
    assert (by_run.version, by_version.version) == ("1", "2")
    assert by_run.artifact_sha256 == by_version.artifact_sha256
    assert by_run.source_run_id == by_version.source_run_id == team["run_id"]
    assert [v.lineage for v in registry.versions(project)] == ["imported", "imported"]
    lineage = registry.recorded(project, "1")
    assert lineage.imported and lineage.source_run_id == team["run_id"] and not lineage.seed
    assert lineage.snapshot_id == "" and "sklearn" in lineage.flavors
    assert lineage.source_uri == f"runs:/{team['run_id']}/model"
    latest = snapshots.latest(open_store(project.db_url))
    assert lineage.reference_snapshot_id == latest.id
    assert registry.get(project, "1").tagged_lineage == lineage  # the tags say the same

    # A retrain runs the spec's train() as usual; the gate measures the imported champion
    # on the new version's holdout rows.
    lifecycle.promote(project, "1", actor="user:team", reason="imported", gate_first=True)
    retrained = train(project)
    assert retrained.version == "3" and not retrained.champion
    report = lifecycle.gate(project, "3")
    assert report.champion == "1" and report.metric in report.champion_metrics
    assert registry.get(project, "3").lineage == "trained"


def _tracking_uri(option: list[str]) -> str | None:
    return option[1] if option else None


_BAD = [
    ("s3://bucket/model", "team", "expected models:/NAME/VERSION"),
    ("models:/team-churn/99", "team", "not found"),
    ("models:/team-churn@nosuch", "team", "not found"),
    ("runs:/{run_id}/elsewhere", "team", "has no model at 'elsewhere'"),
    ("models:/team-labels/1", "team", "its classes are ['No', 'Yes']"),
    ("models:/team-churn/1", "absent", "no MLflow tracking store"),
    ("models:/team-churn/1", "project", "no MLflow tracking store"),  # not created yet
]


def test_a_bad_uri_exits_1_naming_it_and_changes_nothing(
    team: dict[str, str], tmp_path: Path
) -> None:
    project = _snapshotted(tmp_path / "churn")
    absent = tmp_path / "absent" / "mlflow.db"
    option = {
        "team": ["--tracking-uri", team["tracking_uri"]],
        "absent": ["--tracking-uri", f"sqlite:///{absent}"],
        "project": [],  # the project's own store
    }
    before = capture(project)
    for i, (uri, store, says) in enumerate(_BAD):
        uri = uri.format(run_id=team["run_id"])
        if i in (0, len(_BAD) - 1):  # the command line: exit 1 and one clear message
            done = run("models", "import", uri, *option[store], cwd=project.root, check_exit=1)
            assert "Traceback" not in done.stdout + done.stderr
            message = " ".join(done.stderr.split())
        else:  # the same refusal, in process (the CLI prints a CopmlError as above)
            with pytest.raises(CopmlError) as refused:
                import_model(project, uri, tracking_uri=_tracking_uri(option[store]))
            message = " ".join(str(refused.value).split())
        assert uri in message and says in message, message
        assert_unchanged(before, project)
    assert not absent.parent.exists()
    assert not (project.home / "mlflow.db").exists()
