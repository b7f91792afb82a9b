"""The human-review queue: the open items, and a person's label stored as feedback."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from copml import reviews
from copml.kinds import kind_for
from copml.ui import forms
from copml.ui.auth import actor
from copml.ui.state import Board

router = APIRouter()


@router.get("/p/{slug}/reviews")
async def reviews_page(request: Request, board: Board, slug: str) -> Response:
    here = board.access(request, slug, "reviews").here
    items = await board.work(lambda: reviews.open_items(here.engine))
    return board.page(
        request,
        "reviews.html.j2",
        here=here,
        items=items,
        target=kind_for(here.project.spec).target(here.project.spec.data),
        band=here.project.spec.serving.review_band,
    )


@router.post("/p/{slug}/reviews/{prediction_id}")
async def resolve_review(request: Request, board: Board, slug: str, prediction_id: str) -> Response:
    access = board.access(request, slug, "reviews")
    form = await forms.read(request, access.session)
    label = form.get("label", "").strip()
    if not label:
        raise HTTPException(422, "label: choose the label a person decided")
    why = form.get("reason", "").strip()[:2000] or None
    engine, spec, who = access.here.engine, access.here.project.spec, actor(access.key)
    await board.work(
        lambda: reviews.resolve(engine, spec, prediction_id, label, actor=who, reason=why)
    )
    access.session.flashes.append(f"{prediction_id} labelled {label!r}; stored as feedback")
    return forms.back(f"/p/{slug}/reviews")
