"""Which version served when (EU AI Act Art. 12): every move of the champion, shadow and
canary with who made it, why and the gate evidence, and the versions serving at any time
asked (``?at=``), the present cross-checked with the registry."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from copml import aliases, times
from copml.ui.state import Board

router = APIRouter()


@router.get("/p/{slug}/history")
async def history_page(
    request: Request, board: Board, slug: str, at: str | None = None
) -> Response:
    here = board.access(request, slug, "history").here
    try:
        when = times.parse_optional(at or None, "at")
    except times.TimeError as exc:
        raise HTTPException(422, str(exc)) from None

    def gather() -> dict[str, Any]:
        moves = aliases.changes(here.project)
        shown = moves if when is None else [m for m in moves if m.at <= when]
        serving = aliases.serving_at(here.project, when, shown)
        return {"moves": list(reversed(moves)), "serving": serving}

    found = await board.work(gather)
    return board.page(request, "history.html.j2", here=here, at=at or "", **found)
