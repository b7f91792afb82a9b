"""Regulation: the audit record of one decision, its replay, reproduction of a version from
its lineage, SHAP explanations that add up, fairness per window usable in policies."""

from __future__ import annotations

import math
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from batches import month
from copml import audit, explain, registry
from copml.errors import CopmlError, NotFoundError
from copml.feedback import load
from copml.monitor.window import monitor
from copml.operate import lifecycle
from copml.operate.runner import operate_once
from copml.project import Project, load_project
from copml.reproduce import reproduce
from copml.score import score

SCORED = datetime(2026, 3, 1, 6, tzinfo=UTC)


def _scored(project: Project, tmp_path: Path, at: datetime | None = SCORED) -> pd.DataFrame:
    batch, outcome = month(tmp_path / "in")
    out = tmp_path / "out.csv"
    score(project, batch, out, at=at)
    truth = tmp_path / "truth.csv"
    outcome.to_csv(truth, index=False)
    load(project, truth, at=None if at is None else datetime(2026, 3, 31, tzinfo=UTC))
    return pd.read_csv(out)


def test_the_audit_record_has_everything_and_replay_is_identical(
    churn: Project, tmp_path: Path
) -> None:
    scored = _scored(churn, tmp_path, at=None)  # now: after the champion was promoted
    pid = scored["prediction_id"].iloc[7]
    record = audit.record(churn, pid)
    assert record["model_version"] == "1" and record["champion_at_the_time"] == "1"
    assert record["score"] == pytest.approx(scored["score"].iloc[7], abs=1e-12)
    assert record["input"]["customerID"] != scored["customerID"].iloc[7]  # PII redacted
    assert record["input"]["Contract"] in ("Month-to-month", "One year", "Two year")
    mv = registry.get(churn, "1")
    lineage = record["lineage"]
    assert lineage["run_id"] == mv.run_id and lineage["training_snapshot"]["id"] == mv.snapshot_id
    assert lineage["seed"] == "42" and lineage["artifact_sha256"] == mv.artifact_sha256
    # Text as the registry's tags write it, whether the store or the tags answered.
    assert lineage["params"] == mv.tags["copml.params"]
    assert lineage["git_commit"] == mv.tags["copml.git_commit"]
    assert lineage["git_dirty"] == (mv.tags["copml.git_dirty"] == "true")
    kinds = [e["kind"] for e in record["events"]]
    assert kinds[:2] == ["model.registered", "model.promoted"] and "batch.scored" in kinds
    assert record["explanation"]["values"].keys() == set(churn.spec.data.features)
    for i in (0, 7, 123):
        replayed = audit.replay(churn, scored["prediction_id"].iloc[i])
        assert replayed.identical and replayed.replayed_score == replayed.stored_score


def test_replay_refuses_a_tampered_artifact(churn: Project, tmp_path: Path) -> None:
    scored = _scored(churn, tmp_path)
    mv = registry.get(churn, "1")
    registry._load.cache_clear()  # a fresh process: nothing loaded yet
    model_file = registry.local_copy(churn, mv) / "model.pkl"
    model_file.write_bytes(model_file.read_bytes() + b"tampered")
    with pytest.raises(CopmlError, match="sha256"):
        audit.replay(churn, scored["prediction_id"].iloc[0])


def test_shap_values_add_up_to_the_models_output(churn: Project, tmp_path: Path) -> None:
    scored = _scored(churn, tmp_path)
    for i in (0, 42, 300):
        found = explain.explain_prediction(churn, scored["prediction_id"].iloc[i])
        assert found.base_value + sum(found.values.values()) == pytest.approx(
            found.output, abs=1e-9
        )
        assert found.output == pytest.approx(explain.logit(scored["score"].iloc[i]), abs=1e-9)
    cached = churn.home / "explanations" / f"{scored['prediction_id'].iloc[0]}.json"
    assert cached.exists()  # asked again, it is read back, not recomputed
    client = registry.client(churn)
    artifacts = [a.path for a in client.list_artifacts(registry.get(churn, "1").run_id, "explain")]
    assert artifacts == ["explain/importance.json", "explain/importance.png"]


def test_reproduce_passes_unchanged_and_fails_when_the_code_changed(churn: Project) -> None:
    same = reproduce(churn, "1")
    assert same.reproduced and same.max_prediction_difference <= 1e-9
    assert same.warnings and "not versioned" in same.warnings[0]
    code = churn.root / "churn.py"
    code.write_text(code.read_text().replace('strategy="median"', 'strategy="mean"'))
    changed = reproduce(churn, "1")
    assert not changed.reproduced
    assert changed.max_prediction_difference > 1e-9 or changed.metric_differences


def test_reproduce_checks_out_the_recorded_commit(churn: Project) -> None:
    """In a git repository the recorded commit's code is used, not the working tree's."""
    from copml.train import train

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(churn.root), *args], check=True, capture_output=True)

    (churn.root / ".gitignore").write_text(".copml/\n")
    git("init", "-q")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "v2 code")
    trained = train(churn)
    assert registry.get(churn, trained.version).tags["copml.git_dirty"] == "false"
    code = churn.root / "churn.py"
    code.write_text(code.read_text().replace('strategy="median"', 'strategy="mean"'))  # uncommitted
    result = reproduce(churn, trained.version)
    assert result.reproduced, result
    assert result.code.startswith("a clean checkout of commit")


def test_fairness_per_window_and_in_policies(churn: Project, tmp_path: Path) -> None:
    _scored(churn, tmp_path)
    window = monitor(churn, end=datetime(2026, 4, 1, tzinfo=UTC))
    m = window.metrics
    for column in ("gender", "SeniorCitizen"):
        assert 0 <= m[f"demographic_parity_difference.{column}"] <= 1
        assert not math.isnan(m[f"equalized_odds_difference.{column}"])
    rates = [m["selection_rate.gender=Female"], m["selection_rate.gender=Male"]]
    assert m["demographic_parity_difference.gender"] == pytest.approx(max(rates) - min(rates))
    # Two alerting policies on either side of the window's figure: one fires, one holds.
    gap = m["demographic_parity_difference.gender"]
    below, above = math.floor(gap * 1e4) / 1e4, math.floor(gap * 1e4) / 1e4 + 1e-4
    spec = churn.root / "copml.yaml"
    text = spec.read_text()
    start = text.index("policies:")
    spec.write_text(
        text[:start]
        + "policies:\n"
        + f"  - name: fair-fires\n    when: demographic_parity_difference.gender >= {below}\n"
        + "    do: [alert]\n"
        + f"  - name: fair-holds\n    when: demographic_parity_difference.gender > {above}\n"
        + "    do: [alert]\n\n"
        + text[text.index("costs:") :]
    )
    project = load_project(churn.root)
    result = operate_once(project, at=datetime(2026, 4, 1, tzinfo=UTC))
    verdicts = {e.policy: (e.outcome, e.acted) for e in result.evaluations}
    assert verdicts == {"fair-fires": (True, True), "fair-holds": (False, False)}
    fired = next(e for e in result.evaluations if e.policy == "fair-fires")
    assert fired.values == {"demographic_parity_difference.gender": [pytest.approx(gap)]}
    assert [(a["kind"], a["state"]) for a in result.actions] == [("alert", "succeeded")]


def _logged(project: Project) -> int:
    """How many predictions the store holds."""
    from sqlalchemy import func, select

    from copml.store import open_store, predictions

    with open_store(project.db_url).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(predictions)).scalar_one())


def test_purge_deletes_past_retention_and_keeps_versions_on_hold(
    churn: Project, tmp_path: Path
) -> None:
    from copml import events
    from copml.retention import hold, purge
    from copml.store import open_store
    from copml.train import train

    _scored(churn, tmp_path)  # March 2026, by v1
    train(churn)
    batch, _ = month(tmp_path / "in2", seed=12)
    score(churn, batch, tmp_path / "later.csv", at=datetime(2027, 3, 1, tzinfo=UTC))
    lifecycle.promote(churn, "2", actor="user:ops", reason="newer", gate_first=True)
    score(churn, batch, tmp_path / "v2.csv", at=datetime(2026, 2, 1, tzinfo=UTC))  # old, by v2
    hold(churn, "2", actor="user:dpo", reason="case 17")
    assert _logged(churn) == 1500
    done = purge(churn, actor="user:dpo", at=datetime(2027, 5, 1, tzinfo=UTC))  # 400 days back
    assert (done.predictions, done.batches, done.kept_on_hold) == (500, 1, 500)
    assert _logged(churn) == 1000
    with pytest.raises(NotFoundError):  # the purged decision is gone
        audit.record(churn, pd.read_csv(tmp_path / "out.csv")["prediction_id"].iloc[0])
    assert audit.record(churn, pd.read_csv(tmp_path / "v2.csv")["prediction_id"].iloc[0])
    purged = events.history(open_store(churn.db_url), kind="predictions.purged")[0]
    assert purged["evidence"]["predictions"] == 500 and purged["evidence"]["held_versions"] == ["2"]
    hold(churn, "2", actor="user:dpo", reason="case closed", release=True)
    assert purge(churn, actor="user:dpo", at=datetime(2027, 5, 1, tzinfo=UTC)).predictions == 500


def test_lineage_events_for_train_and_score(churn: Project, tmp_path: Path) -> None:
    from copml import lineage

    _scored(churn, tmp_path)
    found = lineage.read_events(churn)
    by_job = {e["job"]["name"]: e for e in found}
    assert {"train", "score"} <= set(by_job)
    scored = by_job["score"]
    assert scored["eventType"] == "COMPLETE" and scored["job"]["namespace"] == "copml.telco-churn"
    assert any(d["name"].startswith("snapshot/") for d in scored["outputs"])
    assert any(d["name"] == "model/telco-churn/1" for d in scored["inputs"])
    assert by_job["train"]["outputs"][0]["name"] == "model/telco-churn/1"


def test_linear_explanations_equal_shaps_linear_explainer(churn: Project) -> None:
    import numpy as np
    import shap

    from copml import snapshots
    from copml.kinds import kind_for
    from copml.store import open_store

    latest = snapshots.latest(open_store(churn.db_url))
    snap_frame = kind_for(churn.spec).training_frame(churn, latest)
    features = churn.spec.data.features
    model = registry.load(churn, registry.get(churn, "1"))
    # shap keeps at most 100 background rows (its Independent masker): give it exactly 100.
    background, rows = snap_frame[features].head(100), snap_frame[features].tail(50)
    ours = explain._Explainer(model, background, features)
    mine, base, _ = ours.explain(rows)
    reference = shap.LinearExplainer(model[-1], ours._transform(background))
    theirs = np.asarray(reference.shap_values(ours._transform(rows)))
    grouped = pd.DataFrame(theirs).T.groupby(np.array(ours.groups), sort=False).sum().T
    assert np.allclose(mine, grouped.reindex(columns=features).to_numpy(), atol=1e-12)
    assert base == pytest.approx(float(np.ravel(reference.expected_value)[-1]), abs=1e-12)
