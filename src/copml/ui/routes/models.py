"""The model versions of a project, one version with its card, and the lifecycle acts a
person records from here: approve, promote (through the gate), roll back, and a rollout
beside the champion (shadow, canary, abort)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from copml import registry, rollout
from copml.model_card import build_card, render_html
from copml.operate import lifecycle
from copml.project import Project
from copml.store import open_store
from copml.ui import forms
from copml.ui.auth import actor
from copml.ui.headers import CARD_CSP
from copml.ui.state import Board

router = APIRouter()


def _versions(project: Project) -> dict[str, Any]:
    found = registry.versions(project)
    return {
        "versions": found,
        "approvals": {v.version: lifecycle.approved(project, v.version) for v in found},
        "holdout": {v.version: registry.holdout_metrics(project, v) for v in found},
        "metrics": list(project.spec.effectiveness.thresholds),
    }


def _version(project: Project, version: str) -> dict[str, Any]:
    return {
        "card": build_card(project, version),
        "needs_approval": lifecycle.needs_approval(project),
        "approved": lifecycle.approved(project, version),
        "rollout": rollout.current(open_store(project.db_url), project.spec.project),
    }


def _share(values: dict[str, str]) -> float:
    """The form's ``share``: ``10%`` or ``0.1``; a 422 naming the field otherwise."""
    try:
        share = rollout.share(values.get("share", ""))
    except ValueError as exc:
        raise HTTPException(422, f"share: {exc}") from None
    if not 0.0 < share < 1.0:
        raise HTTPException(422, "share: between 0 % and 100 %, both excluded")
    return share


@router.get("/p/{slug}/models")
async def models_page(request: Request, board: Board, slug: str) -> Response:
    here = board.access(request, slug, "read").here
    found = await board.work(lambda: _versions(here.project))
    return board.page(request, "models.html.j2", here=here, **found)


@router.get("/p/{slug}/models/{version}")
async def model_page(request: Request, board: Board, slug: str, version: str) -> Response:
    here = board.access(request, slug, "read").here
    found = await board.work(lambda: _version(here.project, version))
    return board.page(request, "model.html.j2", here=here, **found)


@router.get("/p/{slug}/models/{version}/card")
async def model_card(request: Request, board: Board, slug: str, version: str) -> Response:
    here = board.access(request, slug, "read").here
    html = await board.work(lambda: render_html(build_card(here.project, version)))
    return HTMLResponse(html, headers={"Content-Security-Policy": CARD_CSP})


@router.post("/p/{slug}/models/{version}/approve")
async def approve(request: Request, board: Board, slug: str, version: str) -> Response:
    access = board.access(request, slug, "approve")
    why = forms.reason(await forms.read(request, access.session), "approval")
    who = actor(access.key)
    await board.work(lambda: lifecycle.approve(access.here.project, version, actor=who, reason=why))
    access.session.flashes.append(f"approval of v{version} recorded")
    return forms.back(f"/p/{slug}/models/{quote(version)}")


@router.post("/p/{slug}/models/{version}/promote")
async def promote(request: Request, board: Board, slug: str, version: str) -> Response:
    access = board.access(request, slug, "promote")
    why = forms.reason(await forms.read(request, access.session), "promotion")
    project, who = access.here.project, actor(access.key)
    await board.work(
        lambda: lifecycle.promote(project, version, actor=who, reason=why, gate_first=True)
    )
    access.session.flashes.append(f"v{version} passed the gate and is now champion")
    return forms.back(f"/p/{slug}/models/{quote(version)}")


@router.post("/p/{slug}/models/{version}/shadow")
async def shadow(request: Request, board: Board, slug: str, version: str) -> Response:
    access = board.access(request, slug, "rollout")
    why = forms.reason(await forms.read(request, access.session), "shadow")
    project, who = access.here.project, actor(access.key)
    await board.work(lambda: lifecycle.shadow(project, version, actor=who, reason=why))
    access.session.flashes.append(f"v{version} runs in shadow: it scores, and answers no one")
    return forms.back(f"/p/{slug}/models/{quote(version)}")


@router.post("/p/{slug}/models/{version}/canary")
async def canary(request: Request, board: Board, slug: str, version: str) -> Response:
    access = board.access(request, slug, "rollout")
    values = await forms.read(request, access.session)
    why, share = forms.reason(values, "canary"), _share(values)
    project, who = access.here.project, actor(access.key)
    await board.work(lambda: lifecycle.canary(project, version, share, actor=who, reason=why))
    access.session.flashes.append(f"v{version} answers {share:.0%} of entities")
    return forms.back(f"/p/{slug}/models/{quote(version)}")


@router.post("/p/{slug}/abort")
async def abort(request: Request, board: Board, slug: str) -> Response:
    access = board.access(request, slug, "rollout")
    values = await forms.read(request, access.session)
    why = forms.reason(values, "abort")
    arm = values.get("arm", rollout.CANARY)
    if arm not in (rollout.CANARY, rollout.SHADOW):
        raise HTTPException(422, f"arm: {arm!r} is neither canary nor shadow")
    project, who = access.here.project, actor(access.key)
    await board.work(lambda: lifecycle.abort(project, actor=who, reason=why, arm=arm))
    access.session.flashes.append(f"the {arm} ended: the champion answers everyone")
    return forms.back(f"/p/{slug}/models")


@router.post("/p/{slug}/rollback")
async def rollback(request: Request, board: Board, slug: str) -> Response:
    access = board.access(request, slug, "rollback")
    why = forms.reason(await forms.read(request, access.session), "roll-back")
    project, who = access.here.project, actor(access.key)
    version = await board.work(lambda: lifecycle.rollback(project, actor=who, reason=why))
    access.session.flashes.append(f"rolled back: v{version} is champion again")
    return forms.back(f"/p/{slug}/models")
