"""The serious incidents of a project (EU AI Act Art. 73): those awaiting their report with
the time left to the legal deadline, then the rest; read-only, for everyone who may read
the project (the CLI and the API change them)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from copml import incidents
from copml.display import time_left
from copml.ui.state import Board

router = APIRouter()


def _left(incident: incidents.Incident, now: datetime) -> str:
    """The time left to the deadline while the report is awaited; a dash after it."""
    return time_left(incident.time_left(now)) if incident.awaits_report else "—"


@router.get("/p/{slug}/incidents")
async def incidents_page(request: Request, board: Board, slug: str) -> Response:
    here = board.access(request, slug, "read").here
    found = await board.work(lambda: incidents.listed(here.engine))
    now = datetime.now(UTC)
    return board.page(
        request,
        "incidents.html.j2",
        here=here,
        pending=[(i, _left(i, now)) for i in found if i.state != incidents.CLOSED],
        closed=[i for i in found if i.state == incidents.CLOSED],
        deadlines=incidents.DEADLINES,
    )
