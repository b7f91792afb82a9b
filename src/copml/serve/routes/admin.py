"""An operator's hand on the server: load the registry's champion now, not at the next
poll; what the server runs (champion, shadow, canary), for anyone with a key; and which
versions served when, for the people who oversee and audit it."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from copml import aliases, keys, oversight, times
from copml.errors import CopmlError
from copml.serve.access import AnyKey, OperatorKey, actor, require
from copml.serve.requests import JsonRoute
from copml.serve.responses import AUTH, BEARER, errors
from copml.serve.state import Served

router = APIRouter(route_class=JsonRoute)
OverseerKey = Annotated[keys.Key | None, require("operator", "auditor")]


@router.post("/v1/admin/reload", responses=errors(*AUTH), dependencies=[BEARER])
async def reload(server: Served, key: OperatorKey) -> dict[str, Any]:
    result = await asyncio.to_thread(server.refresh, actor(key))
    return {
        "model_version": result.model_version,
        "swapped": result.swapped,
        "refused": result.refused,
    }


@router.get("/v1/models", responses=errors(*AUTH), dependencies=[BEARER])
async def models(server: Served, _key: AnyKey) -> dict[str, Any]:
    """The versions this server has loaded and answers with: the champion, the shadow (it
    scores every request, answers none) and the canary with its share of entities."""
    champion, arms = server.slot.current, server.arms.current
    return {
        "champion": champion.version if champion else None,
        "shadow": arms.shadow.version if arms.shadow else None,
        "canary": arms.canary.version if arms.canary else None,
        "canary_share": arms.share,
    }


@router.get("/v1/models/history", responses=errors(*AUTH, 422), dependencies=[BEARER])
async def history(server: Served, _key: OverseerKey, at: str | None = None) -> dict[str, Any]:
    """Every change of the champion and of the arms (time, actor, reason, gate evidence)
    up to ``at`` (ISO 8601; default now), and which versions served then."""
    try:
        when = times.parse_optional(at, "at")
    except times.TimeError as exc:
        raise HTTPException(
            422, [{"loc": ["query", "at"], "msg": str(exc), "type": "value_error"}]
        ) from None
    found = await asyncio.to_thread(aliases.changes, server.project, end=when)
    serving = await asyncio.to_thread(aliases.serving_at, server.project, when, found)
    return {"changes": [c.as_dict() for c in found], "serving": serving.as_dict()}


class _Why(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(..., min_length=1, max_length=2000, description="kept on record")


@router.post("/v1/admin/halt", responses=errors(*AUTH, 409, 422), dependencies=[BEARER])
async def halt(server: Served, key: OperatorKey, body: _Why) -> dict[str, Any]:
    """Stop the project into its declared safe state (``review_all`` or ``refuse``): this
    server at once, every other within a second; automation is suspended until resumed."""
    try:
        found = await asyncio.to_thread(
            oversight.halt, server.project, actor=actor(key), reason=body.reason, at=server.now()
        )
    except CopmlError as exc:
        raise HTTPException(409, str(exc)) from None
    server.halt.set(found)
    return {"halted": True, "safe_state": found.safe_state, "actor": found.actor}


@router.post("/v1/admin/resume", responses=errors(*AUTH, 409, 422), dependencies=[BEARER])
async def resume(server: Served, key: OperatorKey, body: _Why) -> dict[str, Any]:
    """End the halt: this server answers as before at once, every other within a second."""
    try:
        await asyncio.to_thread(
            oversight.resume,
            server.project,
            actor=actor(key),
            reason=body.reason,
            at=server.now(),
        )
    except CopmlError as exc:
        raise HTTPException(409, str(exc)) from None
    server.halt.set(None)
    return {"halted": False}
