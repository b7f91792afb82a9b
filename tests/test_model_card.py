"""The model card of a real trained version, read back from both files it writes."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest

from batches import month_with_truth
from copml import events, metrics, registry
from copml.model_card import (
    NOT_MEASURED,
    build_card,
    fmt,
    render_html,
    render_markdown,
    write_card,
)
from copml.monitor.window import monitor
from copml.operate import lifecycle
from copml.project import Project, load_project
from copml.store import open_store
from test_spec import diabetes_spec

END = datetime(2026, 4, 1, tzinfo=UTC)
_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


@pytest.fixture
def project(trained_churn: Path, tmp_path: Path) -> Project:
    root = tmp_path / "churn"
    shutil.copytree(trained_churn, root)
    return load_project(root)


def _section(markdown: str, title: str) -> str:
    """The text of one ``## n. title`` section."""
    start = markdown.index(title)
    following = markdown.find("\n## ", start)
    return markdown[start : following if following != -1 else None]


def test_card_of_a_trained_version(project: Project, tmp_path: Path) -> None:
    version = registry.champion(project)
    assert version is not None
    lifecycle.gate(project, version.version, actor="user:ds")
    lifecycle.approve(project, version.version, actor="user:lead", reason="reviewed the card")

    md_path, html_path = write_card(project, version.version, tmp_path / "cards")

    assert md_path == tmp_path / "cards" / f"model-card-v{version.version}.md"
    assert html_path == tmp_path / "cards" / f"model-card-v{version.version}.html"
    assert md_path.exists() and html_path.exists()
    md = md_path.read_text(encoding="utf-8")
    html = html_path.read_text(encoding="utf-8")
    spec = project.spec

    assert f"v{version.version}" in md.splitlines()[0]
    assert " ".join(spec.objective.split()) in md
    assert version.snapshot_id and version.snapshot_id in md and version.snapshot_id in html
    assert version.run_id in md and version.artifact_sha256 in md

    logged = registry.client(project).get_run(version.run_id).data.metrics
    evaluation = _section(md, "## 4. Evaluation")
    assert spec.effectiveness.thresholds
    for name, bound in spec.effectiveness.thresholds.items():
        value = logged[f"holdout_{name}"]
        state = "met" if bound.met(value) else "not met"
        assert re.search(
            rf"^\| {name} \| [^|]+ \| {re.escape(fmt(value))} \| {state} \|$",
            evaluation,
            re.M,
        ), name
    assert "Gate report (model.validated" in evaluation

    history = _section(md, "## 9. Approvals and history")
    for kind, actor in (
        ("model.registered", "system"),
        ("model.promoted", "system"),
        ("model.validated", "user:ds"),
        ("model.approved", "user:lead"),
    ):
        assert re.search(rf"^\| [^|]+ \| {re.escape(kind)} \| {re.escape(actor)} \|", history, re.M)
    assert "reviewed the card" in history

    # No window was computed: fairness is unknown, and the card says so per column.
    fairness = _section(md, "## 6. Fairness")
    for column in spec.data.sensitive:
        assert f"### {column}\n\n{NOT_MEASURED}." in fairness
    assert "No stored window was served by this version yet." in md

    assert not _EXTERNAL.search(html), "the HTML card must not load anything from the network"
    # The churn example's model is one SHAP explains: training logged its global importance,
    # and the card shows that plot and ranks the features as the logged figures do.
    client = registry.client(project)
    names = {Path(a.path).name for a in client.list_artifacts(version.run_id, "explain")}
    assert {"importance.png", "importance.json"} <= names
    assert client.get_run(version.run_id).data.tags["copml.explanation"] == "shap"
    logged_importance = json.loads(
        Path(
            client.download_artifacts(version.run_id, "explain/importance.json", str(tmp_path))
        ).read_text()
    )
    top = max(logged_importance, key=logged_importance.get)
    explanation = _section(md, "## 7. Explanation")
    assert re.search(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', html)
    assert "explanation unavailable" not in md and "explanation unavailable" not in html
    assert re.search(rf"^1\. {re.escape(top)}: {logged_importance[top]:.4f}$", explanation, re.M)


def test_card_says_why_a_version_has_no_explanation(project: Project, tmp_path: Path) -> None:
    """A run without importance (SHAP could not explain its model) gets the reason, no plot."""
    version = registry.champion(project)
    assert version is not None
    client = registry.client(project)
    explain_dir = Path(urlparse(client.get_run(version.run_id).info.artifact_uri).path) / "explain"
    assert explain_dir.is_dir()
    # The run's artifacts are the session's trained project's (a copied project keeps its
    # absolute artifact paths): set them aside and put them back, or later tests in this
    # process would find no explanation.
    aside = tmp_path / "explain-aside"
    shutil.move(explain_dir, aside)
    try:
        client.set_tag(version.run_id, "copml.explanation", "unavailable: NotImplementedError: x")
        md_path, html_path = write_card(project, version.version, tmp_path / "cards")
    finally:
        shutil.move(aside, explain_dir)

    md, html = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    explanation = _section(md, "## 7. Explanation")
    assert "explanation unavailable: unavailable: NotImplementedError: x" in explanation
    assert "explanation unavailable" in html and "data:image/png;base64" not in html
    assert not re.search(r"^1\. ", explanation, re.M)


def test_card_shows_fairness_of_a_real_window(project: Project, tmp_path: Path) -> None:
    month_with_truth(project, tmp_path)
    window = monitor(project, end=END)
    assert window.model_version == "1"

    md_path, html_path = write_card(project, "1", tmp_path / "cards")
    md = md_path.read_text(encoding="utf-8")
    html = html_path.read_text(encoding="utf-8")

    m = window.metrics
    fairness = _section(md, "## 6. Fairness")
    gender = fairness[fairness.index("### gender") :]
    assert not gender.startswith(f"### gender\n\n{NOT_MEASURED}")
    dp = m["demographic_parity_difference.gender"]
    eo = m["equalized_odds_difference.gender"]
    assert f"- Demographic parity difference: {fmt(dp)}" in gender
    assert f"- Equalized odds difference: {fmt(eo)}" in gender
    for group in ("Female", "Male"):
        rate, recall = m[f"selection_rate.gender={group}"], m[f"recall.gender={group}"]
        assert f"| {group} | {fmt(rate)} | {fmt(recall)} |" in gender
        assert f'<td>{group}</td><td class="num">{fmt(rate)}</td>' in html

    production = _section(md, "## 5. Production performance")
    assert "2026-03-01 00:00 UTC to 2026-04-01 00:00 UTC | 500 | 500 |" in production
    assert fmt(m["accuracy"]) in production
    # A binary card's window columns: the headline, the ranking and the thresholded metrics
    # in the task's order, then the KPIs and drift.
    columns = (
        "| Window | Predictions | Labelled | accuracy | recall | roc_auc | churn_rate | drift |"
    )
    assert columns in production
    assert "No production window" not in _section(md, "## 8. Limitations")
    assert not _EXTERNAL.search(html)


def test_recorded_text_cannot_inject_markup(project: Project) -> None:
    """Reasons and the objective are free text typed by people: they stay text."""
    card = build_card(project, "1")
    hostile = '<script>alert(1)</script><img src="https://evil.example/x.png"> a | b'
    card = dataclasses.replace(
        card,
        objective=hostile,
        history=[{"at": "now", "kind": "model.approved", "actor": "user:x", "reason": hostile}],
    )
    html = render_html(card)
    assert "<script>" not in html and not _EXTERNAL.search(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    md = render_markdown(card)
    assert "<script>" not in md and "<img" not in md
    assert "| model.approved | user:x | &lt;script&gt;alert(1)" in md
    assert "a \\| b |" in md  # a pipe in a reason does not split the table row


def _register(project: Project, model: object, holdout: dict[str, float]) -> str:
    """Log ``model`` and its holdout figures on a real run and register it; its version."""
    import mlflow.sklearn

    with registry.training_run(project) as run:
        run.log_metrics({f"holdout_{k}": v for k, v in holdout.items()})
        folder = project.home / "logged" / run.run_id
        # Requirements named: left out, MLflow infers them in a subprocess (slow).
        mlflow.sklearn.save_model(model, folder, pip_requirements=["scikit-learn"])
        run.log_artifacts(folder, "model")
    sha = registry.directory_sha256(folder)
    tags = {registry.TAG + "artifact_sha256": sha}
    return registry.register(project, run.run_id, "model", tags).version


def test_card_of_a_regression_version_follows_its_metric_table(
    trained_churn: Path, tmp_path: Path
) -> None:
    """RMSE ranks lower-is-better and a regression has no accuracy: the card lists the
    task's own metrics, in its table's order, and says which way the promotion metric is
    better. Two real models on the diabetes data: a linear model against the mean."""
    from sklearn.datasets import load_diabetes
    from sklearn.dummy import DummyRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import train_test_split

    root = tmp_path / "diabetes"
    root.mkdir()
    (root / "copml.yaml").write_text(diabetes_spec(), encoding="utf-8")
    (root / ".copml").mkdir()  # a tracking store already migrated: MLflow's take seconds
    shutil.copy(trained_churn / ".copml" / "mlflow.db", root / ".copml" / "mlflow.db")
    project = load_project(root)
    x, y = load_diabetes(return_X_y=True)
    x_fit, x_out, y_fit, y_out = train_test_split(x, y, test_size=0.25, random_state=0)
    mean = DummyRegressor().fit(x_fit, y_fit)
    linear = LinearRegression().fit(x_fit, y_fit)
    theirs = metrics.regression_metrics(y_out, mean.predict(x_out))
    mine = metrics.regression_metrics(y_out, linear.predict(x_out))
    champion = _register(project, mean, theirs)
    version = _register(project, linear, mine)
    shortfall = lifecycle.champion_shortfall(project.spec, mine, theirs, champion)
    assert shortfall is None  # the lower RMSE wins
    report = lifecycle.GateReport(
        candidate=version,
        champion=champion,
        passed=True,
        reasons=[],
        metric=project.spec.promotion.metric,
        rows=len(y_out),
        snapshot_id="",
        candidate_metrics=mine,
        champion_metrics=theirs,
    )
    with open_store(project.db_url).begin() as conn:
        events.record(
            conn,
            "model.validated",
            actor="user:ds",
            subject=f"model:{project.spec.project}/{version}",
            reason="passes the gate",
            evidence=report.evidence(),
        )

    card = build_card(project, version)

    task = ["rmse", "mae", "mape", "r2", "bias"]
    assert card.gate is not None and card.gate.metric == "rmse"
    assert card.gate.metrics == [(m, mine[m], theirs[m]) for m in task]
    # rmse, r2 and bias carry thresholds; the others follow in the table's order.
    assert [r.metric for r in card.holdout] == ["rmse", "r2", "bias"]
    assert card.holdout_other == {"mae": mine["mae"], "mape": mine["mape"]}
    assert list(card.holdout_other) == ["mae", "mape"]
    assert card.window_metrics == ["rmse", "r2", "bias", "drift"]
    assert card.gate.better == "lower"
    md = render_markdown(card)
    evaluation = _section(md, "## 4. Evaluation")
    assert "promotion metric rmse (lower is better)." in evaluation
    assert f"| rmse | {fmt(mine['rmse'])} | {fmt(theirs['rmse'])} |" in evaluation
    assert "accuracy" not in md and "roc_auc" not in md
    html = render_html(card)
    assert "promotion metric rmse (lower is better)." in html
