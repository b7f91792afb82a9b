"""The serious incidents of a project (EU AI Act Art. 73): those awaiting their report with
the time left to the legal deadline, then the rest; read-only, for everyone who may read
the project (the CLI and the API change them)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from copml import incidents
from copml.ui.state import Board

router = APIRouter()


def _left(incident: incidents.Incident, now: datetime) -> str:
    """``3 d 4 h`` left, or ``overdue by …``; a dash once reported or closed."""
    if not incident.awaits_report:
        return "—"
    seconds = int(incident.time_left(now).total_seconds())
    days, rest = divmod(abs(seconds), 86400)
    span = f"{days} d {rest // 3600} h" if days else f"{rest // 3600} h {rest % 3600 // 60} min"
    return span if seconds >= 0 else f"overdue by {span}"


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
