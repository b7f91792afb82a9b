import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from sqlalchemy import func, select

from copml import events, registry, snapshots
from copml.errors import NotFoundError, UserCodeError
from copml.evaluation import split_holdout
from copml.kinds import kind_for
from copml.project import Project, load_project
from copml.store import open_store
from copml.train import TrainResult, train
from projects import freeze


def test_champion_version_has_lineage(trained_churn: Path) -> None:
    project = load_project(trained_churn)
    mv = registry.champion(project)
    assert mv is not None and mv.version == "1" and mv.state == "champion"
    snap = snapshots.latest(open_store(project.db_url))
    assert mv.snapshot_id == snap.id
    assert mv.tags["copml.seed"] == "42" and json.loads(mv.tags["copml.params"]) == {"C": 0.5}
    assert mv.tags["copml.git_dirty"] in ("true", "false")
    # the artifact hash recorded at registration is the hash of what is stored
    assert registry.directory_sha256(registry.local_copy(project, mv)) == mv.artifact_sha256


def test_run_logs_everything_needed_to_reproduce(trained_churn: Path, tmp_path: Path) -> None:
    project = load_project(trained_churn)
    mv = registry.champion(project)
    assert mv is not None
    run = registry.client(project).get_run(mv.run_id)
    assert run.data.params["seed"] == "42" and run.data.params["param.C"] == "0.5"
    assert run.data.params["snapshot_id"] == mv.snapshot_id
    assert {"copml.git_commit", "copml.git_dirty", "copml.artifact_sha256"} <= set(run.data.tags)
    for metric in ("accuracy", "precision", "recall", "f1", "roc_auc", "tp", "fp", "fn", "tn"):
        assert f"holdout_{metric}" in run.data.metrics
    assert run.data.metrics["holdout_roc_auc"] > 0.8
    files = {f.path for f in registry.client(project).list_artifacts(mv.run_id, "holdout")}
    assert files == {"holdout/confusion_matrix.json", "holdout/confusion_matrix.png"}
    model = mlflow.models.Model.load(str(registry.local_copy(project, mv)))
    assert model.signature is not None and "sklearn" in model.flavors
    logged = registry.download_artifact(project, mv.run_id, "environment/packages.json", tmp_path)
    packages = json.loads(logged.read_text())
    assert "scikit-learn" in packages and "python" in packages
    history = events.history(open_store(project.db_url), subject=f"model:telco-churn/{mv.version}")
    assert [e["kind"] for e in history] == ["model.promoted", "model.registered"]


def test_holdout_split_is_deterministic(trained_churn: Path) -> None:
    project = load_project(trained_churn)
    frame = kind_for(project.spec).training_frame(
        project, snapshots.latest(open_store(project.db_url))
    )
    a = split_holdout(frame, "Churn", 0.2, 42)
    assert np.array_equal(a, split_holdout(frame, "Churn", 0.2, 42))
    assert not np.array_equal(a, split_holdout(frame, "Churn", 0.2, 43))
    assert abs(a.mean() - 0.2) < 0.01
    assert abs(frame.loc[a, "Churn"].mean() - frame["Churn"].mean()) < 0.01  # stratified


def test_same_seed_same_model(churn: Project) -> None:
    first = registry.champion(churn)
    assert first is not None
    again = train(churn)
    assert again.version == "2" and not again.champion  # a champion exists already
    before = registry.client(churn).get_run(first.run_id).data.metrics
    assert again.metrics["roc_auc"] == pytest.approx(before["holdout_roc_auc"], abs=1e-12)
    assert again.metrics["accuracy"] == pytest.approx(before["holdout_accuracy"], abs=1e-12)
    assert registry.champion(churn).version == "1"  # type: ignore[union-attr]


def test_a_version_below_the_minimums_is_not_champion(fresh_churn: Project) -> None:
    freeze(fresh_churn)
    result = train(fresh_churn, params={"C": 1e-6})  # all but constant: misses the minimums
    assert not result.meets_minimums and result.failures and not result.champion
    assert registry.champion(fresh_churn) is None
    assert registry.get(fresh_churn, result.version).state == "registered"


def _state(project: Project) -> tuple[int, int]:
    engine = open_store(project.db_url)
    from copml.store import events as events_table

    with engine.connect() as conn:
        n_events = conn.execute(select(func.count()).select_from(events_table)).scalar()
    return len(registry.versions(project)), n_events


def test_train_that_does_not_import(churn: Project) -> None:
    (churn.root / "churn.py").write_text("import not_a_real_module\n")
    before = _state(churn)
    with pytest.raises(
        UserCodeError, match=r"cannot import train function 'churn:train'.*not_a_real"
    ):
        train(churn)
    assert _state(churn) == before


def test_train_that_raises(churn: Project) -> None:
    (churn.root / "broken.py").write_text(
        "def train(data, params, seed):\n    raise ValueError('bad C')\n"
    )
    spec = churn.spec.model_copy(
        update={"model": churn.spec.model.model_copy(update={"train": "broken:train"})}
    )
    broken = Project(churn.root, spec)
    before = _state(broken)
    with pytest.raises(UserCodeError, match=r"train\(\) failed: ValueError: bad C"):
        train(broken)
    assert _state(broken) == before
    runs = registry.client(broken).search_runs(
        [registry.experiment_id(broken)], filter_string="status = 'FAILED'"
    )
    assert len(runs) == 1  # the failed attempt is visible in MLflow, not registered


def test_train_without_snapshot(fresh_churn: Project) -> None:
    with pytest.raises(NotFoundError, match=r"run 'copml snapshot' first"):
        train(fresh_churn)


def test_local_copies_made_at_once_by_several_loaders(churn: Project) -> None:
    """Server workers starting together all fetch the model: every one gets a good copy."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    mv = registry.champion(churn)
    assert mv is not None
    shutil.rmtree(churn.models_dir, ignore_errors=True)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: registry.local_copy(churn, mv), range(8)))
    assert len(set(paths)) == 1
    assert registry.directory_sha256(paths[0]) == mv.artifact_sha256
    assert sorted(p.name for p in churn.models_dir.iterdir()) == [mv.version]  # no leftovers


def test_each_project_keeps_its_own_registry_in_one_process(
    fresh_churn: Project, tmp_path: Path
) -> None:
    """MLflow's URI setters export environment variables; a second project must not
    inherit the first one's store through them (a test session, the dashboard)."""
    import os

    from copml.scaffold import init

    assert registry.champion(fresh_churn) is None  # touches the first project's store
    init(tmp_path / "second", "churn")
    second = load_project(tmp_path / "second")
    assert second.tracking_uri != fresh_churn.tracking_uri
    freeze(second)
    assert train(second).champion
    assert registry.champion(second) is not None
    assert registry.versions(fresh_churn) == []
    assert "MLFLOW_TRACKING_URI" not in os.environ


_GATED = """import threading

from churn import train as _train

reached = threading.Event()
go = threading.Event()


def train(data, params, seed):
    reached.set()
    if not go.wait(120):
        raise TimeoutError("the test never let this training go on")
    return _train(data, params, seed)
"""


def test_two_projects_train_at_once_each_into_its_own_store(
    churn: Project, trained_churn: Path, tmp_path: Path
) -> None:
    """One project's training is held inside its run while another project trains from
    start to end in the same process: each run and version lands in its own store."""
    import threading

    from copml.usercode import load_function

    (churn.root / "gated.py").write_text(_GATED)
    model = churn.spec.model.model_copy(update={"train": "gated:train"})
    first = Project(churn.root, churn.spec.model_copy(update={"model": model}))
    shutil.copytree(trained_churn, tmp_path / "other")
    second = load_project(tmp_path / "other")
    assert first.tracking_uri != second.tracking_uri
    gate = load_function(first.root, "gated:train", "train function").__globals__
    outcome: dict[str, object] = {}

    def train_first() -> None:
        try:
            outcome["result"] = train(first)
        except Exception as exc:
            outcome["error"] = exc

    held = threading.Thread(target=train_first)
    held.start()
    try:
        assert gate["reached"].wait(120), "the first training never reached train()"
        other = train(second)  # the whole of it, while the first run is open
    finally:
        gate["go"].set()
        held.join(180)
    assert not held.is_alive()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert isinstance(result, TrainResult)
    for project, mine, theirs in ((first, result, other), (second, other, result)):
        c = registry.client(project)
        run = c.get_run(mine.run_id)
        assert run.info.status == "FINISHED" and "holdout_roc_auc" in run.data.metrics
        assert registry.get(project, mine.version).run_id == mine.run_id
        ids = {r.info.run_id for r in c.search_runs([registry.experiment_id(project)])}
        assert mine.run_id in ids and theirs.run_id not in ids
