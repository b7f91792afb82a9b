"""Windows per arm (issue 15.3): each arm of a rollout gets the task's figures under its
name, the shadow's agreement with the answers is known before the truth, and policies act on
the live comparison (promote, canary, abort). Real store, real MLflow registry, real batch
scoring and feedback."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from copml import events, prediction_log, registry, rollout
from copml.metrics import classification_metrics
from copml.monitor.window import compute, monitor
from copml.operate import lifecycle
from copml.operate.runner import operate_once
from copml.project import Project
from copml.store import open_store
from test_operate import _spec
from test_rollout import _challenger

MARCH, APRIL = datetime(2026, 3, 1, 6, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)


def _shadowed_month(project: Project, tmp_path: Path) -> tuple[str, pd.DataFrame]:
    """v2 in shadow over a scored March whose truth landed: (v2, the truth by customer)."""
    from batches import month_with_truth

    version = _challenger(project)
    lifecycle.shadow(project, version, actor="user:ops", reason="watch it on a month")
    return version, month_with_truth(project, tmp_path)


def test_a_window_has_each_arms_figures_and_the_shadows_agreement(
    churn: Project, tmp_path: Path
) -> None:
    from batches import month
    from copml.score import score

    # The champion alone: no figures per arm.
    alone, _ = month(tmp_path / "feb", seed=5, size=200)
    score(churn, alone, tmp_path / "feb.csv", at=datetime(2026, 2, 2, tzinfo=UTC))
    february = compute(churn, end=datetime(2026, 3, 1, tzinfo=UTC))
    assert february.n_predictions == 200
    # the counts alone (a policy can tell that no rollout ran), no figures per arm
    per_arm = {m for m in february.metrics if m.split(".")[0] in rollout.ARMS}
    assert per_arm == {f"{a}.{n}" for a in rollout.ARMS for n in rollout.ARM_COUNTS}
    assert february.metrics["champion.predictions"] == 200
    assert february.metrics["shadow.predictions"] == february.metrics["canary.labelled"] == 0

    version, scored = _shadowed_month(churn, tmp_path)
    window = compute(churn, end=APRIL)
    engine = open_store(churn.db_url)
    made = {b.arm: b for b in prediction_log.batches_between(engine, MARCH, APRIL)}
    answered = prediction_log.read(engine, made["champion"])
    mirror = prediction_log.read(engine, made["shadow"])
    assert made["shadow"].model_version == version and len(mirror) == len(answered) == 500
    actual = answered["actual"].to_numpy()
    assert not np.isnan(actual).any()  # every customer's truth landed, on the answered rows
    figures = window.metrics
    # The shadow's own figures: its decisions against the answered rows' truth.
    expected = classification_metrics(actual, mirror["label"].to_numpy() == 1, mirror["score"])
    for name in ("accuracy", "recall", "precision", "roc_auc"):
        assert figures[f"shadow.{name}"] == pytest.approx(expected[name], abs=1e-12), name
        assert figures[f"champion.{name}"] == pytest.approx(figures[name], abs=1e-12), name
    assert figures["shadow.recall"] != pytest.approx(figures["recall"], abs=1e-6)  # not a copy
    assert figures["shadow.predictions"] == figures["shadow.labelled"] == 500
    assert figures["champion.predictions"] == window.n_predictions == 500  # shadows answer none
    assert figures["canary.predictions"] == 0
    assert np.isnan(figures["canary.recall"])
    # Agreement, known before any truth: equal labels, score correlation, mean difference.
    mine, theirs = mirror["score"].to_numpy(), answered["score"].to_numpy()
    assert figures["shadow.agreement"] == pytest.approx(
        np.mean(mirror["label"].to_numpy() == answered["label"].to_numpy()), abs=1e-12
    )
    assert figures["shadow.score_correlation"] == pytest.approx(
        np.corrcoef(mine, theirs)[0, 1], abs=1e-12
    )
    assert figures["shadow.score_difference"] == pytest.approx(
        np.mean(np.abs(mine - theirs)), abs=1e-12
    )
    # The shadow's estimate comes from its own version's calibration.
    assert not np.isnan(figures["shadow.estimated_accuracy"])
    assert figures["shadow.estimated_accuracy"] != figures["champion.estimated_accuracy"]
    assert scored["customerID"].is_unique


def test_a_policy_promotes_the_shadow_on_the_live_comparison(
    churn: Project, tmp_path: Path
) -> None:
    version, _ = _shadowed_month(churn, tmp_path)
    project = _spec(
        churn,
        """
policies:
  - name: promote-on-live
    when: shadow.recall >= champion.recall - 0.5 and shadow.agreement > 0.5
    do: [promote]
""",
    )
    monitor(project, end=APRIL)
    result = operate_once(project, at=APRIL)
    assert [e.outcome for e in result.evaluations] == [True]
    champion = registry.champion(project)
    assert champion is not None and champion.version == version
    engine = open_store(project.db_url)
    assert rollout.current(engine, project.spec.project) == rollout.Rollout()  # answers all
    gate = events.history(engine, kind=events.Kind.MODEL_VALIDATED)[0]
    live = gate["evidence"]
    assert gate["actor"] == "policy:promote-on-live" and live["live"] == "shadow"
    window = compute(project, end=APRIL)
    assert live["candidate_metrics"]["recall"] == pytest.approx(window.metrics["shadow.recall"])
    assert live["champion_metrics"]["recall"] == pytest.approx(window.metrics["champion.recall"])
    assert set(live["values"]) == {"shadow.recall", "champion.recall", "shadow.agreement"}
    promoted = events.history(engine, kind=events.Kind.MODEL_PROMOTED)[0]
    assert "live comparison" in promoted["reason"]
    # The model card tells the story: in shadow, then promoted on the live figures.
    from copml.model_card import build_card, render_html, render_markdown

    card = build_card(project, version)
    assert card.live is not None and card.live.arm == "shadow"
    assert [c[1] for c in card.live.changes] == ["shadow", "ended"]
    figures = dict((m, (mine, theirs)) for m, mine, theirs in card.live.metrics)
    assert figures["recall"] == pytest.approx(
        (window.metrics["shadow.recall"], window.metrics["champion.recall"])
    )
    assert card.gate is not None and card.gate.rows != live["rows"]  # the holdout gate stays
    text = render_markdown(card)
    assert "### Live comparison" in text and "On live traffic as shadow" in text
    assert "Live comparison" in render_html(card)


def test_a_policy_moves_the_shadow_to_canary_and_another_aborts_it(
    churn: Project, tmp_path: Path
) -> None:
    version, _ = _shadowed_month(churn, tmp_path)
    engine = open_store(churn.db_url)
    project = _spec(
        churn,
        """
policies:
  - name: canary-when-agreeing
    when: shadow.agreement >= 0.5
    do: [canary]
""",
        promotion="{metric: roc_auc, canary_share: 20%}",
    )
    monitor(project, end=APRIL)
    operate_once(project, at=APRIL)
    assert rollout.current(engine, project.spec.project) == rollout.Rollout(None, version, 0.2)
    # copml status says what runs and the latest window's figures per arm
    from typer.testing import CliRunner

    from copml.cli import app

    args = ["status", "--project", str(project.root)]
    found = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert found["rollout"] == {"shadow": None, "canary": version, "share": 0.2}
    window = compute(project, end=APRIL)
    assert found["arms"]["shadow"]["accuracy"] == pytest.approx(window.metrics["shadow.accuracy"])
    assert set(found["arms"]) == {"champion", "shadow"}  # the canary answered none of March
    text = CliRunner().invoke(app, args).stdout
    assert f"v{version} answers 20% of entities" in text and "per arm" in text
    # A condition that holds against the canary ends it (the champion answers everyone).
    project = _spec(
        project,
        """
policies:
  - name: abort-when-worse
    when: canary.predictions >= 0 and champion.recall > 0
    do: [abort]
""",
    )
    operate_once(project, at=APRIL)
    assert rollout.current(engine, project.spec.project) == rollout.Rollout()
    ended = events.history(engine, kind=events.Kind.MODEL_ROLLOUT)[0]
    assert ended["actor"] == "policy:abort-when-worse" and ended["evidence"]["canary"] is None
    champion = registry.champion(project)
    assert champion is not None and champion.version == "1"


def test_a_policy_on_arms_names_an_unknown_arm_metric_with_its_line(churn: Project) -> None:
    from copml.errors import SpecError

    with pytest.raises(SpecError, match=r"canary\.recal'.*line \d+|line \d+.*canary\.recal'"):
        _spec(
            churn,
            """
policies:
  - name: typo
    when: canary.recal >= champion.recall - 0.01 for 2 windows
    do: [promote]
""",
        )
