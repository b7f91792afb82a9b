"""The human-review queue over the API: the open items, and a person's label stored as
feedback."""

import asyncio
import json
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from copml import reviews
from copml.serve.access import OperatorKey, actor
from copml.serve.requests import JsonRoute
from copml.serve.responses import AUTH, BEARER, BODY, errors
from copml.serve.state import Served, missing_as_404


def router(ReviewResolution: type[BaseModel]) -> APIRouter:
    """The routes for resolutions of ``ReviewResolution`` bodies (the target's classes)."""
    routes = APIRouter(route_class=JsonRoute)

    @routes.get("/v1/reviews", responses=errors(*AUTH, 422), dependencies=[BEARER])
    async def open_reviews(
        server: Served, _key: OperatorKey, limit: int = 100
    ) -> dict[str, list[dict[str, Any]]]:
        found = await asyncio.to_thread(reviews.open_items, server.engine, limit)
        return {"reviews": json.loads(json.dumps(found, default=str))}

    @routes.post(
        "/v1/reviews/{prediction_id}", responses=errors(*AUTH, 404, *BODY), dependencies=[BEARER]
    )
    async def resolve_review(
        server: Served,
        prediction_id: str,
        body: ReviewResolution,
        key: OperatorKey,
    ) -> dict[str, Any]:
        await asyncio.to_thread(server.known, prediction_id)
        server.actual(body.label, "label")  # 422 naming the field when it is no class or value
        with missing_as_404():
            await asyncio.to_thread(
                reviews.resolve,
                server.engine,
                server.project.spec,
                prediction_id,
                body.label,
                actor=actor(key),
                reason=body.reason,
            )
        return {"status": "resolved", "label": body.label}

    return routes
