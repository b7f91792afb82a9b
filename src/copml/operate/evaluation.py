"""Policy evaluation: each policy's condition over the stored windows, and whether it acts.

A condition is three-valued (:mod:`copml.policies`); a policy that holds still holds back
when it already acted on this window, is cooling down, or would retrain a project flagged for
re-evaluation. Every evaluation is stored with the figures that decided it, acted or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd
from sqlalchemy import Engine, insert, select

from copml import oversight, policies, times
from copml.monitor.window import Window
from copml.operate.reevaluation import suspended
from copml.project import Project
from copml.spec import Policy
from copml.store import actions, json_safe, open_store, policy_evaluations

_OUTCOMES = {True: "true", False: "false", None: "unknown"}


@dataclass
class Evaluation:
    """One policy on the window ending at ``window_end``; ``note`` says why it held back."""

    policy: str
    window_end: datetime
    outcome: bool | None
    acted: bool
    note: str
    values: dict[str, list[float | None]]


def _cooldown_until(project: Project, policy: Policy, last_end: datetime) -> datetime:
    assert policy.cooldown is not None
    if policy.cooldown.unit == "window":
        step = project.spec.effectiveness.window.offset() * policy.cooldown.amount
    else:
        step = policy.cooldown.offset()
    return (pd.Timestamp(last_end) + step).to_pydatetime()


def _last_acted(engine: Engine, policy: str) -> datetime | None:
    """The end of the last window this policy created actions for."""
    with engine.connect() as conn:
        found = conn.execute(
            select(actions.c.window_end)
            .where(actions.c.policy == policy)
            .order_by(actions.c.window_end.desc())
            .limit(1)
        ).scalar()
    return times.utc(found) if found is not None else None


def _held_back(
    engine: Engine,
    project: Project,
    policy: Policy,
    end: datetime,
    flagged: bool,
    halted: oversight.Halt | None,
) -> str:
    """Why a policy that holds does not act on the window ending at ``end`` ("" if it acts)."""
    if policy.cooldown is not None:
        last = _last_acted(engine, policy.name)
        if last is not None and last >= end:
            return "already acted on this window"
        if last is not None and end < (until := _cooldown_until(project, policy, last)):
            return f"cooling down until {until}"
    if flagged and "retrain" in policy.do:
        return "automated retraining suspended: project under re-evaluation"
    if halted is not None and not set(policy.do) <= oversight.ALLOWED_WHILE_HALTED:
        return f"automation suspended: halted by {halted.actor} ({halted.reason})"
    return ""


def evaluate(project: Project, windows: list[Window], at: datetime) -> list[Evaluation]:
    """Evaluate every policy over the windows (oldest first) and store each evaluation."""
    if not windows:
        return []
    engine = open_store(project.db_url)
    figures = [w.metrics for w in windows]
    end = windows[-1].end
    flagged = suspended(engine, project) is not None
    halted = oversight.current(engine, project)
    out = []
    for policy in project.spec.policies:
        verdict = policies.evaluate(policy.condition, figures)
        note = ""
        if verdict.outcome is True:
            note = _held_back(engine, project, policy, end, flagged, halted)
        acted = verdict.outcome is True and not note
        with engine.begin() as conn:
            conn.execute(
                insert(policy_evaluations).values(
                    policy=policy.name,
                    window_end=end,
                    evaluated_at=at,
                    outcome=_OUTCOMES[verdict.outcome],
                    acted=acted,
                    note=note or None,
                    values=json_safe(verdict.values),
                )
            )
        out.append(Evaluation(policy.name, end, verdict.outcome, acted, note, verdict.values))
    return out
