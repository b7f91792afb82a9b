"""What every route of the prediction server reaches through ``app.state.server``: the
project, its store, the champion slot, the scorer and its micro-batcher, the keys and the
rate limit, built once at start-up (:meth:`Server.open`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import pandas as pd
from fastapi import Depends, HTTPException, Request
from sqlalchemy import Engine

from copml import costs, keys, prediction_log
from copml.errors import NotFoundError, UnknownPrediction
from copml.kinds import ModelKind, PredictApi, kind_for
from copml.labels import Target
from copml.project import Project
from copml.serve.arms import ArmsSlot, ShadowScorer
from copml.serve.batcher import MicroBatcher
from copml.serve.champion import ChampionSlot, Refresh
from copml.serve.limits import RateLimiter, SharedBuckets
from copml.serve.metrics import ServerMetrics
from copml.serve.oversight import HaltSlot
from copml.serve.scoring import GroupScorer
from copml.store import UNAVAILABLE, heartbeats, open_store

# A 404 never echoes the id it was asked about: the body names what is missing, not the
# client's input.
NO_PREDICTION = "no such prediction"


@dataclass
class Server:
    """One server process's state; ``own_api`` is the kind's own ``/v1/predict`` (None:
    instances of the training columns, scored by a :class:`GroupScorer`)."""

    project: Project
    engine: Engine
    kind: ModelKind
    target: Target
    slot: ChampionSlot
    arms: ArmsSlot  # the shadow and canary beside the champion
    shadow: ShadowScorer
    halt: HaltSlot  # the stop button's record, obeyed within a second
    own_api: PredictApi | None
    scorer: Any  # a GroupScorer, or the kind's own: ``__call__(group)`` and ``on_scored``
    batcher: MicroBatcher
    metrics: ServerMetrics
    limiter: RateLimiter
    verifier: keys.Verifier
    insecure: bool  # no keys asked for, nothing rate limited
    heartbeat_seconds: float
    replica: str = ""  # the address it serves, host:port ("" when not served by copml serve)
    clock: Callable[[], datetime] | None = None  # None: the wall clock
    _cpu_seen: float = field(default_factory=time.process_time)

    @classmethod
    def open(
        cls,
        project: Project,
        *,
        insecure: bool,
        heartbeat_seconds: float,
        clock: Callable[[], datetime] | None,
        rate_buckets: SharedBuckets | None,
        replica: str = "",
    ) -> Server:
        """Open the store and load the champion (if any) for ``project``."""
        spec = project.spec
        engine = open_store(project.db_url)
        metrics = ServerMetrics()
        limit = spec.serving.rate_limit
        slot = ChampionSlot(project, engine)
        first = slot.refresh()
        metrics.model_loads.labels("loaded" if first.swapped else "none").inc()
        kind = kind_for(spec)
        arms = ArmsSlot(project, engine)
        shadow = ShadowScorer(project, metrics.shadow_dropped.inc, metrics.by_arm)
        if (first_arms := arms.refresh()).shadow is not None:
            shadow.prepare(first_arms.shadow.version)
        halt = HaltSlot(project, engine)
        halt.refresh()
        own_api = kind.predict_api(project, engine, slot, clock, arms, shadow, halt)
        if own_api is None:
            scorer: Any = GroupScorer(project, engine, slot, clock, arms, shadow, halt)
        else:
            scorer = own_api.scorer
        scorer.on_arm.append(metrics.by_arm)
        scorer.on_scored.append(metrics.scored)
        return cls(
            project=project,
            engine=engine,
            kind=kind,
            target=kind.target(spec.data),
            slot=slot,
            arms=arms,
            shadow=shadow,
            halt=halt,
            own_api=own_api,
            scorer=scorer,
            batcher=MicroBatcher(scorer, shared_failure=UNAVAILABLE),
            metrics=metrics,
            limiter=RateLimiter(limit.per_second, limit.burst, rate_buckets),
            verifier=keys.Verifier(engine),
            insecure=insecure,
            heartbeat_seconds=heartbeat_seconds,
            replica=replica,
            clock=clock,
        )

    def now(self) -> datetime | None:
        """The time its records carry: the injected clock's (a simulation), else None for
        the store's writers to take the wall clock."""
        return self.clock() if self.clock is not None else None

    def refresh(self, actor: str = "system") -> Refresh:
        """Load the registry's champion if it changed, counting loads and refusals."""
        result = self.slot.refresh(actor)
        if result.swapped or result.refused:
            self.metrics.model_loads.labels("loaded" if result.swapped else "refused").inc()
        arms = self.arms.refresh(actor)
        if arms.shadow is not None:
            self.shadow.prepare(arms.shadow.version)
        return result

    def beat(self) -> None:
        """Record the CPU spent since the last beat and a heartbeat (the interval as its
        detail: gaps longer than it mean down time)."""
        now = time.process_time()
        spent, self._cpu_seen = now - self._cpu_seen, now
        costs.record(self.engine, "serve", spent, detail="server process since the last heartbeat")
        with self.engine.begin() as conn:
            conn.execute(
                heartbeats.insert().values(
                    at=datetime.now(UTC),
                    source="server",
                    ok=self.slot.current is not None,
                    detail=str(self.heartbeat_seconds),
                    replica=self.replica or None,
                    pid=os.getpid(),
                    model_version=self.slot.current.version if self.slot.current else None,
                )
            )

    def known(self, prediction_id: str) -> int:
        """The sequence number of ``prediction_id``: strictly parsed, its row inside its
        batch; a 404 otherwise."""
        found = prediction_log.resolve(self.engine, [prediction_id]).iloc[0]
        if pd.isna(found):
            raise HTTPException(404, NO_PREDICTION)
        return int(found)

    def actual(self, value: object, field: str) -> float:
        """``value`` coded as the target codes it; a 422 naming ``field`` when it is no
        class or value of the target."""
        (code,) = self.target.encode([value])
        if code is None:
            raise HTTPException(
                422, [{"loc": ["body", field], "type": "value_error", "msg": self.target.refusal()}]
            )
        return code


@contextmanager
def missing_as_404() -> Iterator[None]:
    """An unknown prediction, or a version or record gone, answered as the 404 that the
    API documents."""
    try:
        yield
    except UnknownPrediction:
        raise HTTPException(404, NO_PREDICTION) from None
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None


def served(request: Request) -> Server:
    """The server that :func:`copml.serve.app.create_app` put in ``app.state`` (a plain
    call: ``/v1/predict`` and the key check reach it without a dependency to solve)."""
    server: Server = request.app.state.server
    return server


async def _served(request: Request) -> Server:
    # A coroutine: FastAPI runs a plain function dependency in a worker thread.
    return served(request)


Served = Annotated[Server, Depends(_served)]
