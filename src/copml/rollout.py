"""Safe rollout: a validated challenger beside the champion on live traffic (design §9b).

A *shadow* scores every request off the answer's path and answers no one; a *canary*
answers a sticky share of entities: an entity's keyed hash (never its id) decides, so one
customer always meets the same model, and a request without an id draws by itself.

The state is the newest ``model.rollout`` event (actor, reason, and the whole new state as
evidence): servers and batch scoring read it, and the events are its history. The
registry's ``shadow`` and ``canary`` aliases mirror it for MLflow's own UI.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, select

from copml import events
from copml.store import events as events_table

if TYPE_CHECKING:
    from copml.project import Project

CHAMPION, CANARY, SHADOW = "champion", "canary", "shadow"
ARMS = (CHAMPION, CANARY, SHADOW)

AGREEMENT = ("agreement", "score_correlation", "score_difference")
"""How a shadow's decisions compare with the answered ones on the same rows, known before
any truth lands: the share of equal labels, the Pearson correlation of the scores and their
mean absolute difference; a window metric ``shadow.<name>``."""

ARM_COUNTS = ("predictions", "labelled")


def share(text: str) -> float:
    """A share of entities as people write it, ``10%`` or ``0.1``; ValueError otherwise
    (the range is the caller's: 0 % ends a canary, 100 % is a promotion)."""
    text = text.strip()
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a share (10% or 0.1)") from None


def arm_metric_names(per_arm: set[str]) -> set[str]:
    """A window's metrics per arm (``canary.recall``) from the metrics each arm gets, with
    the counts and the shadow's agreement."""
    each = per_arm | set(ARM_COUNTS)
    return {f"{arm}.{name}" for arm in ARMS for name in each} | {
        f"{SHADOW}.{name}" for name in AGREEMENT
    }


@dataclass(frozen=True)
class Rollout:
    """Who runs beside the champion: the shadow's version, the canary's and its share of
    entities (0 … 1)."""

    shadow: str | None = None
    canary: str | None = None
    share: float = 0.0

    def evidence(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_evidence(cls, found: dict[str, Any] | None) -> Rollout:
        found = found or {}
        return cls(found.get("shadow"), found.get("canary"), float(found.get("share") or 0.0))


def current(engine: Engine, project: str) -> Rollout:
    """The rollout in force: the newest recorded change, or none."""
    e = events_table.c
    query = (
        select(e.evidence)
        .where(
            e.kind == events.Kind.MODEL_ROLLOUT.value,
            e.subject.like(events.model_subject(project, "%")),
        )
        .order_by(e.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        found = conn.execute(query).scalar_one_or_none()
    return Rollout.from_evidence(found)


def record(
    conn: Connection,
    project: str,
    version: str,
    new: Rollout,
    *,
    actor: str,
    reason: str,
    at: datetime | None = None,
) -> None:
    """Record ``new`` as the rollout in force, about ``version``, in the caller's
    transaction."""
    events.record(
        conn,
        events.Kind.MODEL_ROLLOUT,
        actor=actor,
        subject=events.model_subject(project, version),
        reason=reason,
        evidence=new.evidence(),
        at=at,
    )


def in_canary(entity: str | None, share: float, draw: Callable[[], float] = random.random) -> bool:
    """Whether the canary answers this entity: a point in [0, 1) from its keyed hash (the
    key is secret, so nobody picks a model by choosing an id); without an entity, a draw."""
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    if not entity:
        return draw() < share
    digest = hashlib.blake2b(entity.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def load_arm(
    project: Project, engine: Engine, actor: str, version: str | None, arm: str
) -> tuple[str, Any] | None:
    """A rollout arm's version and model for a batch, when one runs (design §9b); one that
    fails to load is refused on record and the champion scores without it."""
    from copml import registry  # the registry talks to MLflow: only a batch pays the import

    if version is None:
        return None
    try:
        return version, registry.load(project, registry.get(project, version))
    except Exception as exc:
        with engine.begin() as conn:
            events.record(
                conn,
                events.Kind.SERVE_REFUSED,
                actor=actor,
                subject=events.model_subject(project.spec.project, version),
                reason=f"{arm} not loaded: {type(exc).__name__}: {exc}"[:500],
            )
        return None
