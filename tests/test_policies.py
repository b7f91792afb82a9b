import pytest

from copml import policies
from copml.policies import BoolOp, Comparison, PolicySyntaxError, metrics_of, parse


def test_simple_comparison() -> None:
    assert parse("accuracy < 0.75") == Comparison("accuracy", "<", 0.75, 1)


def test_for_windows_and_percent() -> None:
    assert parse("churn_rate >= 10% for 3 windows") == Comparison("churn_rate", ">=", 0.1, 3)


def test_and_binds_tighter_than_or() -> None:
    cond = parse("a < 1 or b > 2 and c == 3")
    assert isinstance(cond, BoolOp) and cond.op == "or"
    assert isinstance(cond.right, BoolOp) and cond.right.op == "and"


def test_parentheses_override_precedence() -> None:
    cond = parse("(a < 1 or b > 2) and drift.tenure > 0.2")
    assert isinstance(cond, BoolOp) and cond.op == "and"
    assert metrics_of(cond) == ["a", "b", "drift.tenure"]


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("accuracy < ", 12, "expected a number"),
        ("accuracy 0.7", 10, "expected a comparison"),
        ("accuracy < 0.7 and", 19, "expected a metric name"),
        ("(accuracy < 0.7", 16, "expected ')'"),
        ("accuracy < 0.7 for three windows", 20, "whole number of windows"),
        ("accuracy < 0.7; import os", 15, "unexpected character ';'"),
        ("accuracy < 0.7 recall", 16, "expected 'and', 'or'"),
        ("", 1, "empty"),
    ],
)
def test_syntax_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(PolicySyntaxError) as info:
        parse(text)
    assert info.value.column == column
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("condition", "windows", "expected"),
    [
        ("accuracy < 0.75", [{"accuracy": 0.7}], True),
        ("accuracy < 0.75", [{"accuracy": 0.8}], False),
        ("accuracy < 0.75", [{}], None),  # missing: unknown, never silently false
        ("accuracy < 0.75", [{"accuracy": float("nan")}], None),
        ("accuracy < 0.75 for 3 windows", [{"accuracy": 0.7}] * 2, None),  # not enough yet
        ("accuracy < 0.75 for 3 windows", [{"accuracy": 0.8}] + [{"accuracy": 0.7}] * 2, False),
        ("accuracy < 0.75 for 2 windows", [{"accuracy": 0.8}] + [{"accuracy": 0.7}] * 2, True),
        ("accuracy < 0.75 and churn_rate > 0.1", [{"accuracy": 0.8}], False),  # false and ?
        ("accuracy < 0.75 and churn_rate > 0.1", [{"accuracy": 0.7}], None),
        ("accuracy < 0.75 or churn_rate > 0.1", [{"accuracy": 0.7}], True),  # true or ?
        ("accuracy < 0.75 or churn_rate > 0.1", [{"accuracy": 0.8}], None),
        ("(drift > 0.3 or cost > 500) and accuracy < 0.9", [{"drift": 0.5, "accuracy": 0.8}], True),
    ],
)
def test_evaluation_is_three_valued(condition: str, windows: list, expected: bool | None) -> None:
    verdict = policies.evaluate(policies.parse(condition), windows)
    assert verdict.outcome is expected
    assert set(verdict.values) == set(policies.metrics_of(policies.parse(condition)))


def test_a_per_class_metric_names_its_class() -> None:
    cond = parse("recall.class=virus < 0.8 and precision.class=3==1")
    assert metrics_of(cond) == ["recall.class=virus", "precision.class=3"]
    assert parse("accuracy==1") == Comparison("accuracy", "==", 1.0, 1)
    with pytest.raises(PolicySyntaxError, match="unexpected character '='"):
        parse("accuracy=1 < 2")
