"""Logging in with an API key, logging out, and the health check a supervisor polls."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from copml.ui import forms
from copml.ui.auth import SESSION_COOKIE
from copml.ui.state import Board

router = APIRouter()


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


@router.get("/healthz")
async def healthz(board: Board) -> JSONResponse:
    return JSONResponse({"status": "ok", "projects": len(board.shown)})


@router.get("/login")
async def login_form(request: Request, board: Board, next: str = "/") -> Response:
    if board.session_of(request) is not None:
        return forms.back(_safe_next(next))
    return board.page(request, "login.html.j2", next=_safe_next(next))


@router.post("/login")
async def login(request: Request, board: Board) -> Response:
    values = await forms.read(request, None)
    target = _safe_next(values.get("next"))
    presented = values.get("key", "").strip()
    if not presented:
        return board.page(request, "login.html.j2", 422, next=target, error="key: paste an API key")
    client = request.client.host if request.client else ""
    grants, wait = await run_in_threadpool(board.verify, presented, client)
    people = {slug: key for slug, key in grants.items() if key.role != "service"}
    if not grants and wait:
        error = f"too many failed attempts: try again in {wait} s"
        refused = board.page(request, "login.html.j2", 429, next=target, error=error)
        refused.headers["Retry-After"] = str(wait)
        return refused
    if not people:
        error = (
            "service keys are for programs calling copml serve; ask for a personal key"
            if grants
            else "this key is not known to the store of any project shown here (or revoked)"
        )
        status = 403 if grants else 401
        return board.page(request, "login.html.j2", status, next=target, error=error)
    token = board.sessions.open(people)
    response = forms.back(target)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=board.secure_cookies or request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request, board: Board) -> Response:
    session = board.session_of(request)
    if session is not None:
        await forms.read(request, session)
        board.sessions.close(request.cookies.get(SESSION_COOKIE))
    response = forms.back("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
