"""Event kinds and the model subject are defined once, in ``copml.events``.

An audit is a query over kinds and subjects: a kind spelt differently in one module, or a
subject built by hand in another, would silently drop that module's events from it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy import Engine

import copml
from copml import events

SOURCE = Path(copml.__file__).parent


def test_an_undeclared_event_kind_is_refused_and_nothing_is_recorded(engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"model\.promotd"), engine.begin() as conn:
        events.record(conn, "model.promotd", actor="system", subject="model:x/1")
    assert events.history(engine) == []


def test_kinds_are_stored_as_their_text_and_found_by_it(engine: Engine) -> None:
    subject = events.model_subject("team/churn", "12")
    with engine.begin() as conn:
        events.record(conn, events.Kind.MODEL_PROMOTED, actor="user:ana", subject=subject)
    found = events.latest(engine, events.Kind.MODEL_PROMOTED, "model:team/churn/12")
    assert found is not None and found["kind"] == "model.promoted"
    assert type(found["kind"]) is str  # rows read back are plain text, equal to the kind
    assert events.history(engine, kind="model.promoted") == [found]


def test_the_model_subject_names_its_version_even_when_the_project_holds_a_slash() -> None:
    subject = events.model_subject("team/churn", "12")
    assert subject == "model:team/churn/12"
    assert events.subject_version(subject) == "12"
    assert events.project_subject("churn") == "project:churn"
    with pytest.raises(ValueError, match="project:churn"):
        events.subject_version(events.project_subject("churn"))


def _hand_made(tree: ast.AST) -> list[tuple[int, str]]:
    """Event kinds spelt as string literals, and ``model:`` subjects built by hand."""
    kinds = {kind.value for kind in events.Kind}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in kinds:
            found.append((node.lineno, node.value))
        elif (
            isinstance(node, ast.JoinedStr)
            and node.values
            and isinstance(node.values[0], ast.Constant)
            and node.values[0].value in ("model:", "project:")
        ):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_module_spells_an_event_kind_or_a_subject_itself() -> None:
    found = {
        f"{path.relative_to(SOURCE)}:{line}": text
        for path in sorted(SOURCE.rglob("*.py"))
        if path != SOURCE / "events.py"
        for line, text in _hand_made(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert found == {}
