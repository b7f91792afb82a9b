"""What an auditor may ask about one prediction: its whole decision record and why the
model decided so."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from fastapi import APIRouter

from copml import audit
from copml.serve.access import AuditorKey
from copml.serve.requests import JsonRoute
from copml.serve.responses import AUTH, BEARER, errors
from copml.serve.state import Served, missing_as_404

router = APIRouter(route_class=JsonRoute)


@router.get("/v1/predictions/{prediction_id}", responses=errors(*AUTH, 404), dependencies=[BEARER])
async def prediction(server: Served, prediction_id: str, _key: AuditorKey) -> dict[str, Any]:
    """The whole decision record: input (PII redacted), version, champion then,
    lineage, explanation and every event about that version."""
    await asyncio.to_thread(server.known, prediction_id)
    with missing_as_404():
        record = await asyncio.to_thread(audit.record, server.project, prediction_id)
    return json.loads(json.dumps(record, default=str))


@router.get(
    "/v1/predictions/{prediction_id}/explanation",
    responses=errors(*AUTH, 404),
    dependencies=[BEARER],
)
async def explanation(server: Served, prediction_id: str, _key: AuditorKey) -> dict[str, Any]:
    """Why: SHAP values per feature in log-odds; base + values = the model's output."""
    await asyncio.to_thread(server.known, prediction_id)
    with missing_as_404():
        return await asyncio.to_thread(
            functools.partial(server.kind.explain, server.project, prediction_id, inline=True)
        )
