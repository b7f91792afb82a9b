"""The human-review queue: list open items, resolve one.

One implementation for ``GET/POST /v1/reviews`` of ``copml serve`` and the dashboard, so
a label given in either is ground truth in the same way (stored as feedback, in the same
transaction as the review's closing) and recorded as a ``review.resolved`` event naming
the person.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, case, func, select, update

from copml import events, feedback, prediction_log
from copml.errors import CopmlError, NotFoundError, UnknownPrediction
from copml.kinds import OUT_OF_DISTRIBUTION, kind_for
from copml.spec import Spec
from copml.store import lock_for_writing, predictions, reviews


def count_open(engine: Engine) -> int:
    with engine.connect() as conn:
        query = select(func.count()).select_from(reviews).where(reviews.c.resolved_at.is_(None))
        return int(conn.execute(query).scalar_one())


def open_items(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    """Open items, oldest first, each as its prediction's record plus when it was opened and
    why, beyond its score (``out_of_distribution: …``; None: its score was unsure)."""
    query = (
        select(reviews.c.seq, reviews.c.opened_at, reviews.c.reason)
        .where(reviews.c.resolved_at.is_(None))
        .order_by(reviews.c.seq)
        .limit(max(1, min(limit, 1000)))
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for seq, opened, why in rows:
        found = prediction_log.record_by_seq(engine, seq)
        if found is not None:
            out.append({**found, "opened_at": opened, "reason": why})
    return out


def resolve(
    engine: Engine,
    spec: Spec,
    prediction_id: str,
    label: object,
    *,
    actor: str,
    reason: str | None = None,
) -> float:
    """Close the open review of ``prediction_id`` with the person's ``label`` (stored as
    feedback); returns it coded (:mod:`copml.labels`: 1 = a binary's positive class).

    A label other than the model's decision is an override (EU AI Act Art. 14: a person
    may disregard the output), kept with who, when and ``reason`` beside the review, after
    the reason it was opened for (an input unlike the training data), which stays."""
    seq = prediction_log.resolve(engine, [prediction_id]).iloc[0]
    if pd.isna(seq):
        raise UnknownPrediction(prediction_id)
    target = kind_for(spec).target(spec.data)
    (actual,) = target.encode([label])
    if actual is None:
        raise CopmlError(f"label: {label!r} is {target.refusal()}")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        lock_for_writing(conn)
        decided = conn.execute(
            select(predictions.c.label, predictions.c.score).where(predictions.c.seq == int(seq))
        ).one()
        opened_for = conn.execute(select(reviews.c.reason).where(reviews.c.seq == int(seq)))
        cause = opened_for.scalar_one_or_none()
        # A class is compared by its code; a value (regression) by the value decided.
        model = float(decided.label) if target.classes else float(decided.score)
        overridden = not math.isclose(float(actual), model, rel_tol=0.0, abs_tol=1e-9)
        done = conn.execute(
            update(reviews)
            .where(reviews.c.seq == int(seq), reviews.c.resolved_at.is_(None))
            .values(
                resolved_at=now,
                resolved_by=actor,
                actual=float(actual),
                overridden=overridden,
                reason="\n".join(filter(None, [cause, reason])) or None,
            )
        ).rowcount
        if not done:
            raise NotFoundError("no open review for this prediction")
        outcome = pd.DataFrame({"seq": [int(seq)], "actual": [actual], "observed_at": [now]})
        feedback.apply(conn, outcome, source=f"review:{actor}", at=now)
        said = f"labelled {label!r} by a person" + (", overriding the model" if overridden else "")
        events.record(
            conn,
            events.Kind.REVIEW_RESOLVED,
            actor=actor,
            subject=f"prediction:{prediction_id}",
            reason=f"{said}: {reason}" if reason else said,
            evidence={"actual": actual, "model": model, "overridden": overridden},
            at=now,
        )
    return actual


def overrides(engine: Engine, first_seq: int, last_seq: int) -> tuple[int, int]:
    """(reviews resolved, of them overridden) among the decisions ``first_seq..last_seq``."""
    r = reviews.c
    query = select(func.count(), func.coalesce(func.sum(case((r.overridden, 1), else_=0)), 0))
    query = query.where(r.seq.between(first_seq, last_seq), r.resolved_at.is_not(None))
    with engine.connect() as conn:
        resolved, overridden = conn.execute(query).one()
    return int(resolved), int(overridden)


def out_of_distribution(engine: Engine, first_seq: int, last_seq: int) -> int:
    """How many of the decisions ``first_seq..last_seq`` went to a person because their
    input was unlike the training data (open or resolved: the cause stays)."""
    r = reviews.c
    query = select(func.count()).where(
        r.seq.between(first_seq, last_seq), r.reason.like(f"{OUT_OF_DISTRIBUTION}%")
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def of_prediction(engine: Engine, seq: int) -> dict[str, Any] | None:
    """The review of one decision, for its audit record (None: it was never queued)."""
    with engine.connect() as conn:
        row = conn.execute(select(reviews).where(reviews.c.seq == seq)).first()
    if row is None:
        return None
    found = dict(row._mapping)
    found.pop("seq")
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in found.items()}
