"""Limits that keep one client from hurting the others: request bodies and request rate."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from typing import Any

BODY_TIMEOUT = 10.0  # seconds an unfinished body may go without data before a 408
MAX_PENDING_BODIES = 128  # requests of one process waiting for the rest of their body


class BodyLimit:
    """ASGI middleware guarding request bodies, so that no client can hold the server:

    - 413 for a body over ``limit`` bytes, by its Content-Length or, for a chunked body, as
      soon as the bytes received pass the limit;
    - 408 when no part of an unfinished body arrives for ``timeout`` seconds (a client that
      sends part of a body and goes idle);
    - 503 for a request whose body is not all there when ``max_pending`` requests already
      wait for the rest of theirs.

    A refusal is answered at once, with ``Connection: close``, and the application is
    stopped from reading: the rest of the body is never waited for.
    """

    def __init__(self, app: Any, limit: int, timeout: float, max_pending: int) -> None:
        self.app, self.limit, self.timeout, self.max_pending = app, limit, timeout, max_pending
        self.pending = 0  # requests of this process waiting for the rest of their body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _refuse(send, _Refused(413, self._too_large()))
        body = _Body()

        async def guarded_receive() -> Any:
            try:
                return await self._receive(body, receive)
            except _Refused as refusal:
                if not body.answered:
                    body.refused = True
                    await _refuse(send, refusal)
                raise

        async def guarded_send(message: Any) -> None:
            if body.refused:
                return  # the refusal has answered; what the application says is dropped
            body.answered = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _Refused:
            pass
        finally:
            self._settle(body)

    async def _receive(self, body: _Body, receive: Any) -> Any:
        if body.complete:
            return await receive()
        # Over the cap, only a body that is all there already goes ahead (a receive that
        # would have to wait times out at once).
        full = not body.waiting and self.pending >= self.max_pending
        try:
            async with asyncio.timeout(0 if full else self.timeout):
                message = await receive()
        except TimeoutError:
            if full:
                raise _Refused(503, "too many requests are waiting for their bodies") from None
            raise _Refused(408, f"no part of the body arrived for {self.timeout:g} s") from None
        body.seen += len(message.get("body", b""))
        if body.seen > self.limit:
            raise _Refused(413, self._too_large())
        if message["type"] != "http.request" or not message.get("more_body", False):
            body.complete = True
            self._settle(body)
        elif not body.waiting:
            if full:
                raise _Refused(503, "too many requests are waiting for their bodies")
            body.waiting = True
            self.pending += 1
        return message

    def _settle(self, body: _Body) -> None:
        if body.waiting:
            body.waiting = False
            self.pending -= 1

    def _too_large(self) -> str:
        return f"request body over the limit of {self.limit} bytes"


class _Body:
    """What one request's body guard knows of it."""

    def __init__(self) -> None:
        self.seen = 0
        self.waiting = self.complete = self.refused = self.answered = False


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


async def _refuse(send: Any, refusal: _Refused) -> None:
    body = json.dumps({"detail": refusal.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the rest of the body is never read
    ]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
