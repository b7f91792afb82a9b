"""What each action does: one small handler per action kind, dispatched from a table.

A handler gets the :class:`Step` it carries out and returns the result stored with the
action; it raises to fail it (a :class:`~copml.errors.CopmlError` says why in words). When a
handler runs, and what happens around a failure, is :mod:`copml.operate.actions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from copml import events, registry, rollout
from copml.errors import CopmlError
from copml.operate import alerts, lifecycle, reevaluation
from copml.project import Project
from copml.store import open_store

# Actions that still run when an earlier one in the same chain failed: people must hear.
ALWAYS = frozenset({"alert", "reevaluate", "review"})


@dataclass(frozen=True)
class Step:
    """One action to carry out: its stored row and the rest of its chain (creation order)."""

    project: Project
    row: dict[str, Any]
    chain: list[dict[str, Any]]
    at: datetime

    @property
    def policy(self) -> str:
        return self.row["policy"] or "manual"

    @property
    def actor(self) -> str:
        return f"policy:{self.policy}"

    @property
    def when(self) -> str | None:
        """The policy's condition, as written."""
        return self.row["evidence"].get("when")

    @property
    def values(self) -> dict[str, Any]:
        """The figures that made the policy hold."""
        return self.row["evidence"].get("values", {})

    def candidate(self) -> str:
        """The version this chain works on: the one its retrain registered, else the newest
        version that is not the champion."""
        for row in reversed(self.chain):
            if row["kind"] == "retrain" and row["state"] == "succeeded" and row["result"]:
                return str(row["result"]["version"])
        champion = registry.champion(self.project)
        current = int(champion.version) if champion else 0
        newer = [mv.version for mv in registry.versions(self.project) if int(mv.version) > current]
        if not newer:
            raise CopmlError("no candidate version to work on")
        return newer[0]  # versions() lists the newest first


def _gated(step: Step, version: str) -> lifecycle.GateReport:
    """The gate's report for ``version``; a refusal fails the action with its reasons."""
    report = lifecycle.gate(step.project, version, actor=step.actor, at=step.at)
    if not report.passed:
        raise CopmlError(f"v{version} refused by the gate: " + "; ".join(report.reasons))
    return report


def _retrain(step: Step) -> dict[str, Any]:
    from copml.operate.retrain import retrain

    # The run is tagged with the action, so that recovery can find it if we die.
    done = retrain(
        step.project, actor=step.actor, at=step.at, run_tags={"copml.action": str(step.row["id"])}
    )
    return {
        "version": done.result.version,
        "run_id": done.result.run_id,
        "snapshot_id": done.snapshot_id,
        "source_rows": done.source_rows,
        "production_rows": done.production_rows,
        "holdout": done.result.metrics,
    }


def _validate(step: Step) -> dict[str, Any]:
    return _gated(step, step.candidate()).evidence()


def _approve(step: Step) -> dict[str, Any]:
    version = step.candidate()
    if not lifecycle.needs_approval(step.project):
        return {"version": version, "approval": "not required"}
    if lifecycle.approved(step.project, version):
        return {"version": version, "approval": "recorded"}
    opened = alerts.open_alert(
        step.project,
        f"approval:{version}",
        f"v{version} awaits approval before promotion",
        {"version": version, "policy": step.policy},
        step.at,
    )
    raise CopmlError(
        f"v{version} awaits a person's approval (copml models approve {version} "
        f"--reason ...); alert {opened.get('alert_id')}"
    )


def _promote(step: Step) -> dict[str, Any]:
    running = _rollout(step)
    live = running.canary or running.shadow
    if live is not None:  # the challenger on live traffic, on the live comparison
        comparison = lifecycle.record_live_comparison(
            step.project,
            live,
            condition=step.when,
            values=step.values,
            actor=step.actor,
            at=step.at,
        )
        lifecycle.promote(
            step.project,
            live,
            actor=step.actor,
            reason=f"policy {step.policy}: live comparison ({step.when})",
            at=step.at,
        )
        return {"version": live, "live_comparison": comparison}
    version = step.candidate()
    if not any(r["kind"] == "validate" and r["state"] == "succeeded" for r in step.chain):
        _gated(step, version)  # a chain without validate still passes the gate
    lifecycle.promote(
        step.project, version, actor=step.actor, reason=f"policy {step.policy}", at=step.at
    )
    return {"version": version}


def _rollout(step: Step) -> rollout.Rollout:
    return rollout.current(open_store(step.project.db_url), step.project.spec.project)


def _shadow(step: Step) -> dict[str, Any]:
    version = step.candidate()
    lifecycle.shadow(
        step.project, version, actor=step.actor, reason=f"policy {step.policy}", at=step.at
    )
    return {"version": version}


def _canary(step: Step) -> dict[str, Any]:
    """The shadow moves to canary when there is one (it has run beside the champion),
    else the chain's candidate; at the spec's ``promotion.canary_share``."""
    version = _rollout(step).shadow or step.candidate()
    share = step.project.spec.promotion.canary_share
    lifecycle.canary(
        step.project, version, share, actor=step.actor, reason=f"policy {step.policy}", at=step.at
    )
    return {"version": version, "share": share}


def _abort(step: Step) -> dict[str, Any]:
    """The canary goes back to 0 % (or, with none, the shadow ends)."""
    running = _rollout(step)
    arm = rollout.CANARY if running.canary else rollout.SHADOW
    version = running.canary or running.shadow
    lifecycle.abort(
        step.project, actor=step.actor, reason=f"policy {step.policy}", arm=arm, at=step.at
    )
    return {"version": version, "arm": arm, "values": step.values}


def _redeploy(step: Step) -> dict[str, Any]:
    project = step.project
    current = registry.champion(project)
    if current is None:
        raise CopmlError("no champion to deploy")
    mode = project.spec.serving.mode
    with open_store(project.db_url).begin() as conn:
        events.record(
            conn,
            events.Kind.MODEL_REDEPLOYED,
            actor=step.actor,
            subject=events.model_subject(project.spec.project, current.version),
            reason=(
                "the next batch run scores with it"
                if mode == "batch"
                else "servers follow the champion alias and swap without downtime"
            ),
            at=step.at,
        )
    return {"version": current.version, "mode": mode}


def _rollback(step: Step) -> dict[str, Any]:
    reason = f"policy {step.policy}"
    return {
        "version": lifecycle.rollback(step.project, actor=step.actor, reason=reason, at=step.at)
    }


def _alert(step: Step) -> dict[str, Any]:
    return alerts.open_alert(
        step.project,
        f"policy:{step.policy}",
        f"policy {step.policy} holds: {step.when}",
        {"values": step.values, "window_end": str(step.row["window_end"])},
        step.at,
    )


def _review(step: Step) -> dict[str, Any]:
    return alerts.open_alert(
        step.project,
        f"review:{step.policy}",
        f"a person should review: {step.when}",
        {"values": step.values},
        step.at,
    )


def _reevaluate(step: Step) -> dict[str, Any]:
    project = step.project
    if (flag := reevaluation.suspended(open_store(project.db_url), project)) is not None:
        return {"flagged": True, "already": True, "since": str(flag["at"])}
    owners = project.spec.owners
    emails = [
        e
        for e in (owners.data_engineering, owners.data_science, owners.ml_ops, owners.business)
        if e and "@" in e
    ]
    reevaluation.flag(
        project,
        actor=step.actor,
        reason=f"policy {step.policy}: {step.when}",
        evidence={"values": step.values},
        at=step.at,
    )
    sent = alerts.open_alert(
        project,
        f"reevaluate:{step.policy}",
        "the project needs re-evaluation: automated retraining is suspended until an owner "
        "acknowledges (copml acknowledge --reason ...)",
        {"values": step.values},
        step.at,
        severity="critical",
        extra_email=emails,
    )
    return {"flagged": True, **sent}


def _retire(step: Step) -> dict[str, Any]:
    done = lifecycle.retire(
        step.project, actor=step.actor, reason=f"policy {step.policy}", at=step.at
    )
    return done.__dict__


HANDLERS: dict[str, Callable[[Step], dict[str, Any]]] = {
    "retrain": _retrain,
    "validate": _validate,
    "approve": _approve,
    "promote": _promote,
    "shadow": _shadow,
    "canary": _canary,
    "abort": _abort,
    "redeploy": _redeploy,
    "rollback": _rollback,
    "alert": _alert,
    "review": _review,
    "reevaluate": _reevaluate,
    "retire": _retire,
}


def run(step: Step) -> dict[str, Any]:
    """Carry out one action; returns its result (raises on failure)."""
    handler = HANDLERS.get(step.row["kind"])
    if handler is None:
        raise CopmlError(f"unknown action {step.row['kind']!r}")
    return handler(step)


def _close_open_runs(project: Project, action_id: int) -> None:
    """MLflow runs the interrupted retrain left RUNNING are marked FAILED."""
    registry.fail_running(project, "copml.action", str(action_id))


# What an action interrupted by a dead process leaves behind, cleaned up before its retry.
ON_INTERRUPT: dict[str, Callable[[Project, int], None]] = {"retrain": _close_open_runs}
