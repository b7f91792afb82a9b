"""An operator's hand on the server: load the registry's champion now, not at the next
poll; and what the server runs (champion, shadow, canary), for anyone with a key."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from copml.serve.access import AnyKey, OperatorKey, actor
from copml.serve.requests import JsonRoute
from copml.serve.responses import AUTH, BEARER, errors
from copml.serve.state import Served

router = APIRouter(route_class=JsonRoute)


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
