"""Adaptive micro-batching with group commit.

Requests that arrive while the previous group is being scored wait together; each group
is scored in one ``predict_proba`` call and logged in one transaction, and only then are
its responses released. A response therefore always names a durably stored prediction,
and the log costs one commit per group, not per request. A request that makes its group
fail is found by splitting the group, and fails alone: the others are answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_MAX_GROUP_ROWS = 256
_WAIT_SHARE = 0.5  # of the time a group takes to score and log
_MAX_WAIT_S = 0.02
_QUIET_S = 0.003

_log = logging.getLogger(__name__)


@dataclass
class Pending:
    rows: list[dict[str, Any]]
    started: float
    future: asyncio.Future[list[Any]] = field(repr=False)
    claim: Any = None  # its Idempotency-Key claim, stored with its predictions


class MicroBatcher:
    """Feeds groups of pending requests to ``process(groups) -> results per request``."""

    def __init__(
        self,
        process: Callable[[list[Pending]], list[list[Any]]],
        shared_failure: tuple[type[Exception], ...] = (),
    ) -> None:
        self._process = process
        # Failures that no request causes (the store is down): the whole group fails at
        # once instead of being split to find a culprit that is not there.
        self._shared_failure = shared_failure
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._in_server = 0
        self._scoring_s = 0.01  # moving average of the time to score and log a group

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="copml-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def arrived(self) -> None:
        """A request entered the server (its body is not parsed yet)."""
        self._in_server += 1

    def left(self) -> None:
        self._in_server -= 1

    async def submit(self, rows: list[dict[str, Any]], claim: Any = None) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        await self._queue.put(Pending(rows, time.perf_counter(), future, claim))
        return await future

    async def _collect(self) -> list[Pending]:
        """The next group: what is queued, plus what arrives within a short bounded wait.

        Scoring a group costs nearly the same for 1 row as for 16 (a pipeline's fixed
        overhead), and scoring holds the GIL, so requests that arrive during it are parsed
        late. Waiting up to half the time a group takes (ended early by a quiet spell) lets
        them join this group instead of each paying a group of their own.
        """
        group = [await self._queue.get()]
        rows = len(group[0].rows)
        # Alone, a request gains nothing from waiting: wait only when other requests are
        # in the server (being received or answered) that may still join.
        alone = self._in_server <= len(group) + self._queue.qsize()
        wait = 0.0 if alone else min(_MAX_WAIT_S, _WAIT_SHARE * self._scoring_s)
        deadline = time.perf_counter() + wait
        while rows < _MAX_GROUP_ROWS:
            if self._queue.empty():
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._queue.get(), min(left, _QUIET_S))
                except TimeoutError:
                    break
            else:
                pending = self._queue.get_nowait()
            group.append(pending)
            rows += len(pending.rows)
        return group

    async def _run(self) -> None:
        while True:
            group = await self._collect()
            started = time.perf_counter()
            results = await asyncio.to_thread(self._isolated, group)
            self._scoring_s += 0.2 * (time.perf_counter() - started - self._scoring_s)
            for pending, result in zip(group, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, _Failed):
                    pending.future.set_exception(result.error)
                else:
                    pending.future.set_result(result)

    def _isolated(self, group: list[Pending]) -> list[Any]:
        """The group's results; when it fails, its halves are processed apart, down to the
        single requests that fail on their own, so one bad request fails only itself.

        ``process`` must be all or nothing (it raises only before its commit), so a
        request is never logged twice. One culprit among n costs about 2·log2(n) calls.
        """
        try:
            return self._process(group)
        except Exception as exc:
            if len(group) == 1 or isinstance(exc, self._shared_failure):
                return [_Failed(exc)] * len(group)
            half = len(group) // 2
            return self._isolated(group[:half]) + self._isolated(group[half:])


@dataclass(frozen=True)
class _Failed:
    error: Exception


def report_scored(callbacks: list[Any], *args: Any) -> None:
    """Tell the metrics of a committed group. The predictions are stored by now, so a
    failing callback is logged, never raised: raising would fail answers already logged."""
    for callback in callbacks:
        try:
            callback(*args)
        except Exception:
            _log.exception("a callback on scored predictions failed")


class Occupancy:
    """ASGI middleware: tells the batcher how many prediction requests are in the server."""

    def __init__(self, app: Any, batcher: MicroBatcher, path: str) -> None:
        self.app, self.batcher, self.path = app, batcher, path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            return await self.app(scope, receive, send)
        self.batcher.arrived()
        try:
            await self.app(scope, receive, send)
        finally:
            self.batcher.left()
