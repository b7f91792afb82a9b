"""Score one group of requests and log it: one ``predict_proba`` call, one transaction.

The group's redacted inputs, the review-queue entries for scores in the uncertainty band,
and the predictions commit together; only then are the answers handed back. Everything
that depends on one instance alone (text checks, redaction, the logged JSON) is done per
request before it joins a group (:meth:`GroupScorer.encode`), so a bad instance is
refused by itself instead of failing the group it would have joined.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import HTTPException
from sqlalchemy import Connection, Engine

from copml import prediction_log, rollout
from copml.kinds import OUT_OF_DISTRIBUTION, Decisions, kind_for
from copml.project import Project
from copml.redaction import keyed_hash
from copml.serve import idempotency
from copml.serve.arms import Arms, ArmsSlot, ShadowScorer
from copml.serve.batcher import Pending, report_scored
from copml.serve.champion import ChampionSlot
from copml.serve.oversight import HaltSlot
from copml.store import bind_value, bulk_insert, prediction_inputs, reviews


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance as its group needs it: the model's features and what is logged."""

    features: dict[str, Any]
    stored: str  # the input as logged: JSON, PII replaced by keyed hashes
    input_hash: str
    entity: str | None


class GroupScorer:
    def __init__(
        self,
        project: Project,
        engine: Engine,
        slot: ChampionSlot,
        clock: Callable[[], datetime] | None = None,
        arms: ArmsSlot | None = None,
        shadow: ShadowScorer | None = None,
        halt: HaltSlot | None = None,
    ) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._arms = arms
        self._shadow = shadow
        self._halt = halt
        self._spec = project.spec
        self._key = project.pii_key
        self._engine = engine
        self._slot = slot
        self._project = project
        self._kind = kind_for(project.spec)
        self._target = self._kind.target(project.spec.data)
        self._redact = sorted({project.spec.data.id, *project.spec.data.pii})
        self.on_scored: list[Any] = []  # callbacks(version, labels, reviews) for metrics
        self.on_arm: list[Any] = []  # callbacks(arm, version, n) for metrics

    def encode(self, instances: list[dict[str, Any]]) -> list[Instance]:
        """One request's instances, checked and redacted; 422 naming the field of a text
        that is not valid Unicode (a lone surrogate such as ``"\\udc00"`` parses as JSON
        but cannot be encoded, hashed or stored)."""
        out = []
        for i, row in enumerate(instances):
            for name, value in row.items():
                if isinstance(value, str) and not value.isascii():
                    try:
                        value.encode()
                    except UnicodeEncodeError:
                        loc = ["body", "instances", i, name]
                        msg = "not valid Unicode text (it contains a lone surrogate)"
                        raise HTTPException(
                            422, [{"loc": loc, "msg": msg, "type": "value_error"}]
                        ) from None
            redacted = self._redacted(row)
            stored = json.dumps(redacted)
            digest = hashlib.sha256(stored.encode()).hexdigest()
            out.append(Instance(row, stored, digest, redacted.get(self._spec.data.id)))
        return out

    def _redacted(self, row: dict[str, Any]) -> dict[str, Any]:
        clear = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
        for column in self._redact:
            if clear.get(column) is not None:
                clear[column] = keyed_hash(clear[column], self._key)
        return clear

    def __call__(self, group: list[Pending]) -> list[tuple[str, list[dict[str, Any]]]]:
        """Score and log the group's :class:`Instance` rows; raises only before the commit
        (the batcher then splits the group), never after it.

        With a canary, each request is answered by the canary or the champion (by its
        first instance's entity: one customer always meets the same model) and each arm's
        rows are a batch of their own, both committed in one transaction."""
        spec = self._spec
        champion = self._slot.current  # read once: this group finishes on these models
        if champion is None:
            raise RuntimeError("no champion model is loaded")
        arms = self._arms.current if self._arms is not None else Arms()
        arm_of = [rollout.CHAMPION] * len(group)
        if arms.canary is not None:
            arm_of = [
                rollout.CANARY
                if rollout.in_canary(p.rows[0].entity if p.rows else None, arms.share)
                else rollout.CHAMPION
                for p in group
            ]
        now = self._clock()
        parts = []  # (arm, model, its requests' positions in the group, columns, decided, key)
        for arm, model in ((rollout.CHAMPION, champion), (rollout.CANARY, arms.canary)):
            at = [i for i, a in enumerate(arm_of) if a == arm]
            if model is None or not at:
                continue
            rows = [row for i in at for row in group[i].rows]
            # Column by column: a third of the cost of a frame from records, the same scores.
            columns = {c: [row.features[c] for row in rows] for c in model.features}
            decided = self._kind.decide_rows(self._project, model.model, columns)
            if model.profile is not None and spec.serving.out_of_distribution.check:
                unlike = self._kind.screen(self._project, model.model, model.profile, columns)
                decided = decided.screened(unlike)
            if self._halt is not None and self._halt.reviews_all():  # every one to a person
                decided = replace(decided, review=np.ones(len(decided), dtype=bool))
            parts.append((arm, model, at, columns, decided, prediction_log.new_key()))
        done = time.perf_counter()
        answered: list[tuple[str, list[dict[str, Any]]]] = [("", [])] * len(group)
        for _, model, at, _, decided, key in parts:
            mine = [group[i] for i in at]
            for i, answer in zip(at, self._answers(mine, key, model.version, decided), strict=True):
                answered[i] = answer

        def alongside(conn: Connection, firsts: list[int]) -> None:
            for (_, _, at, _, decided, _), first in zip(parts, firsts, strict=True):
                mine = [group[i] for i in at]
                rows = [row for p in mine for row in p.rows]
                latencies = [(done - p.started) * 1000 for p in mine for _ in p.rows]
                bulk_insert(
                    conn,
                    prediction_inputs,
                    ("seq", "input", "input_hash", "entity_key", "latency_ms"),
                    [
                        (first + i, row.stored, row.input_hash, row.entity, latency)
                        for i, (row, latency) in enumerate(zip(rows, latencies, strict=True))
                    ],
                )
                opened = bind_value(conn, reviews.c.opened_at, now)
                flagged = [
                    (first + int(i), opened, decided.reason(int(i)))
                    for i in np.flatnonzero(decided.review)
                ]
                if flagged:
                    bulk_insert(conn, reviews, ("seq", "opened_at", "reason"), flagged)
                idempotency.record(conn, self._claimed(mine, first, [answered[i] for i in at]), now)

        written = [
            (
                prediction_log.Header(key, now, spec.project, model.version, None, "api", arm=arm),
                [(decided.label, decided.score, decided.review, decided.probabilities)],
            )
            for arm, model, _, _, decided, key in parts
        ]
        prediction_log.write_many(self._engine, written, alongside)
        for arm, model, _, columns, decided, key in parts:
            report_scored(self.on_scored, model.version, decided.label, decided.review)
            report_scored(self.on_arm, arm, model.version, len(decided.score))
            if arms.shadow is not None and self._shadow is not None:
                self._shadow.offer(arms.shadow, columns, key, now)
        return answered

    @staticmethod
    def _claimed(
        group: list[Pending], first: int, answered: list[tuple[str, list[dict[str, Any]]]]
    ) -> list[tuple[idempotency.Claim, int, str]]:
        """Each claimed request's key, first seq and answer as its response will say it."""
        out, seq = [], first
        for pending, (version, answers) in zip(group, answered, strict=True):
            if pending.claim is not None:
                out.append((pending.claim, seq, idempotency.text(version, answers)))
            seq += len(pending.rows)
        return out

    def _answers(
        self, group: list[Pending], key: str, version: str, decided: Decisions
    ) -> list[tuple[str, list[dict[str, Any]]]]:
        """Each request's answers, in plain JSON types: its class or value, its score and
        review flag, and each class's probability where there are classes to weigh."""
        precision = self._spec.serving.score_precision
        scores = decided.score.tolist()
        if precision:
            scores = [round(score, precision) for score in scores]
        shown = self._target.shown(decided.label, decided.score).tolist()
        flags = decided.review.tolist()
        answers = [
            {"prediction_id": f"{key}{i:08x}", "label": label, "score": score, "review": flag}
            for i, (label, score, flag) in enumerate(zip(shown, scores, flags, strict=True))
        ]
        if decided.probabilities is not None:
            names = [str(c) for c in self._target.classes]
            for answer, row in zip(answers, decided.probabilities.tolist(), strict=True):
                answer["probabilities"] = dict(zip(names, row, strict=True))
        for answer, unlike in zip(answers, decided.unlike or [], strict=False):
            if unlike:  # why a person must look, beyond the score
                answer["reason"] = OUT_OF_DISTRIBUTION
                answer["unlike_training"] = list(unlike)
        out, start = [], 0
        for pending in group:
            out.append((version, answers[start : start + len(pending.rows)]))
            start += len(pending.rows)
        return out
