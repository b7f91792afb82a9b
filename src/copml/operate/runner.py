"""Policies watch the metric windows and act (design §4, §8).

Each evaluation is stored with the figures that decided it. A policy that holds creates
its actions as rows in the store, ``pending``; they run in order as a persisted state
machine ``pending → running → succeeded | failed``. Creating them is idempotent (one set
per policy and window), a cooldown keeps a policy from acting again too soon, and an
action whose process died is found by the next pass, marked failed and retried, so no
action is ever left half done.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, and_, insert, select, update

from copml import events, policies, registry, times
from copml.errors import CopmlError
from copml.monitor.window import Window, consecutive
from copml.operate import alerts as delivery
from copml.operate import lifecycle
from copml.project import Project
from copml.spec import Policy
from copml.store import actions, alerts, json_safe, open_store, policy_evaluations

MAX_ATTEMPTS = 3
# Actions that still run when an earlier one in the same chain failed: people must hear.
_ALWAYS = {"alert", "reevaluate", "review"}


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str | None) -> bool:
    """Whether the process that claimed an action still runs (same host only)."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's process: not ours to judge
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


@dataclass
class Evaluation:
    policy: str
    window_end: datetime
    outcome: bool | None
    acted: bool
    note: str
    values: dict[str, list[float | None]]


@dataclass
class Pass:
    """What one ``operate`` pass did."""

    at: datetime
    recovered: list[int] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- evaluation


def _cooldown_until(project: Project, policy: Policy, last_end: datetime) -> datetime:
    assert policy.cooldown is not None
    if policy.cooldown.unit == "window":
        step = project.spec.effectiveness.window.offset() * policy.cooldown.amount
    else:
        step = policy.cooldown.offset()
    return (pd.Timestamp(last_end) + step).to_pydatetime()


def _last_acted(engine: Engine, policy: str) -> datetime | None:
    with engine.connect() as conn:
        found = conn.execute(
            select(actions.c.window_end)
            .where(actions.c.policy == policy)
            .order_by(actions.c.window_end.desc())
            .limit(1)
        ).scalar()
    return times.utc(found) if found is not None else None


def suspended(engine: Engine, project: Project) -> dict[str, Any] | None:
    """The re-evaluation flag, while no owner has acknowledged it."""
    subject = f"project:{project.spec.project}"
    flagged = events.latest(engine, "project.reevaluate", subject)
    if flagged is None:
        return None
    acked = events.latest(engine, "project.acknowledged", subject)
    return flagged if acked is None or acked["id"] < flagged["id"] else None


def evaluate(project: Project, windows: list[Window], at: datetime) -> list[Evaluation]:
    """Evaluate every policy over the windows (oldest first) and store each evaluation."""
    if not windows:
        return []
    engine = open_store(project.db_url)
    figures = [w.metrics for w in windows]
    end = windows[-1].end
    flag = suspended(engine, project)
    out = []
    for policy in project.spec.policies:
        verdict = policies.evaluate(policy.condition, figures)
        acted, note = verdict.outcome is True, ""
        if acted and policy.cooldown is not None:
            last = _last_acted(engine, policy.name)
            until = _cooldown_until(project, policy, last) if last is not None else None
            if last is not None and last >= end:
                acted, note = False, "already acted on this window"
            elif until is not None and end < until:
                acted, note = False, f"cooling down until {until}"
        if acted and flag is not None and "retrain" in policy.do:
            acted, note = False, "automated retraining suspended: project under re-evaluation"
        outcome = {True: "true", False: "false", None: "unknown"}[verdict.outcome]
        with engine.begin() as conn:
            conn.execute(
                insert(policy_evaluations).values(
                    policy=policy.name,
                    window_end=end,
                    evaluated_at=at,
                    outcome=outcome,
                    acted=acted,
                    note=note or None,
                    values=json_safe(verdict.values),
                )
            )
        out.append(Evaluation(policy.name, end, verdict.outcome, acted, note, verdict.values))
    return out


def _plan(project: Project, evaluation: Evaluation, at: datetime) -> None:
    """Create the policy's actions for this window, once (the unique key makes it so)."""
    policy = next(p for p in project.spec.policies if p.name == evaluation.policy)
    engine = open_store(project.db_url)
    with engine.begin() as conn:
        exists = conn.execute(
            select(actions.c.id).where(
                actions.c.policy == policy.name, actions.c.window_end == evaluation.window_end
            )
        ).first()
        if exists:
            return
        for kind in policy.do:
            conn.execute(
                insert(actions).values(
                    kind=kind,
                    policy=policy.name,
                    window_end=evaluation.window_end,
                    state="pending",
                    created_at=at,
                    attempt=1,
                    evidence=json_safe(
                        {"when": policy.when, "values": evaluation.values, "chain": policy.do}
                    ),
                )
            )
        events.record(
            conn,
            "policy.fired",
            actor=f"policy:{policy.name}",
            subject=f"project:{project.spec.project}",
            reason=policy.when,
            evidence=json_safe({"values": evaluation.values, "do": policy.do}),
            at=at,
        )


# ------------------------------------------------------------------------------- recovery


def recover(project: Project, at: datetime) -> list[int]:
    """Actions left ``running`` by a process that died: failed, then retried as pending."""
    engine = open_store(project.db_url)
    with engine.connect() as conn:
        stale = [
            dict(r._mapping)
            for r in conn.execute(select(actions).where(actions.c.state == "running"))
            if not _alive(r.owner)
        ]
    recovered = []
    for row in stale:
        if row["kind"] == "retrain":
            _fail_open_runs(project, row["id"])
        with engine.begin() as conn:
            done = conn.execute(
                update(actions)
                .where(actions.c.id == row["id"], actions.c.state == "running")
                .values(
                    state="failed",
                    finished_at=at,
                    error=f"interrupted: process {row['owner']} ended during the action",
                )
            ).rowcount
            if not done:
                continue
            if row["attempt"] < MAX_ATTEMPTS:
                conn.execute(
                    insert(actions).values(
                        kind=row["kind"],
                        policy=row["policy"],
                        window_end=row["window_end"],
                        state="pending",
                        created_at=at,
                        attempt=row["attempt"] + 1,
                        evidence={**row["evidence"], "retry_of": row["id"]},
                    )
                )
            events.record(
                conn,
                "action.recovered",
                actor="system",
                subject=f"action:{row['id']}",
                reason=f"{row['kind']} interrupted (owner {row['owner']} is gone)",
                evidence={"attempt": row["attempt"], "retried": row["attempt"] < MAX_ATTEMPTS},
                at=at,
            )
        recovered.append(row["id"])
    return recovered


def _fail_open_runs(project: Project, action_id: int) -> None:
    """MLflow runs the interrupted retrain left RUNNING are marked FAILED (nothing was
    registered from them: registration is the run's last step)."""
    client = registry.client(project)
    experiment = client.get_experiment_by_name(project.spec.project)
    if experiment is None:
        return
    for run in client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`copml.action` = '{action_id}' and attributes.status = 'RUNNING'",
    ):
        client.set_terminated(run.info.run_id, status="FAILED")


# ------------------------------------------------------------------------------ execution


def _claim(engine: Engine, action_id: int, at: datetime) -> bool:
    with engine.begin() as conn:
        return bool(
            conn.execute(
                update(actions)
                .where(actions.c.id == action_id, actions.c.state == "pending")
                .values(state="running", started_at=at, owner=_owner())
            ).rowcount
        )


def _finish(engine: Engine, action_id: int, state: str, at: datetime, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(actions)
            .where(actions.c.id == action_id)
            .values(state=state, finished_at=at, **{k: json_safe(v) for k, v in values.items()})
        )


def _chain(engine: Engine, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The other actions of the same policy and window, in creation order."""
    with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(
                select(actions)
                .where(
                    and_(
                        actions.c.policy == row["policy"], actions.c.window_end == row["window_end"]
                    )
                )
                .order_by(actions.c.id)
            )
        ]


def _candidate(chain: list[dict[str, Any]], project: Project) -> str | None:
    """The version this chain works on: the one its retrain registered, else the newest
    version that is not the champion."""
    for row in reversed(chain):
        if row["kind"] == "retrain" and row["state"] == "succeeded" and row["result"]:
            return str(row["result"]["version"])
    current = int(champion.version) if (champion := registry.champion(project)) else 0
    newer = [mv.version for mv in registry.versions(project) if int(mv.version) > current]
    return newer[0] if newer else None  # versions() lists the newest first


def webhook_secret(project: Project) -> bytes:
    """``COPML_WEBHOOK_SECRET`` when set, else derived from the project's secret key."""
    given = os.environ.get("COPML_WEBHOOK_SECRET")
    if given:
        return given.encode()
    return hmac.new(project.pii_key, b"copml-webhook", hashlib.sha256).digest()


def open_alert(
    project: Project,
    key: str,
    title: str,
    details: dict[str, Any],
    at: datetime,
    *,
    severity: str = "warning",
    extra_email: list[str] | None = None,
) -> dict[str, Any]:
    """Send an alert unless one with the same key is still open (de-duplication)."""
    engine = open_store(project.db_url)
    with engine.connect() as conn:
        already = conn.execute(
            select(alerts.c.id).where(alerts.c.key == key, alerts.c.closed_at.is_(None))
        ).first()
    if already is not None:
        return {"deduplicated": True, "alert_id": already.id}
    config = project.spec.alerts
    if extra_email:
        config = config.model_copy(update={"email": sorted({*config.email, *extra_email})})
    alert = delivery.Alert(
        key=key,
        project=project.spec.project,
        title=title,
        severity=severity,
        at=at,
        details=json_safe(details),
    )
    sent = delivery.deliver(alert, config, webhook_secret(project))
    records = [d.__dict__ for d in sent]
    with engine.begin() as conn:
        alert_id = conn.execute(
            insert(alerts).values(
                key=key,
                opened_at=at,
                title=title,
                details=json_safe(details),
                deliveries=records,
            )
        ).inserted_primary_key[0]
        events.record(
            conn,
            "alert.opened",
            actor="system",
            subject=f"alert:{alert_id}",
            reason=title,
            evidence={"key": key, "deliveries": records},
            at=at,
        )
    return {"alert_id": alert_id, "deliveries": records}


def close_alerts(project: Project, key: str, at: datetime, reason: str) -> int:
    engine = open_store(project.db_url)
    with engine.begin() as conn:
        closed = conn.execute(
            update(alerts)
            .where(alerts.c.key == key, alerts.c.closed_at.is_(None))
            .values(closed_at=at)
        ).rowcount
        if closed:
            events.record(
                conn,
                "alert.closed",
                actor="system",
                subject=f"alert-key:{key}",
                reason=reason,
                at=at,
            )
    return closed


def _gated(project: Project, version: str, actor: str, at: datetime) -> lifecycle.GateReport:
    """The gate's report for ``version``; a refusal fails the action with its reasons."""
    report = lifecycle.gate(project, version, actor=actor, at=at)
    if not report.passed:
        raise CopmlError(f"v{version} refused by the gate: " + "; ".join(report.reasons))
    return report


def _run_one(project: Project, row: dict[str, Any], at: datetime) -> dict[str, Any]:
    """Carry out one action; returns its result (raises on failure)."""
    kind, policy = row["kind"], row["policy"] or "manual"
    actor = f"policy:{policy}"
    chain = _chain(open_store(project.db_url), row)
    values = row["evidence"].get("values", {})
    if kind == "retrain":
        from copml.operate.retrain import retrain

        # The run is tagged with the action, so that recovery can find it if we die.
        done = retrain(project, actor=actor, at=at, run_tags={"copml.action": str(row["id"])})
        return {
            "version": done.result.version,
            "run_id": done.result.run_id,
            "snapshot_id": done.snapshot_id,
            "source_rows": done.source_rows,
            "production_rows": done.production_rows,
            "holdout": done.result.metrics,
        }
    if kind in ("validate", "promote", "approve"):
        version = _candidate(chain, project)
        if version is None:
            raise CopmlError("no candidate version to work on")
        if kind == "validate":
            return _gated(project, version, actor, at).evidence()
        if kind == "approve":
            if not lifecycle.needs_approval(project):
                return {"version": version, "approval": "not required"}
            if lifecycle.approved(project, version):
                return {"version": version, "approval": "recorded"}
            opened = open_alert(
                project,
                f"approval:{version}",
                f"v{version} awaits approval before promotion",
                {"version": version, "policy": policy},
                at,
            )
            raise CopmlError(
                f"v{version} awaits a person's approval (copml models approve {version} "
                f"--reason ...); alert {opened.get('alert_id')}"
            )
        if not any(r["kind"] == "validate" and r["state"] == "succeeded" for r in chain):
            _gated(project, version, actor, at)  # a chain without validate still passes the gate
        lifecycle.promote(project, version, actor=actor, reason=f"policy {policy}", at=at)
        return {"version": version}
    if kind == "redeploy":
        current = registry.champion(project)
        if current is None:
            raise CopmlError("no champion to deploy")
        mode = project.spec.serving.mode
        with open_store(project.db_url).begin() as conn:
            events.record(
                conn,
                "model.redeployed",
                actor=actor,
                subject=f"model:{project.spec.project}/{current.version}",
                reason=(
                    "the next batch run scores with it"
                    if mode == "batch"
                    else "servers follow the champion alias and swap without downtime"
                ),
                at=at,
            )
        return {"version": current.version, "mode": mode}
    if kind == "rollback":
        return {
            "version": lifecycle.rollback(project, actor=actor, reason=f"policy {policy}", at=at)
        }
    if kind == "alert":
        return open_alert(
            project,
            f"policy:{policy}",
            f"policy {policy} holds: {row['evidence'].get('when')}",
            {"values": values, "window_end": str(row["window_end"])},
            at,
        )
    if kind == "review":
        return open_alert(
            project,
            f"review:{policy}",
            f"a person should review: {row['evidence'].get('when')}",
            {"values": values},
            at,
        )
    if kind == "reevaluate":
        if (flag := suspended(open_store(project.db_url), project)) is not None:
            return {"flagged": True, "already": True, "since": str(flag["at"])}
        owners = project.spec.owners
        emails = [
            e
            for e in (owners.data_engineering, owners.data_science, owners.ml_ops, owners.business)
            if e and "@" in e
        ]
        with open_store(project.db_url).begin() as conn:
            events.record(
                conn,
                "project.reevaluate",
                actor=actor,
                subject=f"project:{project.spec.project}",
                reason=f"policy {policy}: {row['evidence'].get('when')}",
                evidence={"values": values},
                at=at,
            )
        sent = open_alert(
            project,
            f"reevaluate:{policy}",
            "the project needs re-evaluation: automated retraining is suspended until an owner "
            "acknowledges (copml acknowledge --reason ...)",
            {"values": values},
            at,
            severity="critical",
            extra_email=emails,
        )
        return {"flagged": True, **sent}
    if kind == "retire":
        done = lifecycle.retire(project, actor=actor, reason=f"policy {policy}", at=at)
        return done.__dict__
    raise CopmlError(f"unknown action {kind!r}")


def execute_pending(project: Project, at: datetime) -> list[dict[str, Any]]:
    """Run every pending action in order; a failure skips the rest of its chain."""
    engine = open_store(project.db_url)
    with engine.connect() as conn:
        pending = [
            dict(r._mapping)
            for r in conn.execute(
                select(actions).where(actions.c.state == "pending").order_by(actions.c.id)
            )
        ]
    # A chain runs in its declared order, also when a retry was created after later steps.
    first = {}
    for row in pending:
        first.setdefault((row["policy"], row["window_end"]), row["id"])

    def order(row: dict[str, Any]) -> tuple[int, int, int]:
        chain = row["evidence"].get("chain", [])
        step = chain.index(row["kind"]) if row["kind"] in chain else len(chain)
        return first[(row["policy"], row["window_end"])], step, row["id"]

    done = []
    for row in sorted(pending, key=order):
        chain = _chain(engine, row)
        steps = row["evidence"].get("chain", [])
        mine = steps.index(row["kind"]) if row["kind"] in steps else len(steps)
        earlier = [r for r in chain if r["kind"] in steps[:mine]]
        broken = [
            r
            for r in earlier
            if r["state"] == "failed"
            and r["kind"] not in _ALWAYS
            and not any(x["kind"] == r["kind"] and x["id"] > r["id"] for x in chain)
        ]
        if broken and row["kind"] not in _ALWAYS:
            skipped = f"skipped: {broken[0]['kind']} failed"
            if _claim(engine, row["id"], at):
                _finish(engine, row["id"], "failed", at, error=skipped)
            done.append({**row, "state": "failed", "error": skipped})
            continue
        if not _claim(engine, row["id"], at):
            continue  # another process took it
        try:
            result = _run_one(project, row, at)
        except Exception as exc:
            message = (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, CopmlError) else str(exc)
            )
            _finish(engine, row["id"], "failed", at, error=message[:2000])
            done.append({**row, "state": "failed", "error": message})
            continue
        _finish(engine, row["id"], "succeeded", at, result=result)
        done.append({**row, "state": "succeeded", "result": result})
    return done


def operate_once(project: Project, *, at: datetime | None = None) -> Pass:
    """Recover interrupted actions, evaluate the policies on the stored windows, act."""
    at = times.utc(at or datetime.now(UTC))
    result = Pass(at)
    if lifecycle.is_retired(project):
        return result
    result.recovered = recover(project, at)
    needed = max((policies.windows_needed(p.condition) for p in project.spec.policies), default=1)
    windows = consecutive(project, at, needed)  # `for N windows`: N periods in a row
    result.evaluations = evaluate(project, windows, at)
    for evaluation in result.evaluations:
        if evaluation.acted:
            _plan(project, evaluation, at)
        elif evaluation.outcome is False:
            for prefix in ("policy", "review"):
                close_alerts(
                    project, f"{prefix}:{evaluation.policy}", at, "the condition no longer holds"
                )
    result.actions = execute_pending(project, at)
    return result


def acknowledge(project: Project, *, actor: str, reason: str, at: datetime | None = None) -> None:
    """An owner acknowledges the re-evaluation flag: automated retraining may resume."""
    engine = open_store(project.db_url)
    if suspended(engine, project) is None:
        raise CopmlError("the project is not flagged for re-evaluation")
    with engine.begin() as conn:
        events.record(
            conn,
            "project.acknowledged",
            actor=actor,
            subject=f"project:{project.spec.project}",
            reason=reason,
            at=at,
        )
    for policy in project.spec.policies:
        if "reevaluate" in policy.do:
            close_alerts(
                project,
                f"reevaluate:{policy.name}",
                at or datetime.now(UTC),
                f"acknowledged by {actor}",
            )


def summary(result: Pass) -> dict[str, Any]:
    return json.loads(
        json.dumps(
            {
                "at": result.at.isoformat(),
                "steps": getattr(result, "steps", []),
                "recovered": result.recovered,
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
