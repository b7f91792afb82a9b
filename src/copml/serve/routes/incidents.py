"""Serious incidents over the API (EU AI Act Art. 73): the people who oversee and audit the
system read them; operators open them, add notes, record the report to the authority and
close them. Refusals name the field (422) or the state that forbids the change (409)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from copml import incidents, keys, times
from copml.serve.access import OperatorKey, actor, require
from copml.serve.requests import JsonRoute
from copml.serve.responses import AUTH, BEARER, BODY, errors
from copml.serve.state import Served, Server

router = APIRouter(route_class=JsonRoute)
OverseerKey = Annotated[keys.Key | None, require("operator", "auditor")]
IncidentId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the incident's id")]
_Text = Field(..., min_length=1, max_length=incidents.MAX_TEXT, description="kept on record")


class _Opening(BaseModel):
    model_config = ConfigDict(extra="forbid")
    severity: Literal["serious", "death", "widespread"] = Field(
        ..., description="the deadline: 15 days (serious), 10 (death), 2 (widespread)"
    )
    reason: str = _Text
    predictions: list[str] = Field(
        default_factory=list,
        max_length=incidents.MAX_PREDICTIONS,
        description="ids of the predictions it concerns",
    )


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference: str = Field(
        ..., min_length=1, max_length=incidents.MAX_REFERENCE, description="the authority's"
    )
    reason: str | None = Field(None, min_length=1, max_length=incidents.MAX_TEXT)


class _Why(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = _Text


class _Note(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = _Text


async def _call(server: Server, change: Callable[[], incidents.Incident]) -> dict[str, Any]:
    """Run ``change`` off the event loop; a bad field is a 422 naming it, an unknown
    incident a 404, a state that forbids the change a 409."""
    try:
        found = await asyncio.to_thread(change)
    except incidents.Refused as exc:
        issue = {"loc": ["body", exc.field], "msg": str(exc), "type": "value_error"}
        raise HTTPException(422, [issue]) from None
    except incidents.UnknownIncident as exc:
        raise HTTPException(404, str(exc)) from None
    except incidents.Conflict as exc:
        raise HTTPException(409, str(exc)) from None
    return found.as_dict(server.now() or datetime.now(UTC))


@router.get("/v1/incidents", responses=errors(*AUTH, 422), dependencies=[BEARER])
async def list_incidents(
    server: Served, _key: OverseerKey, since: str | None = None, until: str | None = None
) -> dict[str, Any]:
    """Every incident (open at some time in ``[since, until)`` when given), oldest first,
    with its deadline, state, cited predictions and history."""
    bounds = {}
    for name, value in (("since", since), ("until", until)):
        try:
            bounds[name] = times.parse_optional(value, name)
        except times.TimeError as exc:
            raise HTTPException(
                422, [{"loc": ["query", name], "msg": str(exc), "type": "value_error"}]
            ) from None
    found = await asyncio.to_thread(incidents.listed, server.engine, **bounds)
    now = server.now() or datetime.now(UTC)
    return {"incidents": [i.as_dict(now) for i in found]}


@router.post(
    "/v1/incidents",
    status_code=201,
    responses=errors(*AUTH, *BODY),
    dependencies=[BEARER],
)
async def open_incident(server: Served, key: OperatorKey, body: _Opening) -> dict[str, Any]:
    """Open a serious incident now; its reporting deadline runs from now."""
    return await _call(
        server,
        lambda: incidents.open_incident(
            server.engine,
            severity=body.severity,
            predictions=body.predictions,
            reason=body.reason,
            actor=actor(key),
            at=server.now(),
        ),
    )


@router.post(
    "/v1/incidents/{incident_id}/update",
    responses=errors(*AUTH, 404, 409, *BODY),
    dependencies=[BEARER],
)
async def update_incident(
    server: Served, key: OperatorKey, incident_id: IncidentId, body: _Note
) -> dict[str, Any]:
    """Add a note to an incident that is not closed."""
    return await _call(
        server,
        lambda: incidents.update(
            server.engine, incident_id, note=body.note, actor=actor(key), at=server.now()
        ),
    )


@router.post(
    "/v1/incidents/{incident_id}/report",
    responses=errors(*AUTH, 404, 409, *BODY),
    dependencies=[BEARER],
)
async def report_incident(
    server: Served, key: OperatorKey, incident_id: IncidentId, body: _Report
) -> dict[str, Any]:
    """Record the report to the authority, under its reference (409 once closed or
    already reported); the deadline alerts stop."""
    return await _call(
        server,
        lambda: incidents.report(
            server.engine,
            incident_id,
            reference=body.reference,
            reason=body.reason,
            actor=actor(key),
            at=server.now(),
        ),
    )


@router.post(
    "/v1/incidents/{incident_id}/close",
    responses=errors(*AUTH, 404, 409, *BODY),
    dependencies=[BEARER],
)
async def close_incident(
    server: Served, key: OperatorKey, incident_id: IncidentId, body: _Why
) -> dict[str, Any]:
    """Close the incident (409 when it is closed already)."""
    return await _call(
        server,
        lambda: incidents.close(
            server.engine, incident_id, reason=body.reason, actor=actor(key), at=server.now()
        ),
    )
