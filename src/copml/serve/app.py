"""The FastAPI application behind ``copml serve`` (design §7).

Every prediction is committed to the store before its response is sent (group commit
through :class:`~copml.serve.batcher.MicroBatcher`); the request model is generated from
the champion's training snapshot, so bad bodies are refused with a 422 naming the field.
The routes (:mod:`copml.serve.routes`) reach the typed state in ``app.state.server``
(:mod:`copml.serve.state`).
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from copml.project import Project
from copml.serve.batcher import Occupancy
from copml.serve.limits import BODY_TIMEOUT, MAX_PENDING_BODIES, BodyLimit, SharedBuckets
from copml.serve.metrics import MetricsMiddleware
from copml.serve.requests import feedback_request_model, review_resolution_model
from copml.serve.routes import admin, feedback, health, incidents, predict, predictions, reviews
from copml.serve.state import Server
from copml.store import UNAVAILABLE

MAX_BODY_BYTES = 1 << 20
RETRY_AFTER_S = 1  # a store restart takes about a second

_log = logging.getLogger(__name__)


def create_app(
    project: Project,
    *,
    insecure: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout: float = BODY_TIMEOUT,
    max_pending_bodies: int = MAX_PENDING_BODIES,
    poll_seconds: float = 5.0,
    heartbeat_seconds: float = 10.0,
    clock: Callable[[], datetime] | None = None,
    rate_buckets: SharedBuckets | None = None,
    replica: str = "",
) -> FastAPI:
    """The app; ``clock`` stamps predictions (a simulated clock in ``copml demo xray``);
    ``rate_buckets`` are shared with the other workers of one supervisor."""
    spec = project.spec
    server = Server.open(
        project,
        insecure=insecure,
        heartbeat_seconds=heartbeat_seconds,
        clock=clock,
        rate_buckets=rate_buckets,
        replica=replica,
    )
    if server.own_api is not None:  # a body that is not a table of instances
        max_body_bytes = max(max_body_bytes, server.own_api.max_body_bytes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.batcher.start()
        tasks = [
            asyncio.create_task(_every(seconds, job))
            for seconds, job in (
                (poll_seconds, server.refresh),
                (heartbeat_seconds, server.beat),
                (min(poll_seconds, 1.0), server.halt.refresh),  # a halt is obeyed at once
            )
            if seconds > 0
        ]
        await asyncio.to_thread(server.beat)
        yield
        for task in tasks:
            task.cancel()
        await server.batcher.stop()
        await asyncio.to_thread(server.shadow.stop)  # what it holds was answered already

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN (issue 12.19), and
    # the only packaged Swagger UI (swagger-ui-bundle) cannot show OpenAPI 3.1.
    app = FastAPI(
        title=f"copml: {spec.project}",
        version="1",
        lifespan=lifespan,
        description=spec.objective,
        docs_url=None,
        redoc_url=None,
    )
    app.state.server = server
    for router in (
        health.router,
        predict.router(server),
        feedback.router(feedback_request_model(server.target)),
        predictions.router,
        reviews.router(review_resolution_model(server.target)),
        admin.router,
        incidents.router,
    ):
        _mount(app, router)
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(StarletteHTTPException)(_http_error)
    for error in UNAVAILABLE:
        app.exception_handler(error)(_unavailable)
    app.add_middleware(Occupancy, batcher=server.batcher, path=predict.PATH)
    app.add_middleware(
        BodyLimit, limit=max_body_bytes, timeout=body_timeout, max_pending=max_pending_bodies
    )
    app.add_middleware(MetricsMiddleware, metrics=server.metrics)
    return app


def _mount(app: FastAPI, router: APIRouter) -> None:
    """``router``'s routes on the app's own router, as if declared there: FastAPI's
    ``include_router`` keeps a router as a branch that every request walks into (about
    200 more Python calls per request, counted on FastAPI 0.165), and ``/v1/predict`` is
    the hot path."""
    app.router.routes.extend(router.routes)


async def _every(seconds: float, job: Callable[[], object]) -> None:
    """Run ``job`` off the event loop every ``seconds``; a failed run must never stop the
    server."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(job)
        except Exception:
            continue


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    # The store is down or restarting: a 503 its client may retry (with the same
    # Idempotency-Key), never a 500; the pool reconnects by itself once it is back.
    _log.warning("the store is unavailable: %s", str(exc).splitlines()[0][:200])
    return JSONResponse(
        {"detail": "the store is unavailable; retry shortly"},
        503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's answer, except that a 405's ``Allow`` lists the methods of every route on
    the path: Starlette names only the first route's (``/v1/incidents`` has a GET and a
    POST)."""
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    path = request.url.path
    methods = sorted(
        {
            method
            for route in request.app.router.routes
            if isinstance(route, Route) and route.path_regex.match(path)
            for method in route.methods or ()
        }
    )
    return JSONResponse(
        {"detail": "Method Not Allowed"}, 405, headers={"Allow": ", ".join(methods)}
    )


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    # Name the field and the problem; never echo the input back (it may be PII, or NaN,
    # which JSON cannot carry).
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": detail}, 422)
