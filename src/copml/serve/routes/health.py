"""Liveness, readiness and the Prometheus metrics: open to every caller, no key."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from copml.serve.requests import JsonRoute
from copml.serve.responses import METRICS, Readiness, errors
from copml.serve.state import Served

router = APIRouter(route_class=JsonRoute)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={200: {"model": Readiness}, **errors(503)})
async def readyz(server: Served) -> JSONResponse:
    champion = server.slot.current
    if champion is None:
        return JSONResponse({"status": "no champion loaded"}, 503)
    return JSONResponse({"status": "ready", "model_version": champion.version})


@router.get("/metrics", response_class=Response, responses=METRICS)
async def prometheus(server: Served) -> Response:
    return Response(server.metrics.exposition(), media_type="text/plain; version=0.0.4")
