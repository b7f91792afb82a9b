import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from copml.errors import SpecError
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
