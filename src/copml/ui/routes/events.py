"""The event log of a project, newest first, filtered by actor and kind, a page at a time."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from copml.ui import records
from copml.ui.state import Board

router = APIRouter()
_PAGE = 100


@router.get("/p/{slug}/events")
async def events_page(
    request: Request,
    board: Board,
    slug: str,
    who: Annotated[str | None, Query(alias="actor")] = None,
    kind: str | None = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> Response:
    here = board.access(request, slug, "read").here

    def gather() -> dict[str, Any]:
        rows = records.event_page(
            here.engine, actor=who or None, kind=kind or None, before=before, limit=_PAGE
        )
        actors, kinds = records.event_facets(here.engine)
        return {"rows": rows, "actors": actors, "kinds": kinds}

    found = await board.work(gather)
    rows = found["rows"]
    older = rows[-1]["id"] if len(rows) == _PAGE else None
    return board.page(
        request, "events.html.j2", here=here, actor=who or "", kind=kind or "", older=older, **found
    )
