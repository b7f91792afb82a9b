"""An operator's hand on the server: load the registry's champion now, not at the next
poll."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from copml.serve.access import OperatorKey, actor
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
