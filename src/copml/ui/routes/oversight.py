"""The stop button on the dashboard (EU AI Act Art. 14): an operator halts the project into
the safe state its spec declares, or resumes it, with a reason kept on record. The same
service as ``copml halt`` and ``POST /v1/admin/halt``; servers obey within a second."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from copml import oversight
from copml.ui import forms
from copml.ui.auth import actor
from copml.ui.state import Board

router = APIRouter()


@router.post("/p/{slug}/halt")
async def halt(request: Request, board: Board, slug: str) -> Response:
    access = board.access(request, slug, "halt")
    why = forms.reason(await forms.read(request, access.session), "halt")
    project, who = access.here.project, actor(access.key)
    found = await board.work(lambda: oversight.halt(project, actor=who, reason=why))
    shown = found.safe_state.replace("_", " ")
    access.session.flashes.append(f"halted: the project is in its safe state ({shown})")
    return forms.back(f"/p/{slug}")


@router.post("/p/{slug}/resume")
async def resume(request: Request, board: Board, slug: str) -> Response:
    access = board.access(request, slug, "halt")
    why = forms.reason(await forms.read(request, access.session), "resume")
    project, who = access.here.project, actor(access.key)
    ended = await board.work(lambda: oversight.resume(project, actor=who, reason=why))
    access.session.flashes.append(f"resumed: the halt {ended.actor} made has ended")
    return forms.back(f"/p/{slug}")
