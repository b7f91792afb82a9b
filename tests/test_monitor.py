import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

from batches import month, month_with_truth
from copml.apps.churn.simulation import AFTER_SHIFT, Population, as_source_csv
from copml.model_card import build_card, fmt, render_markdown
from copml.monitor.drift import (
    FeatureDrift,
    categorical_drift,
    drift_share,
    feature_drift,
    numeric_drift,
    psi,
)
from copml.monitor.status import requirements
from copml.monitor.window import history, monitor
from copml.profiles import profile
from copml.project import Project
from copml.score import score

END = datetime(2026, 4, 1, tzinfo=UTC)


def test_psi_is_zero_for_the_same_shares_and_grows_with_shift() -> None:
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == pytest.approx(0.0)
    assert psi([0.2, 0.3, 0.5], [0.5, 0.3, 0.2]) > 0.2


def test_numeric_and_categorical_drift() -> None:
    rng = np.random.default_rng(0)
    ref = profile(
        pd.DataFrame({"x": rng.normal(0, 1, 5000), "c": rng.choice(list("ab"), 5000)}),
        {"x": "numeric", "c": "categorical"},
    )
    same = numeric_drift(ref["x"], pd.Series(rng.normal(0, 1, 2000)))
    moved = numeric_drift(ref["x"], pd.Series(rng.normal(1, 1, 2000)))
    assert same.psi < 0.05 and same.p_value > 0.01
    assert moved.psi > 0.2 and moved.p_value < 1e-6
    shifted = categorical_drift(
        ref["c"], pd.Series(rng.choice(list("abz"), 2000, p=[0.2, 0.2, 0.6]))
    )
    assert shifted.psi > 0.2 and shifted.p_value < 1e-6
    frame = pd.DataFrame({"x": rng.normal(1, 1, 2000), "c": rng.choice(list("ab"), 2000)})
    drift = feature_drift(ref, frame, ["x", "c"], 0.2)
    assert drift["x"].drifted and not drift["c"].drifted
    assert drift_share(drift) == 0.5


def test_a_stored_drift_without_data_reads_back_as_nan_not_none() -> None:
    """A window stores NaN as null (JSON has no NaN); reading it back gives NaN again, so
    a figure is a float wherever a window is read."""
    found = FeatureDrift.stored({"psi": None, "p_value": None, "test": "ks", "drifted": False})
    assert math.isnan(found.psi) and math.isnan(found.p_value) and not found.drifted
    assert math.isnan(drift_share({"x": found}))  # no feature with data: nothing to share


def test_window_metrics_match_an_independent_computation(churn: Project, tmp_path: Path) -> None:
    joined = month_with_truth(churn, tmp_path)
    window = monitor(churn, end=END)
    actual = joined["Churn"].eq("Yes").astype(int)
    predicted = joined["label"].eq("Yes").astype(int)
    m = window.metrics
    assert m["accuracy"] == pytest.approx(accuracy_score(actual, predicted))
    assert m["recall"] == pytest.approx(recall_score(actual, predicted))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(actual, joined["score"]))
    assert m["churn_rate"] == pytest.approx(actual.mean())  # the team's KPI function
    assert (window.n_predictions, window.n_labelled, window.model_version) == (500, 500, "1")
    assert window.start == datetime(2026, 3, 1, tzinfo=UTC)
    assert m["drift"] < 0.2 and set(window.drift) == set(churn.spec.data.features)
    # The score's own drift, against the holdout profile the registration recorded.
    assert math.isfinite(m["drift.prediction"]) and m["drift.prediction"] >= 0
    stored = history(churn)
    assert len(stored) == 1 and stored[0].metrics["accuracy"] == pytest.approx(m["accuracy"])
    monitor(churn, end=END)  # recomputing replaces the window
    assert len(history(churn)) == 1


def test_market_shift_is_seen_as_drift(churn: Project, tmp_path: Path) -> None:
    population = Population(seed=5, size=800)
    batch = tmp_path / "shifted.csv"
    as_source_csv(population.new_customers(800, AFTER_SHIFT)).to_csv(batch, index=False)
    score(churn, batch, tmp_path / "out.csv", at=datetime(2026, 3, 2, tzinfo=UTC))
    window = monitor(churn, end=END)
    assert window.drift["tenure"].drifted  # new customers only: tenure 0
    stored = history(churn)[-1].drift  # read back as the same typed records
    assert stored == window.drift and isinstance(stored["tenure"], FeatureDrift)
    assert window.metrics["drift.tenure"] > 0.2 and window.metrics["drift"] > 0
    assert math.isnan(window.metrics["accuracy"])  # no ground truth yet: unknown
    # The model card reads the stored drift back and names the drifted feature.
    card = " ".join(render_markdown(build_card(churn, "1")).split())  # lines may wrap
    shown = fmt(window.drift["tenure"].psi)
    assert (
        f"Feature tenure has drifted in the window ending 2026-04-01 00:00 UTC (PSI {shown},"
        in card
    )


def test_empty_window_is_unknown_not_failed(churn: Project) -> None:
    window = monitor(churn, end=datetime(2020, 1, 1, tzinfo=UTC))
    assert window.n_predictions == 0 and math.isnan(window.metrics["churn_rate"])
    states = {r.name: r.state for r in requirements(churn.spec, window)}
    # Nothing was scored: every effectiveness figure and KPI is unknown; only the cost is
    # known (the declared fixed cost of a month, under the budget).
    assert states.pop("cost") == "met"
    assert set(states.values()) == {"unknown"}


def _month_judged(
    project: Project, tmp_path: Path, start: datetime, truth: Callable[[pd.Series], pd.Series]
) -> None:
    """Score a month's batch on its first day; load ``truth(predicted labels)`` as outcomes."""
    from copml.feedback import load

    batch, _ = month(tmp_path / f"in-{start:%m}", seed=start.month)
    out = tmp_path / f"scores-{start:%m}.csv"
    score(project, batch, out, at=start.replace(hour=6))
    scored = pd.read_csv(out)
    outcomes = tmp_path / f"truth-{start:%m}.csv"
    pd.DataFrame(
        {"prediction_id": scored["prediction_id"], "actual": truth(scored["label"])}
    ).to_csv(outcomes, index=False)
    load(project, outcomes, at=start.replace(day=28))


def test_status_met_not_met_unknown(churn: Project, tmp_path: Path) -> None:
    """Outcomes built to decide each state: every prediction right (accuracy 1: met), every
    one wrong (accuracy 0: not met), nobody churned (rate 0: met), everybody (1: not met)."""
    flipped = {"Yes": "No", "No": "Yes"}
    _month_judged(churn, tmp_path, datetime(2026, 2, 1, tzinfo=UTC), lambda labels: labels)
    _month_judged(churn, tmp_path, datetime(2026, 3, 1, tzinfo=UTC), lambda x: x.map(flipped))
    _month_judged(
        churn, tmp_path, datetime(2026, 4, 1, tzinfo=UTC), lambda x: x.map(lambda _: "No")
    )
    _month_judged(
        churn, tmp_path, datetime(2026, 5, 1, tzinfo=UTC), lambda x: x.map(lambda _: "Yes")
    )
    states = {}
    for end in (datetime(2026, m, 1, tzinfo=UTC) for m in (3, 4, 5, 6)):
        found = {r.name: r for r in requirements(churn.spec, monitor(churn, end=end))}
        states[end.month - 1] = (
            (found["accuracy"].value, found["accuracy"].state),
            (found["churn_rate"].value, found["churn_rate"].state),
        )
    assert states[2][0] == (1.0, "met") and states[3][0] == (0.0, "not met")
    assert states[4][1] == (0.0, "met") and states[5][1] == (1.0, "not met")
    assert found["churn_rate"].expected == "<= 0.08" and found["accuracy"].expected == ">= 0.75"
    window = monitor(churn, end=END)  # March again: the window for the cost below
    found = {r.name: r for r in requirements(churn.spec, window)}
    # The fixed cost of the month (200 a month, the window is March: 31 days), the
    # scoring's CPU time at 0.05 an hour and 4.00 per review (none in batch without a band).
    cost = found["cost"]
    fixed = 200 * 31 / (365.25 / 12)
    assert fixed < cost.value < fixed + 0.05 and cost.state == "met"
    assert requirements(churn.spec, None)[0].state == "unknown"


def test_the_loop_on_each_store(
    churn: Project, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """score → feedback → monitor with the store on SQLite and on a real PostgreSQL."""
    monkeypatch.setenv("COPML_DB_URL", db_url)
    from copml import snapshots
    from copml.store import open_store

    engine = open_store(churn.db_url)
    assert churn.db_url == db_url
    # A new store that never saw the registration: the same data freezes to the same id,
    # and the champion's lineage comes from the registry's tags, so drift still has its
    # reference.
    snapshots.create(engine, churn.spec.data, root=churn.root, directory=churn.snapshots_dir)
    joined = month_with_truth(churn, tmp_path)
    window = monitor(churn, end=END)
    actual = joined["Churn"].eq("Yes").astype(int)
    assert window.n_labelled == 500
    assert window.metrics["accuracy"] == pytest.approx(
        accuracy_score(actual, joined["label"].eq("Yes"))
    )
    assert set(window.drift) == set(churn.spec.data.features)
    assert history(churn)[-1].metrics["churn_rate"] == pytest.approx(actual.mean())


def test_availability_from_heartbeat_gaps(engine) -> None:
    from datetime import timedelta

    from copml.monitor.window import availability
    from copml.store import heartbeats

    start = datetime(2026, 5, 1, tzinfo=UTC)
    assert math.isnan(availability(engine, start, start + timedelta(hours=1)))
    beats = [start + timedelta(seconds=10 * i) for i in range(100)]
    beats = [b for b in beats if not timedelta(seconds=300) <= b - start < timedelta(seconds=400)]
    with engine.begin() as conn:
        for at in beats:
            conn.execute(heartbeats.insert().values(at=at, source="server", ok=True, detail="10"))
    up = availability(engine, start, start + timedelta(hours=1))
    # 990 s covered by beats, one gap of 110 s of which 100 s count as down time
    assert up == pytest.approx(1 - 100 / 990)
