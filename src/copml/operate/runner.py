"""One ``operate`` pass: policies watch the metric windows and act (design §4, §8).

A pass runs only in the process that leads the store (:mod:`~copml.operate.leadership`),
so two operators on one store act once per window and policy. It sends the deadline alerts
of unreported serious incidents (:func:`copml.incidents.remind`), recovers actions a dead
process left running, evaluates every policy on the stored windows
(:mod:`~copml.operate.evaluation`), plans the actions of the policies that hold and closes
the alerts of those that no longer do (:mod:`~copml.operate.alerts`), then runs the pending
actions (:mod:`~copml.operate.actions`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from copml import incidents, policies, times
from copml.monitor.window import consecutive
from copml.operate import actions, alerts, leadership, lifecycle
from copml.operate.evaluation import Evaluation, evaluate
from copml.project import Project


@dataclass
class Pass:
    """What one ``operate`` pass did."""

    at: datetime
    recovered: list[int] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    # False when another process led the store's pass: this one did nothing.
    led: bool = True
    # Deadline alerts of unreported serious incidents sent by this pass (copml.incidents).
    incident_alerts: list[dict[str, Any]] = field(default_factory=list)


def operate_once(project: Project, *, at: datetime | None = None) -> Pass:
    """Lead the store's pass, or skip it when another process leads (see :func:`operate`)."""
    at = times.utc(at or datetime.now(UTC))
    with leadership.lead(project) as lead:
        if lead is None:
            return Pass(at, led=False)
        return operate(project, at, lead)


def operate(project: Project, at: datetime, lead: leadership.Lead) -> Pass:
    """Recover interrupted actions, evaluate the policies on the stored windows, act; the
    caller leads the store's pass (``lead``)."""
    result = Pass(at)
    # A legal deadline runs whatever the model's state: first, even for a retired model.
    result.incident_alerts = incidents.remind(project, at)
    if lifecycle.is_retired(project):
        return result
    result.recovered = actions.recover(project, at, sole=lead.sole)
    needed = max((policies.windows_needed(p.condition) for p in project.spec.policies), default=1)
    windows = consecutive(project, at, needed)  # `for N windows`: N periods in a row
    result.evaluations = evaluate(project, windows, at)
    for evaluation in result.evaluations:
        if evaluation.acted:
            actions.plan(project, evaluation, at)
        elif evaluation.outcome is False:
            for prefix in ("policy", "review"):
                alerts.close_alerts(
                    project, f"{prefix}:{evaluation.policy}", at, "the condition no longer holds"
                )
    result.actions = actions.execute_pending(project, at)
    return result


def summary(result: Pass) -> dict[str, Any]:
    """The pass as plain JSON, for ``copml operate --json``."""
    return json.loads(
        json.dumps(
            {
                "at": result.at.isoformat(),
                "led": result.led,
                "steps": getattr(result, "steps", []),
                "recovered": result.recovered,
                "incident_alerts": [
                    {k: a.get(k) for k in ("incident", "threshold_percent", "alert_id")}
                    for a in result.incident_alerts
                ],
                "evaluations": [
                    {
                        "policy": e.policy,
                        "window_end": e.window_end.isoformat(),
                        "outcome": e.outcome,
                        "acted": e.acted,
                        "note": e.note,
                        "values": e.values,
                    }
                    for e in result.evaluations
                ],
                "actions": [
                    {
                        "id": a["id"],
                        "kind": a["kind"],
                        "policy": a["policy"],
                        "state": a["state"],
                        "error": a.get("error"),
                    }
                    for a in result.actions
                ],
            },
            default=str,
        )
    )
