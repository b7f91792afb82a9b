"""The FastAPI application behind ``copml ui``: server-rendered pages over the services.

A thin skin (design §2): every route (:mod:`copml.ui.routes`) checks the role table
(:mod:`copml.ui.auth`), calls the same service functions as the CLI and renders a Jinja2
template, through the typed state in ``app.state.dashboard`` (:mod:`copml.ui.state`).
Static files are served alongside. No JavaScript: forms post, the server redirects.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from copml.errors import CopmlError, NotFoundError
from copml.ui import forms, headers
from copml.ui.projects import Shown
from copml.ui.routes import ROUTERS
from copml.ui.state import Dashboard, LoginNeeded, dashboard

_log = logging.getLogger(__name__)


async def _login_needed(request: Request, _: Exception) -> Response:
    if request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return forms.back(f"/login?next={quote(target)}")
    return dashboard(request).failure(request, 401, "log in first")


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return dashboard(request).failure(request, exc.status_code, str(exc.detail))


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
    return dashboard(request).failure(request, 422, problems)


async def _refused(request: Request, exc: CopmlError) -> Response:
    status = 404 if isinstance(exc, NotFoundError) else 409
    return dashboard(request).failure(request, status, str(exc))


async def _unexpected(request: Request, exc: Exception) -> Response:
    _log.exception("dashboard error on %s", request.url.path)
    return dashboard(request).failure(request, 500, f"unexpected {type(exc).__name__}: {exc}")


def create_app(shown: list[Shown], *, secure_cookies: bool = False) -> FastAPI:
    """The dashboard over ``shown`` projects; ``secure_cookies`` marks cookies Secure even
    on plain http (TLS ends at a proxy that does not say so)."""
    app = FastAPI(title="copml dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dashboard = Dashboard(shown, secure_cookies)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.exception_handler(LoginNeeded)(_login_needed)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(CopmlError)(_refused)
    app.exception_handler(Exception)(_unexpected)
    app.middleware("http")(headers.secure)
    for router in ROUTERS:
        app.include_router(router)
    return app
