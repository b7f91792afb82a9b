"""The challengers a server runs beside its champion: a shadow and a canary (design §9b).

:class:`ArmsSlot` follows the store's rollout record (``copml models shadow|canary|abort``)
on the server's poll, loading each version as the champion is loaded (checked, warmed) and
keeping the champion alone when one fails. :class:`ShadowScorer` scores what the champion
and canary answered again with the shadow, in a process of its own after the answers are
sent: a shadow never delays or changes an answer, and when it falls behind it drops work
(counted) instead of queueing without end.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from copml import events, prediction_log, registry, rollout
from copml.kinds import kind_for
from copml.project import Project
from copml.serve.champion import Champion, load_model
from copml.store import open_store

_log = logging.getLogger(__name__)

# Groups waiting for the shadow; past this a group is not shadowed (counted as dropped).
_MAX_WAITING = 64
# How long the shadow's process waits for more groups to score with the first one.
_LINGER_SECONDS = 0.25
# How long a reload waits for the shadow's process to start and load the version.
_LOAD_SECONDS = 120.0


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
    version: str
    columns: dict[str, list[Any]]  # the answered rows, as the server built its frame from
    shadows: str  # the answered batch's key: row i here scored that batch's row i
    created_at: datetime


class ShadowScorer:
    """Feeds answered groups to a process of its own that scores them with the shadow.

    A thread would take the serving process's GIL for the pipeline's pandas and encoder
    steps, so an answer would wait behind the previous request's shadow scoring; the
    process has its own interpreter (and core), and the server only hands it the rows.
    """

    def __init__(
        self,
        project: Project,
        on_dropped: Callable[[], None] | None = None,
        on_written: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self._project = project
        self._on_dropped = on_dropped
        self._on_written = on_written
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._work: Any = self._context.Queue(_MAX_WAITING)
        self._done: Any = self._context.Queue()
        self._process: Any = None
        self._listener: threading.Thread | None = None
        self._start = threading.Lock()
        self._tried: dict[str, threading.Event] = {}  # versions the process tried to load

    def offer(
        self, model: Champion, columns: dict[str, list[Any]], shadows: str, at: datetime
    ) -> None:
        """Shadow an answered batch later; never blocks. Plain lists cross to the process
        for a tenth of what pickling a frame costs the server."""
        if self._process is None:
            self._begin()
        try:
            self._work.put_nowait(_Work(model.version, columns, shadows, at))
        except queue.Full:
            if self._on_dropped is not None:
                self._on_dropped()

    def prepare(self, version: str) -> None:
        """Start the process and wait until it has loaded ``version`` (once per version), so
        no group is dropped while it starts: a reload returns with the shadow ready, as it
        does with a champion."""
        if self._process is None:
            self._begin()
        with self._start:
            tried = self._tried.setdefault(version, threading.Event())
        if not tried.is_set():
            with contextlib.suppress(queue.Full):
                self._work.put_nowait(version)
            tried.wait(_LOAD_SECONDS)

    def _begin(self) -> None:
        with self._start:
            if self._process is not None:
                return
            process = self._context.Process(
                target=_score_forever,
                args=(self._project, self._work, self._done, os.getpid()),
                name="copml-shadow",
                daemon=True,
            )
            process.start()
            self._listener = threading.Thread(target=self._listen, name="copml-shadow-done")
            self._listener.daemon = True
            self._listener.start()
            self._process = process

    def _listen(self) -> None:
        while (done := self._done.get()) is not None:
            what, version, n = done
            if what == "loaded":
                with self._start:
                    self._tried.setdefault(version, threading.Event()).set()
            elif self._on_written is not None:
                self._on_written(rollout.SHADOW, version, n)

    def stop(self) -> None:
        """Let the process finish what it holds (it was answered already), then end it."""
        if self._process is None:
            return
        self._work.put(None)
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        self._done.put(None)
        if self._listener is not None:
            self._listener.join(timeout=5)


def _score_forever(project: Project, work: Any, done: Any, parent: int) -> None:
    """The shadow's process: score and log groups until told to stop or orphaned.

    Groups that wait are scored together, one call and one transaction for all: the
    shadow then costs a fraction of the champion's CPU and takes the log's write lock
    a few times a second, not once per answer.
    """
    engine = open_store(project.db_url)
    kind = kind_for(project.spec)
    loaded: Champion | None = None
    while True:
        try:
            item = work.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the server died (kill -9): nothing more will come
                return
            continue
        if item is None:
            return
        if isinstance(item, str):  # load ahead of the first group
            loaded = _load(project, loaded, item)
            done.put(("loaded", item, 0))
            continue
        found = _gather(work, item)
        for version, group in itertools.groupby(filter(None, found), lambda w: w.version):
            loaded = _load(project, loaded, version)
            if loaded is not None and loaded.version == version:
                try:
                    _score(project, engine, kind, loaded, list(group), done)
                except Exception:  # a shadow's failure is logged, and harms no answer
                    _log.exception("shadow scoring by v%s failed", version)
        if found[-1] is None:
            return


def _load(project: Project, loaded: Champion | None, version: str) -> Champion | None:
    if loaded is not None and loaded.version == version:
        return loaded
    try:
        return load_model(project, registry.get(project, version))
    except Exception:  # the server refused it too (its own load), and answers without it
        _log.exception("the shadow could not load v%s", version)
        return loaded


def _gather(work: Any, first: _Work) -> list[_Work | None]:
    """``first`` and whatever joins it within :data:`_LINGER_SECONDS` (ends at a stop)."""
    found: list[_Work | None] = [first]
    until = time.monotonic() + _LINGER_SECONDS
    while len(found) < _MAX_WAITING and (left := until - time.monotonic()) > 0:
        try:
            item = work.get(timeout=left)
        except queue.Empty:
            break
        if isinstance(item, str):
            continue
        found.append(item)
        if item is None:
            break
    return found


def _score(
    project: Project, engine: Engine, kind: Any, loaded: Champion, group: list[_Work], done: Any
) -> None:
    columns = {c: [v for w in group for v in w.columns[c]] for c in group[0].columns}
    decided = kind.decide_rows(project, loaded.model, columns)
    parts = []
    start = 0
    for w in group:
        rows = slice(start, start + len(next(iter(w.columns.values()))))
        start = rows.stop
        header = prediction_log.Header(
            prediction_log.new_key(),
            w.created_at,
            project.spec.project,
            loaded.version,
            None,
            "api",
            arm=rollout.SHADOW,
            shadows=w.shadows,
        )
        probabilities = None if decided.probabilities is None else decided.probabilities[rows]
        chunk = (decided.label[rows], decided.score[rows], decided.review[rows], probabilities)
        parts.append((header, [chunk]))
    prediction_log.write_many(engine, parts)
    done.put(("written", loaded.version, len(decided)))
