"""The action state machine on both stores: planned once, states stored as plain strings,
an action whose process died failed and retried. Alert actions need no model, so this runs
without MLflow."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from copml.operate import actions, leadership
from copml.operate.actions import ActionState
from copml.operate.evaluation import Evaluation
from copml.operate.runner import operate_once
from copml.project import Project
from copml.store import actions as rows
from copml.store import open_store
from store_state import assert_unchanged, capture
from test_operate import _spec

JAN = datetime(2026, 2, 1, tzinfo=UTC)
WATCH = """
policies:
  - name: watch
    when: accuracy < 0.75
    do: [alert, review]
"""


@pytest.fixture
def project(fresh_churn: Project, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.setenv("COPML_DB_URL", db_url)
    return _spec(fresh_churn, WATCH)


def _states(project: Project) -> list[tuple[str, str, int]]:
    """(kind, state, attempt) of every action, read as raw SQL: what the store holds."""
    with open_store(project.db_url).connect() as conn:
        found = conn.execute(text("SELECT kind, state, attempt FROM actions ORDER BY id"))
        return [(r.kind, r.state, r.attempt) for r in found]


def _row(project: Project, action_id: int) -> dict[str, Any]:
    with open_store(project.db_url).connect() as conn:
        return dict(conn.execute(select(rows).where(rows.c.id == action_id)).one()._mapping)


def test_actions_are_planned_once_and_run_to_succeeded(project: Project) -> None:
    holds = Evaluation("watch", JAN, True, True, "", {"accuracy": [0.5]})
    actions.plan(project, holds, JAN)
    actions.plan(project, holds, JAN)  # the same window again: nothing new
    assert _states(project) == [("alert", "pending", 1), ("review", "pending", 1)]
    done = actions.execute_pending(project, JAN)
    assert [(a["kind"], a["state"]) for a in done] == [
        ("alert", "succeeded"),
        ("review", "succeeded"),
    ]
    assert _states(project) == [("alert", "succeeded", 1), ("review", "succeeded", 1)]
    assert _row(project, done[0]["id"])["result"]["alert_id"] >= 1
    assert actions.execute_pending(project, JAN) == []  # a finished action never runs again


def test_an_action_of_a_dead_process_is_failed_and_retried(project: Project) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    owner = f"{socket.gethostname()}:{gone.pid}"
    stale = _running(project, owner)
    assert actions.recover(project, JAN) == [stale]
    assert actions.recover(project, JAN) == []  # recovered once, not twice
    assert _states(project) == [("alert", "failed", 1), ("alert", "pending", 2)]
    assert _row(project, stale)["error"] == f"interrupted: process {owner} ended during the action"
    done = actions.execute_pending(project, JAN)
    assert [(a["kind"], a["state"], a["evidence"]["retry_of"]) for a in done] == [
        ("alert", "succeeded", stale)
    ]


def _running(project: Project, owner: str) -> int:
    """An alert action stored as ``running`` by ``owner`` (host:pid)."""
    with open_store(project.db_url).begin() as conn:
        return int(
            conn.execute(
                insert(rows).values(
                    kind="alert",
                    policy="watch",
                    window_end=JAN,
                    state=ActionState.RUNNING.value,
                    created_at=JAN,
                    started_at=JAN,
                    owner=owner,
                    attempt=1,
                    evidence={"when": "accuracy < 0.75", "values": {}, "chain": ["alert"]},
                )
            ).inserted_primary_key[0]
        )


@pytest.fixture
def shared(fresh_churn: Project, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A project on a PostgreSQL store, the kind several operators share."""
    monkeypatch.setenv("COPML_DB_URL", pg_url)
    return _spec(fresh_churn, WATCH)


def test_the_leader_takes_over_an_action_an_operator_on_another_machine_left(
    shared: Project,
) -> None:
    # A pod killed on another node: its process id means nothing here, and nobody else
    # acts on the store while this process leads, so the action was interrupted.
    stale = _running(shared, "operate-5c9d7-k2x8p:1")
    result = operate_once(shared, at=JAN)
    assert result.recovered == [stale] and result.led is True
    assert _states(shared) == [("alert", "failed", 1), ("alert", "succeeded", 2)]


def test_an_operator_stands_aside_while_another_leads_the_store(shared: Project) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # an action of a dead process: what a pass would recover first
    stale = _running(shared, f"{socket.gethostname()}:{gone.pid}")
    before = capture(shared)
    with leadership.lead(shared) as lead:  # another session holds the store's lock
        assert lead is not None and lead.sole
        result = operate_once(shared, at=JAN)
        assert result.recovered == [] and result.actions == [] and result.led is False
    assert_unchanged(before, shared)  # it neither recovered nor ran anything
    assert operate_once(shared, at=JAN).recovered == [stale]  # the lock is free again


def test_an_action_in_this_process_name_is_one_a_restarted_container_left(
    project: Project,
) -> None:
    # A container restarted in its pod keeps its host name and runs copml as pid 1 again:
    # the action its previous life left running bears this very process's name.
    stale = _running(project, f"{socket.gethostname()}:{os.getpid()}")
    assert operate_once(project, at=JAN).recovered == [stale]
    assert _states(project) == [("alert", "failed", 1), ("alert", "succeeded", 2)]
