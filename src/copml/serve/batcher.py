"""Adaptive micro-batching with group commit.

Requests that arrive while the previous group is being scored wait together; each group
is scored in one ``predict_proba`` call and logged in one transaction, and only then are
its responses released. A response therefore always names a durably stored prediction,
and the log costs one commit per group, not per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_MAX_GROUP_ROWS = 256


@dataclass
class Pending:
    rows: list[dict[str, Any]]
    started: float
    future: asyncio.Future[list[Any]] = field(repr=False)


class MicroBatcher:
    """Feeds groups of pending requests to ``process(groups) -> results per request``."""

    def __init__(self, process: Callable[[list[Pending]], list[list[Any]]]) -> None:
        self._process = process
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="copml-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def submit(self, rows: list[dict[str, Any]]) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        await self._queue.put(Pending(rows, time.perf_counter(), future))
        return await future

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            rows = len(group[0].rows)
            while rows < _MAX_GROUP_ROWS and not self._queue.empty():
                pending = self._queue.get_nowait()
                group.append(pending)
                rows += len(pending.rows)
            try:
                results = await asyncio.to_thread(self._process, group)
            except Exception as exc:  # every waiting request learns of the failure
                for pending in group:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            for pending, result in zip(group, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
