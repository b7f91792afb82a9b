"""The challengers a server runs beside its champion: a shadow and a canary (design §9b).

:class:`ArmsSlot` follows the store's rollout record (``copml models shadow|canary|abort``)
on the server's poll, loading each version as the champion is loaded (checked, warmed) and
keeping the champion alone when one fails. :class:`ShadowScorer` scores what the champion
and canary answered again with the shadow, in a thread of its own after the answers are
sent: a shadow never delays or changes an answer, and when it falls behind it drops work
(counted) instead of queueing without end.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
from sqlalchemy import Engine

from copml import events, prediction_log, registry, rollout
from copml.kinds import kind_for
from copml.project import Project
from copml.serve.champion import Champion, load_model

_log = logging.getLogger(__name__)

# Groups waiting for the shadow; past this a group is not shadowed (counted as dropped).
_MAX_WAITING = 64


@dataclass(frozen=True)
class Arms:
    shadow: Champion | None = None
    canary: Champion | None = None
    share: float = 0.0


class ArmsSlot:
    def __init__(self, project: Project, engine: Engine) -> None:
        self._project = project
        self._engine = engine
        self._lock = threading.Lock()
        self.current = Arms()

    def refresh(self, actor: str = "system") -> Arms:
        """Load what the rollout record names (unchanged versions are kept as loaded)."""
        with self._lock:
            state = rollout.current(self._engine, self._project.spec.project)
            now = self.current
            shadow = self._model(state.shadow, now.shadow, actor)
            canary = self._model(state.canary, now.canary, actor) if state.share > 0 else None
            self.current = Arms(shadow, canary, state.share if canary is not None else 0.0)
            return self.current

    def _model(self, version: str | None, loaded: Champion | None, actor: str) -> Champion | None:
        if version is None:
            return None
        if loaded is not None and loaded.version == version:
            return loaded
        try:
            return load_model(self._project, registry.get(self._project, version))
        except Exception as exc:  # the champion answers alone; the refusal is on record
            with self._engine.begin() as conn:
                events.record(
                    conn,
                    events.Kind.SERVE_REFUSED,
                    actor=actor,
                    subject=events.model_subject(self._project.spec.project, version),
                    reason=f"{type(exc).__name__}: {exc}"[:500],
                )
            return None


@dataclass(frozen=True)
class _Work:
    model: Champion
    frame: pd.DataFrame
    shadows: str  # the answered batch's key: row i here scored that batch's row i
    created_at: datetime


class ShadowScorer:
    def __init__(
        self,
        project: Project,
        engine: Engine,
        on_dropped: Callable[[], None] | None = None,
        on_written: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self._project = project
        self._engine = engine
        self._kind = kind_for(project.spec)
        self._on_dropped = on_dropped
        self._on_written = on_written
        self._queue: queue.Queue[_Work | None] = queue.Queue(_MAX_WAITING)
        self._thread: threading.Thread | None = None
        self.written = 0  # shadow batches logged (for tests and metrics)

    def offer(self, model: Champion, frame: pd.DataFrame, shadows: str, at: datetime) -> None:
        """Shadow an answered batch later; never blocks."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="copml-shadow", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(_Work(model, frame, shadows, at))
        except queue.Full:
            if self._on_dropped is not None:
                self._on_dropped()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            try:
                self._score(work)
            except Exception:  # a shadow's failure is logged, and harms no answer
                _log.exception("shadow scoring by v%s failed", work.model.version)

    def _score(self, work: _Work) -> None:
        model = work.model.model
        decided = self._kind.decide(self._project, model, self._kind.scores(model, work.frame))
        header = prediction_log.Header(
            prediction_log.new_key(),
            work.created_at,
            self._project.spec.project,
            work.model.version,
            None,
            "api",
            arm=rollout.SHADOW,
            shadows=work.shadows,
        )
        prediction_log.write(
            self._engine,
            header,
            decided.label,
            decided.score,
            decided.review,
            probabilities=decided.probabilities,
        )
        self.written += 1
        if self._on_written is not None:
            self._on_written(rollout.SHADOW, work.model.version, len(work.frame))
