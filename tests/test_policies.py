import pytest

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
