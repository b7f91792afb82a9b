"""Finding predictions by time or id, reading one decision's audit record with its
explanation, and replaying it with the archived model."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from copml import audit, prediction_log, times
from copml.kinds import kind_for
from copml.ui import charts, forms, records
from copml.ui.auth import actor
from copml.ui.projects import Shown
from copml.ui.state import Board

router = APIRouter()


def _date(field_name: str, text: str) -> datetime:
    """A date or ISO 8601 time from a query field, as UTC; a 422 naming the field if not."""
    try:
        return times.parse(text, field_name)
    except times.TimeError as exc:
        raise HTTPException(422, exc.message) from None


def _attribution(found: dict[str, Any]) -> str | None:
    """The hook for image models: an ``attribution_png`` in the audit record (bytes, a
    base64 string or a file path) is shown next to the explanation."""
    value = found.get("attribution_png") or (found.get("explanation") or {}).get("attribution_png")
    if not value:
        return None
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    text = str(value)
    path = Path(text)
    if len(text) < 4096 and path.suffix.lower() == ".png" and path.is_file():
        return base64.b64encode(path.read_bytes()).decode()
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return text


def _decision(here: Shown, prediction_id: str) -> dict[str, Any]:
    """One prediction's audit record, with its explanation drawn; a 404 for an id that
    cannot be one."""
    if prediction_log.split_id(prediction_id) is None:
        raise HTTPException(
            404, "no such prediction: an id is 24 hexadecimal characters, lower-case"
        )
    found = audit.record(here.project, prediction_id)
    explained = found.get("explanation") or {}
    chart = None
    if explained.get("values"):
        chart = charts.explanation_chart(
            explained["values"], f"why v{found['model_version']} scored {found['score']:.3f}"
        )
    return {
        "record": found,
        "chart": chart,
        "attribution": _attribution(found),
        "target": kind_for(here.project.spec).target(here.project.spec.data),
    }


@router.get("/p/{slug}/predictions")
async def predictions_page(
    request: Request,
    board: Board,
    slug: str,
    id: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> Response:
    here = board.access(request, slug, "predictions").here
    if id and id.strip():
        return forms.back(f"/p/{slug}/predictions/{quote(id.strip())}")
    until = _date("end", end) if end else datetime.now(UTC) + timedelta(days=1)
    since = _date("start", start) if start else None
    if since is not None and since >= until:
        raise HTTPException(422, "start: must be before end")
    rows, total = await board.work(
        lambda: records.predictions_between(here.engine, since, until, limit=100)
    )
    return board.page(
        request,
        "predictions.html.j2",
        here=here,
        rows=rows,
        total=total,
        start=start or "",
        end=end or "",
        target=kind_for(here.project.spec).target(here.project.spec.data),
    )


@router.get("/p/{slug}/predictions/{prediction_id}")
async def prediction_page(
    request: Request, board: Board, slug: str, prediction_id: str
) -> Response:
    here = board.access(request, slug, "predictions").here
    context = await board.work(lambda: _decision(here, prediction_id))
    return board.page(request, "prediction.html.j2", here=here, replayed=None, **context)


@router.post("/p/{slug}/predictions/{prediction_id}/replay")
async def replay(request: Request, board: Board, slug: str, prediction_id: str) -> Response:
    access = board.access(request, slug, "replay")
    await forms.read(request, access.session)
    here, who = access.here, actor(access.key)

    def run() -> dict[str, Any]:
        context = _decision(here, prediction_id)
        done = audit.replay(here.project, prediction_id, record=context["record"], actor=who)
        return {**context, "replayed": done}

    return board.page(request, "prediction.html.j2", here=here, **await board.work(run))
