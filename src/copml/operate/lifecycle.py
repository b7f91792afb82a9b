"""The lifecycle of a model version (design §5): gate, approve, promote, roll back, retire.

Every transition is an event with actor, reason and evidence; the rules live here so the
CLI, the policies and the dashboard cannot take a different path around them.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from copml import events, registry, rollout, snapshots
from copml.errors import CopmlError
from copml.evaluation import minimum_failures, split_holdout
from copml.kinds import kind_for
from copml.project import Project
from copml.spec import Spec
from copml.store import open_store


def _subject(project: Project, version: str) -> str:
    return events.model_subject(project.spec.project, version)


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}


@dataclass
class GateReport:
    """The candidate against the minimums and the champion, on the same evaluation rows."""

    candidate: str
    champion: str | None
    passed: bool
    reasons: list[str]
    metric: str
    rows: int
    snapshot_id: str
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)

    def evidence(self) -> dict[str, Any]:
        return asdict(self)


def champion_shortfall(
    spec: Spec, mine: Mapping[str, float], theirs: Mapping[str, float], champion: str
) -> str | None:
    """Why a candidate with figures ``mine`` does not beat the champion's ``theirs`` by the
    promotion metric, or None when it does.

    The gain is taken the way the task's metric table says is better (a lower RMSE or log
    loss is a gain) and must reach ``min_gain``; a figure missing or undefined on either
    side is no evidence of a gain, so it refuses."""
    metric, min_gain = spec.promotion.metric, spec.promotion.min_gain
    new, old = mine.get(metric, math.nan), theirs.get(metric, math.nan)
    gain = spec.metrics.gain(metric, new, old)
    if gain >= min_gain:
        return None
    if math.isnan(gain):
        side = "the candidate" if math.isnan(new) else f"champion v{champion}"
        return f"{metric} is not measured for {side}: nothing shows the candidate is better"
    better = spec.metrics.direction(metric, spec.classes)
    return (
        f"{metric} {new:.4f} against champion v{champion}'s {old:.4f} ({better} is "
        f"better): a gain of {gain:+.4f}, short of min_gain {min_gain:g}"
    )


def gate(
    project: Project, version: str, *, actor: str = "system", at: datetime | None = None
) -> GateReport:
    """Validate ``version``: it must meet the declared minimums and match or beat the
    champion by the promotion metric (a gain of ``min_gain`` or more, the metric's better
    way: see :func:`champion_shortfall`) on the candidate's holdout rows, which both
    models score. The report is stored as an event either way."""
    spec = project.spec
    engine = open_store(project.db_url)
    candidate = registry.get(project, version)
    current = registry.champion(project)
    # An imported version has no training snapshot: it is measured on the latest one's
    # holdout, split as training splits it.
    if candidate.snapshot_id:
        snap = snapshots.get(engine, candidate.snapshot_id)
    else:
        snap = snapshots.latest(engine)
    assert snap is not None
    kind = kind_for(spec)
    frame = kind.training_frame(project, snap)
    seed = candidate.tagged_lineage.seed_or(spec.model.seed)
    holdout = split_holdout(frame, spec.data.target, spec.model.holdout, seed)
    features = frame.loc[holdout, kind.model_inputs(project, frame)].reset_index(drop=True)
    actual = frame.loc[holdout, spec.data.target].to_numpy()

    def measure(mv: registry.ModelVersion) -> dict[str, float]:
        return kind.holdout_metrics(project, registry.load(project, mv), features, actual)[1]

    mine = measure(candidate)
    reasons = minimum_failures(project, mine)
    theirs: dict[str, float] = {}
    if current is not None and current.version != candidate.version:
        theirs = measure(current)
        shortfall = champion_shortfall(spec, mine, theirs, current.version)
        if shortfall:
            reasons.append(shortfall)
    report = GateReport(
        candidate=version,
        champion=current.version if current else None,
        passed=not reasons,
        reasons=reasons,
        metric=spec.promotion.metric,
        rows=int(holdout.sum()),
        snapshot_id=snap.id,
        candidate_metrics=_finite(mine),
        champion_metrics=_finite(theirs),
    )
    registry.set_state(project, version, "validated" if report.passed else "refused")
    with engine.begin() as conn:
        events.record(
            conn,
            events.Kind.MODEL_VALIDATED if report.passed else events.Kind.MODEL_REFUSED,
            actor=actor,
            subject=_subject(project, version),
            reason="passes the gate" if report.passed else "; ".join(reasons),
            evidence=report.evidence(),
            at=at,
        )
    return report


def needs_approval(project: Project) -> bool:
    return project.spec.impact == "high" or project.spec.promotion.require_approval


def approve(
    project: Project, version: str, *, actor: str, reason: str, at: datetime | None = None
) -> None:
    """Record a person's approval of ``version`` for promotion."""
    if not actor.startswith("user:"):
        raise CopmlError("approval is a human act: only a person (user:<name>) can approve")
    if not reason.strip():
        raise CopmlError("an approval needs a reason")
    registry.get(project, version)  # exists, or NotFoundError
    with open_store(project.db_url).begin() as conn:
        events.record(
            conn,
            events.Kind.MODEL_APPROVED,
            actor=actor,
            subject=_subject(project, version),
            reason=reason,
            at=at,
        )


def _latest(project: Project, kind: events.Kind, version: str) -> dict[str, Any] | None:
    return events.latest(open_store(project.db_url), kind, _subject(project, version))


def approved(project: Project, version: str) -> bool:
    """Whether a person's approval of ``version`` is recorded."""
    return _latest(project, events.Kind.MODEL_APPROVED, version) is not None


def promotable(project: Project, version: str) -> list[str]:
    """Why ``version`` may not be promoted now; empty when it may."""
    why = []
    validated = _latest(project, events.Kind.MODEL_VALIDATED, version)
    refused = _latest(project, events.Kind.MODEL_REFUSED, version)
    if validated is None or (refused is not None and refused["id"] > validated["id"]):
        why.append(f"v{version} has not passed the gate (copml models validate {version})")
    if needs_approval(project) and not approved(project, version):
        why.append(
            f"v{version} needs a recorded approval (impact: {project.spec.impact}"
            f"{', require_approval' if project.spec.promotion.require_approval else ''}): "
            f"copml models approve {version} --reason ..."
        )
    retired = _latest(project, events.Kind.MODEL_RETIRED, version)
    if retired is not None:
        why.append(f"v{version} is retired")
    return why


def promote(
    project: Project,
    version: str,
    *,
    actor: str,
    reason: str,
    at: datetime | None = None,
    gate_first: bool = False,
) -> None:
    """Make ``version`` the champion: only after the gate, and an approval where required."""
    if gate_first:  # a person promoting by hand still goes through the gate
        gate(project, version, actor=actor, at=at)
    why = promotable(project, version)
    if why:
        raise CopmlError(f"cannot promote v{version}: " + "; ".join(why))
    current = registry.champion(project)
    if current is not None and current.version == version:
        return
    engine = open_store(project.db_url)
    registry.promote(project, engine, version, actor=actor, reason=reason, at=at)
    if current is not None:
        registry.set_state(project, current.version, "archived")
    running = rollout.current(engine, project.spec.project)
    if version in (running.shadow, running.canary):  # it answers everyone now
        ended = rollout.Rollout(
            shadow=None if running.shadow == version else running.shadow,
            canary=None if running.canary == version else running.canary,
            share=0.0 if running.canary == version else running.share,
        )
        _set_rollout(project, version, ended, actor=actor, reason=f"promoted: {reason}", at=at)


def record_live_comparison(
    project: Project,
    version: str,
    *,
    condition: str | None,
    values: Mapping[str, Any],
    actor: str,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Record that ``version``, running beside the champion, passed on live traffic: a
    gate report whose evidence is the newest window's figures of its arm against the
    champion's and the condition that held (the holdout gate it passed before stays on
    record). Returns the evidence."""
    from copml.monitor.window import history

    running = rollout.current(open_store(project.db_url), project.spec.project)
    arm = rollout.CANARY if running.canary == version else rollout.SHADOW
    windows = history(project, limit=1)
    figures = windows[-1].metrics if windows else {}

    def of(prefix: str) -> dict[str, float]:
        found = {k.split(".", 1)[1]: v for k, v in figures.items() if k.startswith(prefix + ".")}
        return _finite(found)

    current = registry.champion(project)
    evidence = {
        "candidate": version,
        "champion": current.version if current else None,
        "passed": True,
        "reasons": [],
        "metric": project.spec.promotion.metric,
        "live": arm,
        "condition": condition,
        "values": dict(values),
        "window_end": str(windows[-1].end) if windows else None,
        "rows": int(figures.get(f"{arm}.labelled", 0) or 0),
        "candidate_metrics": of(arm),
        "champion_metrics": of(rollout.CHAMPION),
    }
    with open_store(project.db_url).begin() as conn:
        events.record(
            conn,
            events.Kind.MODEL_VALIDATED,
            actor=actor,
            subject=_subject(project, version),
            reason=f"passes on live traffic as {arm}: {condition}",
            evidence=evidence,
            at=at,
        )
    return evidence


def _validated(project: Project, version: str) -> list[str]:
    """Why ``version`` may not run beside the champion; empty when it may."""
    why = [w for w in promotable(project, version) if "approval" not in w]
    current = registry.champion(project)
    if current is not None and current.version == version:
        why.append(f"v{version} is the champion")
    return why


def _set_rollout(
    project: Project,
    version: str,
    new: rollout.Rollout,
    *,
    actor: str,
    reason: str,
    at: datetime | None,
) -> rollout.Rollout:
    engine = open_store(project.db_url)
    with engine.begin() as conn:
        rollout.record(conn, project.spec.project, version, new, actor=actor, reason=reason, at=at)
    registry.mirror_alias(project, rollout.SHADOW, new.shadow)
    registry.mirror_alias(project, rollout.CANARY, new.canary if new.share > 0 else None)
    return new


def shadow(
    project: Project, version: str, *, actor: str, reason: str, at: datetime | None = None
) -> rollout.Rollout:
    """Run ``version`` in shadow: it scores every request and batch beside the champion,
    logged with its own version, and answers no one. It must have passed the gate."""
    why = _validated(project, version)
    if why:
        raise CopmlError(f"cannot shadow v{version}: " + "; ".join(why))
    before = rollout.current(open_store(project.db_url), project.spec.project)
    new = dataclasses.replace(before, shadow=version)
    return _set_rollout(project, version, new, actor=actor, reason=reason, at=at)


def canary(
    project: Project,
    version: str,
    share: float,
    *,
    actor: str,
    reason: str,
    at: datetime | None = None,
) -> rollout.Rollout:
    """Let ``version`` answer ``share`` (0 < share < 1) of entities. It answers people, so
    it needs what a promotion needs: the gate, and an approval where the spec asks one."""
    if not 0.0 < share < 1.0:
        raise CopmlError(
            f"a canary's share must lie between 0 % and 100 % (exclusive), not {share:.0%}: "
            "0 % is `copml models abort`, 100 % is a promotion"
        )
    why = [*_validated(project, version)]
    why += [w for w in promotable(project, version) if "approval" in w]
    if why:
        raise CopmlError(f"cannot make v{version} a canary: " + "; ".join(why))
    before = rollout.current(open_store(project.db_url), project.spec.project)
    # A shadow that becomes the canary answers now: it no longer runs in shadow too.
    shadow = None if before.shadow == version else before.shadow
    new = rollout.Rollout(shadow=shadow, canary=version, share=share)
    return _set_rollout(project, version, new, actor=actor, reason=reason, at=at)


def abort(
    project: Project,
    *,
    actor: str,
    reason: str,
    arm: str = rollout.CANARY,
    at: datetime | None = None,
) -> rollout.Rollout:
    """End the canary (back to 0 %: the champion answers everyone) or the shadow."""
    before = rollout.current(open_store(project.db_url), project.spec.project)
    version = before.canary if arm == rollout.CANARY else before.shadow
    if version is None:
        raise CopmlError(f"there is no {arm} to end")
    new = (
        dataclasses.replace(before, canary=None, share=0.0)
        if arm == rollout.CANARY
        else dataclasses.replace(before, shadow=None)
    )
    return _set_rollout(project, version, new, actor=actor, reason=reason, at=at)


def rollback(project: Project, *, actor: str, reason: str, at: datetime | None = None) -> str:
    """Move the champion back to the version it replaced; returns that version."""
    current = registry.champion(project)
    if current is None:
        raise CopmlError("there is no champion to roll back")
    promoted = _latest(project, events.Kind.MODEL_PROMOTED, current.version)
    previous = (promoted or {}).get("evidence", {}).get("previous")
    if not previous:
        raise CopmlError(
            f"v{current.version} replaced no earlier champion: nothing to roll back to"
        )
    engine = open_store(project.db_url)
    registry.promote(
        project,
        engine,
        previous,
        actor=actor,
        reason=reason,
        at=at,
        kind=events.Kind.MODEL_ROLLED_BACK,
        evidence={"from": current.version},
    )
    registry.set_state(project, current.version, "rolled_back")
    return str(previous)


@dataclass
class Retirement:
    versions: list[str]
    freed_bytes: int
    kept: str


def retire(
    project: Project,
    version: str | None = None,
    *,
    actor: str,
    reason: str,
    at: datetime | None = None,
) -> Retirement:
    """Retire one version, or the model (``version=None``: every version, nothing served).

    The versions stay in the registry, archived, and their audit records stay in the
    store for the declared retention; what is freed is the local model copies.
    """
    engine = open_store(project.db_url)
    current = registry.champion(project)
    chosen = [registry.get(project, version)] if version else registry.versions(project)
    freed = 0
    for mv in chosen:
        if current is not None and mv.version == current.version:
            registry.demote(project)
        registry.set_state(project, mv.version, "retired")
        local = project.models_dir / mv.version
        if local.exists():
            freed += sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
            shutil.rmtree(local, ignore_errors=True)
    retention = project.spec.retention.predictions
    kept = f"prediction records kept for {retention.amount} {retention.unit}(s)"
    with engine.begin() as conn:
        for mv in chosen:
            events.record(
                conn,
                events.Kind.MODEL_RETIRED,
                actor=actor,
                subject=_subject(project, mv.version),
                reason=reason,
                at=at,
            )
        if version is None:
            events.record(
                conn,
                events.Kind.PROJECT_RETIRED,
                actor=actor,
                subject=events.project_subject(project.spec.project),
                reason=reason,
                evidence={"versions": [mv.version for mv in chosen], "freed_bytes": freed},
                at=at,
            )
    return Retirement([mv.version for mv in chosen], freed, kept)


def is_retired(project: Project) -> bool:
    engine = open_store(project.db_url)
    return (
        events.latest(
            engine, events.Kind.PROJECT_RETIRED, events.project_subject(project.spec.project)
        )
        is not None
    )
