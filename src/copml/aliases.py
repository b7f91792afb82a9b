"""Which version served when: every change of the ``champion`` alias and of the rollout
arms (shadow, canary), from the event log, with who made it, why and the gate evidence it
rested on (design §9b, EU AI Act Art. 12: the record that lets a decision be traced).

MLflow keeps only where an alias points now (mlflow/mlflow#2169); the store records every
move, so ``serving_at(t)`` answers for any past moment. For the present moment the answer
is cross-checked with the registry's own aliases: a mismatch (someone moved an alias in
MLflow's UI, outside copml) is reported, never hidden.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from copml import events, rollout, times
from copml.project import Project
from copml.store import events as events_table
from copml.store import open_store

CHAMPION = rollout.CHAMPION
_CHAMPION_KINDS = (
    events.Kind.MODEL_PROMOTED,
    events.Kind.MODEL_ROLLED_BACK,
    events.Kind.MODEL_RETIRED,
)


@dataclass(frozen=True)
class Change:
    """One move: ``alias`` (champion, shadow or canary) now names ``version`` (None: it
    was removed), with the event that made it and the gate report it rested on."""

    at: datetime
    alias: str
    version: str | None
    previous: str | None
    event: str
    actor: str
    reason: str
    share: float | None = None  # the canary's share of entities
    gate: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}

    @property
    def gate_summary(self) -> str:
        """The gate in a few words: where it measured (holdout or live traffic), whether it
        passed, and the deciding metric against the champion's where both are known."""
        if not self.gate:
            return ""
        gate = self.gate
        found = ("live" if gate.get("live") else "holdout") + (
            " passed" if gate.get("passed") else " refused"
        )
        metric = gate.get("metric")
        mine = (gate.get("candidate_metrics") or {}).get(metric)
        theirs = (gate.get("champion_metrics") or {}).get(metric)
        if isinstance(mine, float):
            found += f": {metric} {mine:.3f}"
            if isinstance(theirs, float):
                found += f" vs champion {theirs:.3f}"
        return found


@dataclass(frozen=True)
class Serving:
    """What served at ``at``; ``registry`` (only for the present) is the registry's view,
    and ``consistent`` whether the two agree."""

    at: datetime
    champion: str | None
    shadow: str | None = None
    canary: str | None = None
    share: float = 0.0
    registry: dict[str, str | None] = field(default_factory=dict)
    consistent: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}


def _rows(engine: Engine, project: str, end: datetime | None) -> list[Any]:
    e = events_table.c
    moves = (*_CHAMPION_KINDS, events.Kind.MODEL_ROLLOUT, events.Kind.MODEL_VALIDATED)
    kinds = [k.value for k in moves]
    query = (
        select(e.at, e.kind, e.subject, e.actor, e.reason, e.evidence)
        .where(e.kind.in_(kinds), e.subject.like(events.model_subject(project, "%")))
        .order_by(e.at, e.id)
    )
    if end is not None:
        query = query.where(e.at <= end)
    with engine.connect() as conn:
        return list(conn.execute(query))


def changes(project: Project, *, end: datetime | None = None) -> list[Change]:
    """Every move of the champion and of the arms, oldest first, up to ``end``."""
    engine = open_store(project.db_url)
    name = project.spec.project
    gates: dict[str, dict[str, Any]] = {}  # each version's newest gate report so far
    found: list[Change] = []
    champion: str | None = None
    arms = rollout.Rollout()
    for row in _rows(engine, name, times.utc(end) if end else None):
        version = events.subject_version(str(row.subject))
        at = times.utc(row.at)
        common = {"at": at, "event": str(row.kind), "actor": row.actor, "reason": row.reason}
        if row.kind == events.Kind.MODEL_VALIDATED:  # a holdout gate or a live comparison
            gates[version] = row.evidence or {}
            continue
        if row.kind == events.Kind.MODEL_ROLLOUT:
            now = rollout.Rollout.from_evidence(row.evidence)
            for alias in (rollout.SHADOW, rollout.CANARY):
                before, after = getattr(arms, alias), getattr(now, alias)
                if before == after and (alias == rollout.SHADOW or arms.share == now.share):
                    continue
                share = now.share if alias == rollout.CANARY else None
                gate = gates.get(after) if after else None
                found.append(Change(alias=alias, version=after, previous=before, share=share,
                                    gate=gate, **common))  # fmt: skip
            arms = now
            continue
        after = None if row.kind == events.Kind.MODEL_RETIRED else version
        if row.kind == events.Kind.MODEL_RETIRED and champion != version:
            continue  # a retired version that was not serving moves no alias
        found.append(Change(alias=CHAMPION, version=after, previous=champion,
                            gate=gates.get(after) if after else None, **common))  # fmt: skip
        champion = after
    return found


def serving_at(
    project: Project, at: datetime | None = None, moves: list[Change] | None = None
) -> Serving:
    """What served at ``at`` (default: now), replayed from the changes (``moves``: those
    up to ``at``, when the caller has read them already); for the present, cross-checked
    with the registry's aliases."""
    from copml import registry  # MLflow: only the present's cross-check pays the import

    now = datetime.now(UTC)
    when = times.utc(at) if at is not None else now
    state: dict[str, Any] = {CHAMPION: None, rollout.SHADOW: None, rollout.CANARY: None}
    share = 0.0
    for change in changes(project, end=when) if moves is None else moves:
        state[change.alias] = change.version
        if change.alias == rollout.CANARY:
            share = change.share or 0.0
    serving = Serving(when, state[CHAMPION], state[rollout.SHADOW], state[rollout.CANARY], share)
    if at is not None and when < now:
        return serving
    mv = registry.champion(project)
    seen = {CHAMPION: mv.version if mv else None}
    return Serving(
        when,
        serving.champion,
        serving.shadow,
        serving.canary,
        share,
        registry=seen,
        consistent=seen[CHAMPION] == serving.champion,
    )
