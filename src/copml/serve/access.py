"""Who may call a route, and how much: the bearer key and its role, checked per route
(:func:`require`), and the rate limit that a key's requests draw on (:func:`charge`)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from copml import keys
from copml.serve.limits import RateLimiter
from copml.serve.state import Server, served

REFUSAL_DELAY_SECONDS = 1.0  # a throttled key guess waits this long for its 429


async def _verified(server: Server, presented: str, client: str) -> keys.Key | None:
    """The key, recalled at once or verified off the event loop (scrypt is slow on
    purpose); a client or prefix with too many failures gets 429 before any scrypt,
    a second late: a guesser that waits for answers then costs a timer, not the CPU
    that an instant refusal loop would take from everyone else."""
    if not presented:
        return None
    verifier = server.verifier
    if (key := verifier.recall(presented)) is not None:
        return key
    try:
        verifier.throttle(presented, client)
        return await asyncio.to_thread(verifier.verify, presented, client)
    except keys.Throttled as exc:
        await asyncio.sleep(REFUSAL_DELAY_SECONDS)
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None


def require(*roles: str) -> Any:
    """A dependency: the caller's key, one of ``roles``; 401 without a valid key, 403
    for another role (None, and no check, on an ``--insecure`` server)."""

    async def check(request: Request) -> keys.Key | None:
        server = served(request)
        if server.insecure:
            return None
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        presented = presented.strip() if scheme.lower() == "bearer" else ""
        key = await _verified(server, presented, request.client.host if request.client else "")
        if key is None:
            raise HTTPException(
                401,
                "a valid API key is required (Authorization: Bearer)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if key.role not in roles:
            raise HTTPException(
                403, f"role {key.role!r} may not do this; needs one of {', '.join(roles)}"
            )
        return key

    return Depends(check)


ServiceKey = Annotated[keys.Key | None, require("service")]
OperatorKey = Annotated[keys.Key | None, require("operator")]
AuditorKey = Annotated[keys.Key | None, require("auditor")]
AnyKey = Annotated[keys.Key | None, require("service", "operator", "auditor")]


def charge(limiter: RateLimiter, key: keys.Key | None, n: int, route: str) -> None:
    """429 unless ``key`` has ``n`` instances left of its rate on ``route`` (every
    worker draws on the same budget; without keys, ``--insecure``, nothing is limited)."""
    if key is None:
        return
    if n > limiter.burst:
        raise HTTPException(429, f"{n} instances exceed the rate limit's burst of {limiter.burst}")
    if wait := limiter.retry_after(f"{key.prefix}{route}", n):
        raise HTTPException(
            429,
            f"rate limit of {limiter.rate:g} instances/s on {route} exceeded",
            headers={"Retry-After": str(wait)},
        )


def actor(key: keys.Key | None) -> str:
    """The actor that events name for a request made with ``key``."""
    return f"key:{key.prefix}" if key else "system"
