"""The FastAPI application behind ``copml serve`` (design §7).

Every prediction is committed to the store before its response is sent (group commit
through :class:`~copml.serve.batcher.MicroBatcher`); the request model is generated from
the champion's training snapshot, so bad bodies are refused with a 422 naming the field.
"""

import asyncio
import hashlib
import json
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Connection

from copml import keys, prediction_log, registry, snapshots
from copml.labels import class_labels
from copml.project import Project
from copml.redaction import keyed_hash
from copml.serve.batcher import MicroBatcher
from copml.serve.champion import ChampionSlot
from copml.serve.requests import PredictResponse, instance_model, predict_request_model
from copml.store import bulk_insert, open_store, prediction_inputs
from copml.train import positive_scores

MAX_BODY_BYTES = 1 << 20
MAX_INSTANCES = 1000


class _BodyLimit:
    """413 for bodies over the limit, by Content-Length or by counting a chunked body."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(self.limit)(scope, receive, send)
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _TooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body over the limit of {limit} bytes"}, 413)


def create_app(
    project: Project,
    *,
    insecure: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
    poll_seconds: float = 5.0,
) -> FastAPI:
    spec = project.spec
    data = spec.data
    engine = open_store(project.db_url)
    verifier = keys.Verifier(engine)
    negative_label, positive_label = class_labels(data)
    band = spec.serving.review_band
    slot = ChampionSlot(project, engine)
    slot.refresh()
    mv = registry.champion(project)
    snap = snapshots.get(engine, mv.snapshot_id, missing_ok=True) if mv else None
    # The request model follows the champion's training data at start-up.
    schema = snap.schema if snap else snapshots.latest(engine).schema
    Instance = instance_model(schema)
    PredictRequest = predict_request_model(Instance, MAX_INSTANCES)

    def process(group: list[Any]) -> list[list[dict[str, Any]]]:
        champion = slot.current  # read once: this group finishes on this model
        assert champion is not None
        rows = [row for pending in group for row in pending.rows]
        frame = pd.DataFrame(rows, columns=[*champion.features, data.id])
        scores = positive_scores(champion.model, frame[champion.features])
        positive = scores >= spec.model.threshold
        review = (scores >= band[0]) & (scores < band[1]) if band else np.zeros(len(rows), bool)
        done = time.perf_counter()
        latencies = [(done - p.started) * 1000 for p in group for _ in p.rows]
        key = prediction_log.new_key()
        stored = [_redacted(row) for row in rows]

        def inputs(conn: Connection, first: int) -> None:
            bulk_insert(
                conn,
                prediction_inputs,
                ("seq", "input", "input_hash", "entity_key", "latency_ms"),
                [
                    (
                        first + i,
                        json.dumps(r),
                        hashlib.sha256(json.dumps(r).encode()).hexdigest(),
                        r.get(data.id),
                        lat,
                    )
                    for i, (r, lat) in enumerate(zip(stored, latencies, strict=True))
                ],
            )

        header = prediction_log.Header(
            key, datetime.now(UTC), spec.project, champion.version, None, "api"
        )
        prediction_log.write(engine, header, positive, scores, review, inputs)
        out, i = [], 0
        for pending in group:
            answers = []
            for _ in pending.rows:
                answers.append(
                    {
                        "prediction_id": f"{key}{i:08x}",
                        "label": positive_label if positive[i] else negative_label,
                        "score": float(scores[i]),
                        "review": bool(review[i]),
                    }
                )
                i += 1
            out.append([champion.version, answers])
        return out

    def _redacted(row: dict[str, Any]) -> dict[str, Any]:
        clear = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
        for column in {data.id, *data.pii}:
            if clear.get(column) is not None:
                clear[column] = keyed_hash(clear[column], project.pii_key)
        return clear

    batcher = MicroBatcher(process)

    async def follow_champion() -> None:
        while True:
            await asyncio.sleep(poll_seconds)
            await asyncio.to_thread(slot.refresh)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        batcher.start()
        poller = asyncio.create_task(follow_champion()) if poll_seconds > 0 else None
        yield
        if poller is not None:
            poller.cancel()
        await batcher.stop()

    app = FastAPI(
        title=f"copml: {spec.project}", version="1", lifespan=lifespan, description=spec.objective
    )

    def require(*roles: str) -> Any:
        async def check(request: Request) -> keys.Key | None:
            if insecure:
                return None
            header = request.headers.get("authorization", "")
            scheme, _, presented = header.partition(" ")
            key = verifier.verify(presented.strip()) if scheme.lower() == "bearer" else None
            if key is None:
                raise HTTPException(
                    401,
                    "a valid API key is required (Authorization: Bearer)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if key.role not in roles:
                raise HTTPException(
                    403, f"role {key.role!r} may not do this; needs one of {', '.join(roles)}"
                )
            return key

        return Depends(check)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        champion = slot.current
        if champion is None:
            return JSONResponse({"status": "no champion loaded"}, 503)
        return JSONResponse({"status": "ready", "model_version": champion.version})

    @app.post("/v1/predict", response_model=PredictResponse)
    async def predict(
        body: PredictRequest,
        _key: Any = require("service"),  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        if slot.current is None:
            raise HTTPException(503, "no champion model is loaded")
        rows = [instance.model_dump() for instance in body.instances]  # type: ignore[attr-defined]
        version, answers = await batcher.submit(rows)
        return {"model_version": version, "predictions": answers}

    @app.post("/v1/admin/reload")
    async def reload(key: Any = require("operator")) -> dict[str, Any]:
        actor = f"key:{key.prefix}" if key else "system"
        result = await asyncio.to_thread(slot.refresh, actor)
        return {
            "model_version": result.model_version,
            "swapped": result.swapped,
            "refused": result.refused,
        }

    @app.get("/v1/predictions/{prediction_id}")
    async def prediction(prediction_id: str, _key: Any = require("auditor")) -> dict[str, Any]:
        record = prediction_log.record(engine, prediction_id)
        if record is None:
            raise HTTPException(404, f"no prediction {prediction_id!r}")
        return record

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the field and the problem; never echo the input back (it may be PII, or NaN,
        # which JSON cannot carry).
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, 422)

    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    return app
