"""Limits that keep one client from hurting the others: body size and request rate."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from fastapi.responses import JSONResponse


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, by Content-Length or by counting."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        body = {"detail": f"request body over the limit of {self.limit} bytes"}
        await JSONResponse(body, 413)(scope, receive, send)


class _TooLarge(Exception):
    pass


class RateLimiter:
    """A token bucket per API key: ``rate`` requests a second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, who: str) -> int:
        """0 when the request may go ahead, else the seconds to wait before trying again."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(who, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[who] = (tokens - 1, now)
                return 0
            self._buckets[who] = (tokens, now)
            return max(1, math.ceil((1 - tokens) / self.rate))
