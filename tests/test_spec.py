import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from copml.errors import SpecError
from copml.policies import evaluate
from copml.project import Project
from copml.scaffold import EXAMPLES
from copml.spec import json_schema, load_spec, parse_spec

EXAMPLE = (EXAMPLES["churn"] / "copml.yaml").read_text()


def _edited(old: str, new: str) -> str:
    assert old in EXAMPLE, old
    return EXAMPLE.replace(old, new, 1)


def _line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def _error(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return str(info.value)


def test_example_is_valid() -> None:
    spec = parse_spec(EXAMPLE)
    assert spec.project == "telco-churn"
    assert spec.data.features[0] == "gender" and "customerID" not in spec.data.features
    assert spec.effectiveness.thresholds["accuracy"].min == 0.75
    assert spec.effectiveness.window.unit == "month"
    assert spec.kpis["churn_rate"].better == "lower"


def test_unknown_key_names_field_and_line() -> None:
    text = _edited("  seed: 42\n", "  seed: 42\n  sead: 3\n")
    message = _error(text)
    assert f"model.sead (line {_line_of(text, 'sead:')}): unknown key" in message


def test_wrong_type_names_field_and_line() -> None:
    text = _edited("    tenure: {type: integer, min: 0, max: 120}", "    tenure: {type: integr}")
    message = _error(text)
    assert f"data.columns.tenure.type (line {_line_of(text, 'tenure:')})" in message
    assert "integr" in message


def test_wrong_value_type_names_field() -> None:
    text = _edited("  seed: 42", "  seed: forty-two")
    assert f"model.seed (line {_line_of(text, 'seed:')})" in _error(text)


def test_bad_policy_condition_names_line_and_column() -> None:
    text = _edited("when: accuracy < 0.75\n", "when: accuracy < and 0.75\n")
    message = _error(text)
    assert f"policies[0].when (line {_line_of(text, 'accuracy < and')})" in message
    assert "column 12" in message


def test_unknown_metric_in_policy_is_refused() -> None:
    text = _edited("when: accuracy < 0.75\n", "when: acuracy < 0.75\n")
    message = _error(text)
    assert f"policies[0].when (line {_line_of(text, 'acuracy')})" in message
    assert "unknown metric 'acuracy'" in message


def test_drift_of_a_declared_feature_is_a_metric() -> None:
    parse_spec(_edited("when: accuracy < 0.75\n", "when: drift.tenure > 0.2\n"))
    message = _error(_edited("when: accuracy < 0.75\n", "when: drift.nosuch > 0.2\n"))
    assert "unknown metric 'drift.nosuch'" in message


def test_id_must_be_a_declared_column() -> None:
    text = _edited("  id: customerID", "  id: customer_id")
    assert "id 'customer_id' is not one of the declared columns" in _error(text)


def test_unknown_effectiveness_metric() -> None:
    assert "unknown effectiveness metric 'acc'" in _error(
        _edited("  accuracy: {min: 0.75}", "  acc: {min: 0.75}")
    )


def test_invalid_yaml_reports_position() -> None:
    assert "line 2" in _error("project: x\n  bad: [unclosed\n")


def test_every_problem_is_reported_at_once() -> None:
    text = _edited("  seed: 42", "  seed: x").replace("impact: low", "impact: extreme")
    message = _error(text)
    assert "model.seed" in message and "impact" in message


def test_json_schema_is_exported_from_the_models() -> None:
    schema = json_schema()
    assert {"project", "data", "model", "policies"} <= set(schema["properties"])
    assert set(schema["required"]) >= {"project", "objective", "owners", "data", "model"}
    json.dumps(schema)  # serialisable


def test_example_satisfies_the_exported_schema() -> None:
    import jsonschema

    jsonschema.validate(yaml.safe_load(EXAMPLE), json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(_edited("  seed: 42", "  sed: 42")), json_schema())


def test_load_spec_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path)


def _alias_bomb(levels: int) -> str:
    """The 'billion laughs' document: each level is nine aliases of the one before."""
    lines = ["bomb:", '  l1: &l1 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(2, levels + 1)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_naming_its_line(fresh_churn: Project) -> None:
    # Nine levels expand to 387 million values: the line index used to walk every one
    # (gigabytes, minutes), even under a key that is not part of copml.yaml.
    spec = fresh_churn.root / "copml.yaml"
    text = spec.read_text() + _alias_bomb(9)
    spec.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "copml", "validate"],
        cwd=fresh_churn.root,
        capture_output=True,
        text=True,
        timeout=120,  # a guard against the hang, not a measure of speed
        env={k: v for k, v in os.environ.items() if k not in ("COPML_HOME", "COPML_DB_URL")},
    )
    assert done.returncode == 1
    # 10 + 91 + 820 + 7,381 + 66,430 values fit the budget; level 6 (597,871) does not.
    line = _line_of(text, "l6: &l6")
    assert done.stderr.strip().splitlines() == [
        f"error: {spec}: line {line}: YAML aliases expand to more than 100,000 values; "
        "write the values out instead"
    ]
    assert not fresh_churn.home.exists()


def test_aliases_within_the_budget_are_read_and_errors_name_the_alias_line() -> None:
    yes_no = '{type: category, categories: ["Yes", "No"]}'
    text = _edited(
        f"    Partner: {yes_no}\n    Dependents: {yes_no}",
        f"    Partner: &yes_no {yes_no}\n    Dependents: *yes_no",
    )
    assert parse_spec(text).data.columns["Dependents"].categories == ["Yes", "No"]
    message = _error(text.replace("&yes_no {type: category", "&yes_no {type: categry"))
    assert f"data.columns.Partner.type (line {_line_of(text, 'Partner:')})" in message
    assert f"data.columns.Dependents.type (line {_line_of(text, 'Dependents:')})" in message


def test_an_alias_that_refers_to_itself_is_refused() -> None:
    text = EXAMPLE + "loop: &loop [1, *loop]\n"
    assert _error(text) == f"copml.yaml: line {_line_of(text, 'loop:')}: an alias refers to itself"


# ------------------------------------------------------------ tasks: multiclass, regression


def _owners() -> str:
    return "owners: {data_engineering: de@x.org, data_science: ds@x.org, ml_ops: ops@x.org}\n"


def wine_spec() -> str:
    """A multiclass project over scikit-learn's wine data (three cultivars)."""
    from sklearn.datasets import load_wine

    wine = load_wine()
    classes = ", ".join(wine.target_names)
    columns = "".join(f"    {name}: {{type: float}}\n" for name in wine.feature_names)
    return (
        "project: wine-cultivar\n"
        "objective: Tell the cultivar of a wine from its chemistry.\n"
        + _owners()
        + "data:\n  source: data/wine.csv\n  id: id\n  target: cultivar\n  columns:\n"
        "    id: {type: integer}\n"
        + columns
        + f"    cultivar: {{type: category, categories: [{classes}]}}\n"
        "model:\n  train: wine:train\n  task: multiclass\n"
        "effectiveness:\n  accuracy: {min: 0.8}\n  log_loss: {max: 0.5}\n"
        "  recall.class=class_1: {min: 0.7}\n"
        "policies:\n  - name: retrain-on-decay\n"
        "    when: accuracy < 0.8 or recall.class=class_2 < 0.6\n    do: [retrain]\n"
    )


def diabetes_spec() -> str:
    """A regression project over scikit-learn's diabetes data (progression after a year)."""
    from sklearn.datasets import load_diabetes

    columns = "".join(f"    {name}: {{type: float}}\n" for name in load_diabetes().feature_names)
    return (
        "project: diabetes-progression\n"
        "objective: Forecast disease progression one year after baseline.\n"
        + _owners()
        + "data:\n  source: data/diabetes.csv\n  id: id\n  target: progression\n  columns:\n"
        "    id: {type: integer}\n" + columns + "    progression: {type: float}\n"
        "model:\n  train: diabetes:train\n  task: regression\n"
        "effectiveness:\n  rmse: {max: 60}\n  r2: {min: 0.3}\n  bias: {min: -10, max: 10}\n"
        "policies:\n  - name: retrain-on-error\n    when: rmse > 60 for 2 windows\n"
        "    do: [retrain]\n"
    )


def _replaced(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_multiclass_and_regression_specs_are_valid_with_their_own_metrics() -> None:
    import jsonschema

    wine = parse_spec(wine_spec())
    assert wine.classes == ["class_0", "class_1", "class_2"] and wine.data.positive is None
    assert wine.promotion.metric == "accuracy"  # the task's default, not binary's roc_auc
    assert {"recall.class=class_2", "log_loss"} <= wine.metric_names()
    assert wine.metrics.direction("log_loss") == "lower"
    diabetes = parse_spec(diabetes_spec())
    assert diabetes.promotion.metric == "rmse" and diabetes.classes == []
    assert diabetes.effectiveness.thresholds["rmse"].met(59) is True
    assert "demographic_parity_difference.sex" not in diabetes.metric_names()
    assert parse_spec(EXAMPLE).promotion.metric == "recall"
    for text in (wine_spec(), diabetes_spec(), EXAMPLE):
        jsonschema.validate(yaml.safe_load(text), json_schema())


@pytest.mark.parametrize(
    ("spec", "old", "new", "field", "fragment"),
    [
        (
            "churn",
            "  roc_auc: {min: 0.75}",
            "  rmse: {max: 0.75}",
            "effectiveness.rmse",
            "unknown effectiveness metric 'rmse' for a binary task",
        ),
        (
            "churn",
            "{metric: recall,",
            "{metric: mae,",
            "promotion.metric",
            "unknown metric 'mae' for a binary task",
        ),
        (
            "churn",
            "when: accuracy < 0.75\n",
            "when: r2 < 0.75\n",
            "policies[0].when",
            "unknown metric 'r2' for a binary task",
        ),
        (
            "diabetes",
            "  r2: {min: 0.3}",
            "  accuracy: {min: 0.3}",
            "effectiveness.accuracy",
            "unknown effectiveness metric 'accuracy' for a regression task",
        ),
        (
            "wine",
            "recall.class=class_2 < 0.6",
            "recall.class=class_9 < 0.6",
            "policies[0].when",
            "unknown metric 'recall.class=class_9' for a multiclass task",
        ),
        (
            "wine",
            "  log_loss: {max: 0.5}",
            "  roc_auc: {min: 0.5}",
            "effectiveness.roc_auc",
            "unknown effectiveness metric 'roc_auc' for a multiclass task",
        ),
    ],
)
def test_a_metric_the_task_lacks_is_refused_with_field_and_line(
    spec: str, old: str, new: str, field: str, fragment: str
) -> None:
    base = {"churn": EXAMPLE, "wine": wine_spec(), "diabetes": diabetes_spec()}[spec]
    text = _replaced(base, old, new)
    message = _error(text)
    assert f"{field} (line {_line_of(text, new.strip())}): {fragment}" in message


@pytest.mark.parametrize(
    ("spec", "old", "residual"),
    [
        ("churn", "when: accuracy < 0.75\n", False),
        ("wine", "when: accuracy < 0.8 or recall.class=class_2 < 0.6\n", False),
        ("diabetes", "when: rmse > 60 for 2 windows\n", True),
    ],
)
def test_drift_of_the_models_own_output_is_a_policy_metric(
    spec: str, old: str, residual: bool
) -> None:
    """Every task watches its prediction for drift; only a regression has residuals. The
    monitor does not compute either yet: until it does, such a policy reads *unknown*."""
    base = {"churn": EXAMPLE, "wine": wine_spec(), "diabetes": diabetes_spec()}[spec]
    task = parse_spec(base).model.task
    spec = parse_spec(_replaced(base, old, "when: drift.prediction > 0.2 for 2 windows\n"))
    # Today's windows carry no such figure: the policy is unknown and does not act.
    window = {"drift": 0.5, "drift.age": 0.4}
    assert evaluate(spec.policies[0].condition, [window, window]).outcome is None
    text = _replaced(base, old, "when: drift.residual > 0.2\n")
    if residual:
        assert "drift.residual" in parse_spec(text).metric_names()
    else:
        message = _error(text)
        assert (
            f"policies[0].when (line {_line_of(text, 'drift.residual')}): "
            f"unknown metric 'drift.residual' for a {task} task"
        ) in message
        assert "drift.prediction" in message  # what the task does watch, in the list


def test_bounds_take_the_side_of_the_metric_direction() -> None:
    text = _replaced(diabetes_spec(), "rmse: {max: 60}", "rmse: {min: 60}")
    text = _replaced(text, "r2: {min: 0.3}", "r2: {max: 0.3}")
    message = _error(text)
    assert f"effectiveness.rmse.min (line {_line_of(text, 'rmse:')}): rmse is better lower" in (
        message
    )
    assert f"effectiveness.r2.max (line {_line_of(text, 'r2:')}): r2 is better higher" in message
    band = _error(diabetes_spec() + "promotion: {metric: bias}\n")
    assert "promotion.metric (line" in band and "bias has no better side" in band


def test_positive_and_threshold_belong_to_binary_tasks() -> None:
    text = _replaced(
        diabetes_spec(), "  task: regression\n", "  task: regression\n  threshold: 0.5\n"
    )
    assert (
        f"model.threshold (line {_line_of(text, 'threshold:')}): 'threshold' belongs to "
        "binary tasks, not regression"
    ) in _error(text)
    text = _replaced(
        wine_spec(), "  target: cultivar\n", "  target: cultivar\n  positive: class_1\n"
    )
    assert f"data.positive (line {_line_of(text, 'positive:')})" in _error(text)
    text = _replaced(EXAMPLE, '  positive: "Yes"\n', "")
    assert "data.positive (line" in _error(text) and "needs the positive class" in _error(text)


def test_a_multiclass_target_is_a_category_with_its_classes() -> None:
    for target in ("{type: string}", "{type: category, categories: [class_0]}"):
        text = _replaced(
            wine_spec(),
            "    cultivar: {type: category, categories: [class_0, class_1, class_2]}",
            f"    cultivar: {target}",
        )
        message = _error(text)
        assert f"data.columns.cultivar.type (line {_line_of(text, 'cultivar: {')})" in message
        assert "a multiclass target is a category with its classes" in message


def test_a_regression_target_is_a_float() -> None:
    text = _replaced(diabetes_spec(), "progression: {type: float}", "progression: {type: integer}")
    message = _error(text)
    assert f"data.columns.progression.type (line {_line_of(text, 'progression: {')})" in message
    assert "a regression target is a float; 'progression' is declared integer" in message


def test_an_unknown_task_is_refused_naming_the_known_ones() -> None:
    text = _replaced(EXAMPLE, "task: binary", "task: ranking")
    message = _error(text)
    assert f"model.task (line {_line_of(text, 'task:')}): unknown task 'ranking'" in message
    assert "binary, multiclass, regression, cascade" in message


def test_every_task_problem_is_reported_at_once() -> None:
    text = _replaced(
        diabetes_spec(), "  task: regression\n", "  task: regression\n  threshold: 0.5\n"
    )
    text = _replaced(text, "when: rmse > 60", "when: accuracy < 0.5")
    message = _error(text)
    assert "model.threshold" in message and "policies[0].when" in message


def _copml(
    *args: str, cwd: Path, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COPML_HOME", "COPML_DB_URL")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "copml", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def test_validate_refuses_task_errors_with_field_and_line_and_changes_nothing(
    tmp_path: Path,
) -> None:
    from sklearn.datasets import load_diabetes

    from store_state import assert_unchanged, capture

    diabetes = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
    diabetes.insert(0, "id", range(len(diabetes)))
    (tmp_path / "data").mkdir()
    diabetes.to_csv(tmp_path / "data" / "diabetes.csv", index=False)
    (tmp_path / "diabetes.py").write_text("def train(data, params, seed):\n    return None\n")
    spec = tmp_path / "copml.yaml"
    spec.write_text(diabetes_spec())
    assert _copml("snapshot", cwd=tmp_path).returncode == 0  # a project with state
    project = Project(tmp_path, load_spec(tmp_path))
    before = capture(project)
    threshold = _replaced(
        diabetes_spec(), "  task: regression\n", "  task: regression\n  threshold: 0.5\n"
    )
    unknown = _replaced(diabetes_spec(), "r2: {min: 0.3}", "roc_auc: {min: 0.3}")
    classless = _replaced(diabetes_spec(), "task: regression", "task: multiclass")
    for text, expected in [
        (
            threshold,
            f"model.threshold (line {_line_of(threshold, 'threshold:')}): 'threshold' belongs "
            "to binary tasks, not regression",
        ),
        (
            unknown,
            f"effectiveness.roc_auc (line {_line_of(unknown, 'roc_auc:')}): unknown "
            "effectiveness metric 'roc_auc' for a regression task",
        ),
        (
            classless,
            f"data.columns.progression.type (line {_line_of(classless, 'progression: {')}): "
            "a multiclass target is a category with its classes",
        ),
    ]:
        spec.write_text(text)
        # Every command reads the spec the same way: one that would write is tried once.
        for command in ("validate", "snapshot") if text is threshold else ("validate",):
            done = _copml(command, cwd=tmp_path)
            assert done.returncode == 1, done.stdout + done.stderr
            assert "Traceback" not in done.stderr and f"  - {expected}" in done.stderr
    assert_unchanged(before, project)


def _install_kind(site: Path, module: str, body: str, entry: str) -> None:
    """A third-party package as pip leaves it: a module and a dist-info with its entry point."""
    (site / f"{module}.py").write_text(body)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[copml.kinds]\n{entry}\n")


def test_a_registered_kind_brings_its_own_metric_table(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    body = (
        "from copml.metrics import MetricTable\n\n\nclass RankingKind:\n"
        '    metrics = MetricTable("ranking", {"ndcg": "higher"}, promotion="ndcg")\n\n\n'
        "KIND = RankingKind()\n"
    )
    _install_kind(site, "ranking_kind", body, "ranking = ranking_kind:KIND")
    _install_kind(site, "broken_kind", "import no_such_module\n", "broken = broken_kind:KIND")
    project = tmp_path / "ranking"
    project.mkdir()
    base = _replaced(EXAMPLE, "task: binary", "task: ranking")
    base = _replaced(base, "{metric: recall,", "{metric: ndcg,")
    text = _replaced(base, "  roc_auc: {min: 0.75}", "  ndcg: {max: 0.75}")
    text = _replaced(text, "  accuracy: {min: 0.75}\n  recall: {min: 0.55}\n", "")
    text = text.replace("when: accuracy <", "when: ndcg <")
    (project / "copml.yaml").write_text(text)
    done = _copml("validate", cwd=project, pythonpath=site)
    assert done.returncode == 1
    assert (
        f"effectiveness.ndcg.max (line {_line_of(text, 'ndcg: {max')}): ndcg is better higher"
        in (done.stderr)
    )
    (project / "copml.yaml").write_text(text.replace("ndcg: {max", "ndcg: {min"))
    done = _copml("validate", cwd=project, pythonpath=site)
    assert done.returncode == 0, done.stderr
    (project / "copml.yaml").write_text(text.replace("task: ranking", "task: broken"))
    done = _copml("validate", cwd=project, pythonpath=site)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"model.task (line {_line_of(text, 'task:')}): the model kind 'broken' failed" in (
        done.stderr
    )


def test_integer_classes_are_named_in_per_class_metrics() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    columns = "".join(f"    {name}: {{type: float}}\n" for name in digits.feature_names)
    text = (
        "project: digits\nobjective: Read handwritten digits from 8x8 scans.\n"
        + _owners()
        + "data:\n  source: data/digits.csv\n  id: id\n  target: digit\n  columns:\n"
        "    id: {type: integer}\n"
        + columns
        + f"    digit: {{type: category, categories: {digits.target_names.tolist()}}}\n"
        "model: {train: digits:train, task: multiclass}\n"
        "effectiveness:\n  recall.class=3: {min: 0.8}\n"
        "promotion: {metric: f1_macro}\n"
        "policies:\n  - {name: threes, when: precision.class=3 < 0.7, do: [alert]}\n"
    )
    spec = parse_spec(text)
    assert spec.classes == list(range(10)) and spec.promotion.metric == "f1_macro"
    assert spec.metrics.direction("recall.class=3", spec.classes) == "higher"
    bad = text.replace("recall.class=3:", "recall.class=10:")
    assert f"effectiveness.recall.class=10 (line {_line_of(bad, 'class=10')})" in _error(bad)


def test_a_policy_may_act_on_estimated_performance_before_the_truth_lands() -> None:
    """A binary task estimates its metrics: a policy reads the estimate (unknown without
    one), its band, its error once the truth lands and the concept-shift flag."""
    spec = parse_spec(
        _edited("when: accuracy < 0.75\n", "when: estimated_recall < 0.6 for 1 window\n")
    )
    condition = spec.policies[0].condition
    assert evaluate(condition, [{"estimated_recall": 0.55}]).outcome is True
    assert evaluate(condition, [{"estimated_recall": 0.72}]).outcome is False
    assert evaluate(condition, [{"estimated_recall": float("nan")}]).outcome is None
    for when in (
        "estimated_roc_auc.lower < 0.7",
        "estimation_error.accuracy < -0.05 for 2 windows",
        "concept_shift == 1",
    ):
        parse_spec(_edited("when: accuracy < 0.75\n", f"when: {when}\n"))
    assert "estimation_tolerance: 0.02" not in EXAMPLE
    tolerant = parse_spec(
        _edited("  window: 1 month\n", "  window: 1 month\n  estimation_tolerance: 0.02\n")
    )
    assert tolerant.effectiveness.estimation_tolerance == 0.02
    assert "estimation_tolerance" not in tolerant.effectiveness.thresholds


@pytest.mark.parametrize(
    ("spec", "estimated", "refused"),
    [
        ("wine", "estimated_balanced_accuracy.lower < 0.6", "estimated_roc_auc"),
        ("wine", "estimation_error.f1_macro < -0.05", "estimated_recall"),
        ("diabetes", "estimated_rmse > 60 for 2 windows", "estimated_accuracy"),
        ("diabetes", "estimated_mae.upper > 50", "estimated_r2"),
    ],
)
def test_each_task_accepts_the_estimates_it_makes_and_refuses_others(
    spec: str, estimated: str, refused: str
) -> None:
    """Multiclass estimates accuracy, balanced accuracy and macro F1, regression MAE and
    RMSE: a policy may read those (and their bands and errors); another estimate is
    refused at the policy's line."""
    base = {"wine": wine_spec(), "diabetes": diabetes_spec()}[spec]
    when = next(line for line in base.splitlines() if line.strip().startswith("when:"))
    parse_spec(_replaced(base, when, f"    when: {estimated}"))
    text = _replaced(base, when, f"    when: {refused} < 0.6")
    error = _error(text)
    assert f"unknown metric {refused!r}" in error
    assert f"policies[0].when (line {_line_of(text, refused)})" in error


def test_high_impact_needs_oversight_long_logs_and_approval() -> None:
    """``impact: high`` without oversight, with 3 months of logs and no approval: each
    missing piece is named with its field and line."""
    impact = next(line for line in EXAMPLE.splitlines() if line.startswith("impact:"))
    text = _edited(impact, "impact: high").replace(
        "retention: {predictions: 400 days}", "retention: {predictions: 3 month}"
    )
    message = _error(text)
    assert f"impact (line {_line_of(text, 'impact: high')}): impact: high needs" in message
    assert f"retention.predictions (line {_line_of(text, 'retention:')})" in message
    line = _line_of(text, "promotion:")
    assert f"promotion.require_approval (line {line}): impact: high needs a person" in message
    fixed = text.replace("{predictions: 3 month}", "{predictions: 6 month}")
    fixed = fixed.replace("require_approval: false", "require_approval: true")
    fixed += "\noversight: {safe_state: refuse}\n"
    assert parse_spec(fixed).oversight.safe_state == "refuse"  # type: ignore[union-attr]


def test_out_of_distribution_settings_are_checked_and_ood_rate_is_a_policy_metric() -> None:
    """``serving.out_of_distribution`` (issue 17 item 6): a false-alarm rate outside (0, 0.5)
    is refused naming the field and its line; ``ood_rate`` is a metric policies may use."""
    spec = parse_spec(EXAMPLE)
    assert spec.serving.out_of_distribution.check
    assert spec.serving.out_of_distribution.false_alarm_rate == 0.01
    serving = 'serving: {mode: batch, schedule: "0 6 1 * *"}\n'
    text = _edited(
        serving,
        'serving:\n  mode: batch\n  schedule: "0 6 1 * *"\n'
        "  out_of_distribution: {false_alarm_rate: 0.9}\n",
    )
    message = _error(text)
    line = _line_of(text, "out_of_distribution:")
    assert f"serving.out_of_distribution.false_alarm_rate (line {line})" in message
    assert "0.5" in message
    policy = _edited("when: accuracy < 0.75\n", "when: ood_rate > 0.05\n")
    assert parse_spec(policy).policies[0].name
