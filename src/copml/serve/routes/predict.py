"""``POST /v1/predict``: instances of the champion's training columns, or the kind's own
body (uploads, say), scored in groups by the micro-batcher and logged before the answer.

The request model is generated from a snapshot's schema, so the routes are built per app
(:func:`router`); each reaches the server through :func:`~copml.serve.state.served`, a
plain call, not a dependency: this is the hot path, kept as lean as a route can be.
"""

import asyncio
import json

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel

from copml import registry, snapshots
from copml.kinds import PredictApi
from copml.serve import idempotency
from copml.serve.access import ServiceKey, charge
from copml.serve.requests import JsonRoute, instance_model, predict_request_model
from copml.serve.responses import AUTH, BEARER, BODY, PredictResponse, errors
from copml.serve.state import Server, served

MAX_INSTANCES = 1000
PATH = "/v1/predict"


def router(server: Server) -> APIRouter:
    """The route for ``server``'s model: its kind's own, or instances of the columns the
    champion was trained on (of the latest snapshot when there is no champion yet)."""
    if server.own_api is not None:
        return _uploads(server.own_api)
    mv = registry.champion(server.project)
    snap = snapshots.get(server.engine, mv.snapshot_id, missing_ok=True) if mv else None
    # The request model follows the champion's training data at start-up.
    schema = snap.schema if snap else snapshots.latest(server.engine).schema
    return _instances(predict_request_model(instance_model(schema), MAX_INSTANCES))


def _instances(PredictRequest: type[BaseModel]) -> APIRouter:
    routes = APIRouter(route_class=JsonRoute)

    @routes.post(
        PATH,
        response_class=Response,
        responses={
            200: {"model": PredictResponse, "description": "One answer per instance"},
            **errors(*AUTH, 409, *BODY),
        },
        dependencies=[BEARER],
    )
    async def predict(
        request: Request,
        body: PredictRequest,
        key: ServiceKey,
        idempotency_key: idempotency.Key = None,
    ) -> Response:
        server = served(request)
        if server.slot.current is None:
            raise HTTPException(503, "no champion model is loaded")
        server.halt.refuse_if_halted()
        instances = [instance.model_dump() for instance in body.instances]
        claim = idempotency.claim(request, idempotency_key, key, instances, server.project.pii_key)
        # Checked and redacted per request, before grouping: a bad one fails alone.
        rows = server.scorer.encode(instances)
        charge(server.limiter, key, len(rows), PATH)
        try:
            version, answers = await server.batcher.submit(rows, claim)
        except Exception as exc:
            # Optimistic: a key is looked up only when storing it failed, because it was
            # stored before (a retry) or meanwhile (the same key in flight twice). A first
            # try, the common case, costs one more row in its group's transaction.
            if claim is None or not idempotency.lost_race(exc):
                raise
            if (done := await _answered(server, claim)) is None:
                raise
            return idempotency.replay(done)
        # Serialised here, once: the answers are plain JSON types already, and FastAPI's
        # response-model round trip would cost more than the prediction on small groups.
        return Response(idempotency.text(version, answers), media_type="application/json")

    return routes


async def _answered(server: Server, claim: idempotency.Claim) -> str | None:
    return await asyncio.to_thread(idempotency.answered, server.engine, claim)


def _uploads(api: PredictApi) -> APIRouter:
    routes = APIRouter(route_class=JsonRoute)

    @routes.post(
        PATH,
        response_class=Response,
        openapi_extra=api.openapi,
        responses=errors(*AUTH, 415, *BODY),
        dependencies=[BEARER],
        description=api.description,
    )
    async def predict_uploads(request: Request, key: ServiceKey) -> Response:
        server = served(request)
        if idempotency.HEADER.lower() in request.headers:
            # The kind's own answers are not stored with its predictions: refused rather
            # than letting a client believe its retries are safe.
            raise idempotency.refused("this model's API does not take an Idempotency-Key")
        champion = server.slot.current
        if champion is None:
            raise HTTPException(503, "no champion model is loaded")
        server.halt.refuse_if_halted()
        items = await api.read(request)
        charge(server.limiter, key, len(items), PATH)  # before preparing: that is the work
        rows = await asyncio.to_thread(api.prepare, items, champion.model)
        text = json.dumps(api.respond(await server.batcher.submit(rows)))
        return Response(text, media_type="application/json")

    return routes
