"""Limits that keep one client from hurting the others: request bodies and request rate."""

from __future__ import annotations

import asyncio
import ctypes
import json
import math
import multiprocessing
import time
from hashlib import blake2b
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


class _Bucket(ctypes.Structure):
    _fields_ = (
        ("owner", ctypes.c_uint64),  # 0: a free slot
        ("tokens", ctypes.c_double),
        ("at", ctypes.c_double),  # time.monotonic() of the last update, one clock per host
    )


class SharedBuckets:
    """Token-bucket state in shared memory, one slot per limited key.

    Created once by whoever starts the server processes (the ``--workers`` supervisor, or
    the single process itself) and inherited by every worker, so all workers of one
    supervisor draw on one budget per key: the declared rate holds in total, whatever the
    number of workers. A check costs one process-shared lock and a few field reads: a few
    microseconds (about 1.4x the per-process dictionary it replaced, measured on a busy
    2-core machine), against milliseconds per request, and no store round trip. Replicas
    on several machines each have their own buckets; a budget across machines would need
    the store (a row per key, a round trip per request).
    """

    def __init__(self, slots: int = 1024) -> None:
        context = multiprocessing.get_context("spawn")  # the workers' start method
        self._lock = context.Lock()
        self._table = context.RawArray(_Bucket, slots)
        self._slots = slots
        self._found: dict[str, tuple[int, _Bucket]] = {}  # this process's memo of slots

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_found": {}}

    def take(self, who: str, n: int, rate: float, burst: int) -> float:
        """Take ``n`` tokens from ``who``'s bucket: 0.0 when granted, else the seconds until
        they could be (nothing is taken then)."""
        found = self._found.get(who)
        now = time.monotonic()
        with self._lock:
            if found is None or found[1].owner != found[0]:  # new, or its slot was reused
                found = self._claim(who, now, rate, burst)
            bucket = found[1]
            tokens = min(float(burst), bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
            if tokens >= n:
                bucket.tokens = tokens - n
                return 0.0
            bucket.tokens = tokens
            return (n - tokens) / rate

    def _claim(self, who: str, now: float, rate: float, burst: int) -> tuple[int, _Bucket]:
        """``who``'s slot, found or taken (a full bucket when new); the lock is held."""
        owner = int.from_bytes(blake2b(who.encode(), digest_size=8).digest()) | 1
        table = self._table
        start = owner % self._slots
        for step in range(self._slots):  # open addressing; slots are never emptied
            i = (start + step) % self._slots
            if table[i].owner in (owner, 0):
                break
        else:
            # Every slot is taken: reuse the one with the most tokens. A bucket that has
            # refilled to its burst carries nothing that a new, full bucket would not.
            i = max(range(self._slots), key=lambda j: table[j].tokens + (now - table[j].at) * rate)
        bucket = table[i]  # a view into the shared table, not a copy
        if bucket.owner != owner:
            bucket.owner, bucket.tokens, bucket.at = owner, float(burst), now
        self._found[who] = (owner, bucket)
        return owner, bucket


class RateLimiter:
    """Per-key token buckets counted in instances (a request of 1,000 instances takes
    1,000 tokens): ``rate`` a second, bursts up to ``burst``, shared by every worker."""

    def __init__(self, rate: float, burst: int, buckets: SharedBuckets | None = None) -> None:
        self.rate, self.burst = rate, burst
        self._buckets = buckets or SharedBuckets()

    def retry_after(self, who: str, n: int = 1) -> int:
        """0 when ``n`` instances may go ahead, else whole seconds to wait before trying
        again. ``n`` over the burst could never be granted: the caller refuses it first."""
        if n > self.burst:
            raise ValueError(f"{n} instances exceed the burst of {self.burst}")
        wait = self._buckets.take(who, n, self.rate, self.burst)
        return max(1, math.ceil(wait)) if wait else 0
