"""The CLI as users run it: a real ``copml`` process, exit codes and messages."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from copml.project import Project
from copml.store import events, open_store, predictions

COPML = [sys.executable, "-m", "copml"]


def run(*args: str, cwd: Path, check_exit: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("COPML_HOME", "COPML_DB_URL", "MLFLOW_TRACKING_URI")
    }
    done = subprocess.run(
        [*COPML, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )
    if check_exit is not None:
        assert done.returncode == check_exit, done.stdout + done.stderr
    return done


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr


def test_help_lists_the_tour(tmp_path: Path) -> None:
    out = run("--help", cwd=tmp_path).stdout
    for command in (
        "init",
        "validate",
        "snapshot",
        "train",
        "score",
        "feedback",
        "monitor",
        "status",
        "demo",
        "models",
    ):
        assert command in out


def test_validate_and_schema(fresh_churn: Project) -> None:
    assert "valid: telco-churn" in run("validate", cwd=fresh_churn.root).stdout
    schema = json.loads(run("validate", "--schema", cwd=fresh_churn.root).stdout)
    assert schema["title"] == "copml.yaml"


def test_invalid_spec_exits_1_with_field_and_line(fresh_churn: Project) -> None:
    spec = fresh_churn.root / "copml.yaml"
    spec.write_text(spec.read_text().replace("  seed: 42", "  seed: 42\n  colour: blue"))
    done = run("validate", cwd=fresh_churn.root, check_exit=1)
    line = next(i for i, t in enumerate(spec.read_text().splitlines(), 1) if "colour" in t)
    assert f"model.colour (line {line}): unknown key" in done.stderr
    _no_traceback(done)
    run("snapshot", cwd=fresh_churn.root, check_exit=1)  # every command refuses a bad spec
    assert not (fresh_churn.root / ".copml").exists()


def test_usage_error_exits_2(tmp_path: Path) -> None:
    done = run(
        "train", "--param", "novalue", "--project", str(tmp_path), cwd=tmp_path, check_exit=2
    )
    assert "key=value" in done.stderr


def test_bad_data_exits_1_and_changes_nothing(fresh_churn: Project) -> None:
    data = fresh_churn.root / "data" / "customers.csv"
    data.write_text(data.read_text().replace("Month-to-month", "Monthly", 1))
    done = run("snapshot", cwd=fresh_churn.root, check_exit=1)
    assert "Contract: 1 values outside the declared categories (unseen: 'Monthly')" in done.stderr
    _no_traceback(done)
    assert (
        not list((fresh_churn.root / ".copml" / "snapshots").glob("*"))
        if (fresh_churn.root / ".copml" / "snapshots").exists()
        else True
    )


def test_train_that_does_not_import_exits_1(fresh_churn: Project) -> None:
    run("snapshot", cwd=fresh_churn.root)
    (fresh_churn.root / "churn.py").write_text("def train(:\n")
    done = run("train", cwd=fresh_churn.root, check_exit=1)
    assert (
        "cannot import train function 'churn:train'" in done.stderr and "SyntaxError" in done.stderr
    )
    _no_traceback(done)
    engine = open_store(fresh_churn.db_url)
    with engine.connect() as conn:
        kinds = [r[0] for r in conn.execute(select(events.c.kind))]
    assert kinds == ["snapshot.created"]


def test_score_before_any_model_exits_1(fresh_churn: Project) -> None:
    done = run(
        "score", "data/customers.csv", "--output", "out.csv", cwd=fresh_churn.root, check_exit=1
    )
    assert "no champion model yet" in done.stderr
    _no_traceback(done)
    assert not (fresh_churn.root / "out.csv").exists()


def test_tour_from_the_readme(churn: Project) -> None:
    """snapshot → train → score → feedback → monitor → status, as a user types them."""
    from batches import month

    root = churn.root
    snap = json.loads(run("snapshot", "--json", cwd=root).stdout)
    assert snap["new"] is False  # the fixture froze the same data already
    batch, outcome = month(root / "in")
    scored = json.loads(run("score", str(batch), "-o", "out/scores.csv", "--json", cwd=root).stdout)
    assert scored["rows"] == 500 and scored["model_version"] == "1"
    outcome.to_csv(root / "truth.csv", index=False)
    loaded = json.loads(run("feedback", "truth.csv", "--json", cwd=root).stdout)
    assert loaded["loaded"] == 500
    again = json.loads(run("feedback", "truth.csv", "--json", cwd=root).stdout)
    assert again["loaded"] == 0 and again["unchanged"] == 500
    window = json.loads(run("monitor", "--json", cwd=root).stdout)
    assert window["n_labelled"] == 500 and 0 <= window["metrics"]["accuracy"] <= 1
    drift = window["drift"]  # each feature's drift as plain JSON fields, NaN as null
    assert set(drift) == set(churn.spec.data.features)
    assert set(drift["tenure"]) == {"psi", "p_value", "test", "drifted"}
    assert isinstance(drift["tenure"]["drifted"], bool)
    assert "drift" in run("monitor", cwd=root).stdout  # the table, drifted features named
    status = json.loads(run("status", "--json", cwd=root).stdout)
    assert status["champion"] == "1"
    by_name = {r["name"]: r for r in status["requirements"]}
    assert by_name["accuracy"]["value"] == pytest.approx(window["metrics"]["accuracy"])
    assert "accuracy" in run("status", cwd=root).stdout
    listing = json.loads(run("models", "list", "--json", cwd=root).stdout)
    assert listing[0]["state"] == "champion"
    with open_store(churn.db_url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(predictions)).scalar() == 500


def test_unknown_feedback_exits_1(churn: Project) -> None:
    path = churn.root / "truth.csv"
    path.write_text("customerID,Churn\n0000-NOONE,Yes\n")
    done = run("feedback", "truth.csv", cwd=churn.root, check_exit=1)
    assert "1 of 1 rows name no known prediction" in done.stderr
    _no_traceback(done)
