"""The FastAPI application behind ``copml serve`` (design §7).

Every prediction is committed to the store before its response is sent (group commit
through :class:`~copml.serve.batcher.MicroBatcher`); the request model is generated from
the champion's training snapshot, so bad bodies are refused with a 422 naming the field.
"""

import asyncio
import functools
import json
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from copml import audit, costs, feedback, keys, prediction_log, registry, reviews, snapshots
from copml.errors import NotFoundError, UnknownPrediction
from copml.kinds import kind_for
from copml.project import Project
from copml.redaction import keyed_hash
from copml.serve.batcher import MicroBatcher, Occupancy
from copml.serve.champion import ChampionSlot
from copml.serve.limits import (
    BODY_TIMEOUT,
    MAX_PENDING_BODIES,
    BodyLimit,
    RateLimiter,
    SharedBuckets,
)
from copml.serve.metrics import MetricsMiddleware, ServerMetrics
from copml.serve.requests import (
    JsonRoute,
    feedback_request_model,
    instance_model,
    predict_request_model,
    review_resolution_model,
)
from copml.serve.responses import AUTH, BEARER, BODY, METRICS, PredictResponse, Readiness, errors
from copml.serve.scoring import GroupScorer
from copml.store import heartbeats, open_store

MAX_BODY_BYTES = 1 << 20
# A 404 never echoes the id it was asked about: the body names what is missing, not the
# client's input.
NO_PREDICTION = "no such prediction"
MAX_INSTANCES = 1000
REFUSAL_DELAY_SECONDS = 1.0  # a throttled key guess waits this long for its 429


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
) -> FastAPI:
    """The app; ``clock`` stamps predictions (a simulated clock in ``copml demo xray``);
    ``rate_buckets`` are shared with the other workers of one supervisor."""
    spec = project.spec
    data = spec.data
    engine = open_store(project.db_url)
    verifier = keys.Verifier(engine)
    metrics = ServerMetrics()
    limit = spec.serving.rate_limit
    limiter = RateLimiter(limit.per_second, limit.burst, rate_buckets)
    slot = ChampionSlot(project, engine)
    first = slot.refresh()
    metrics.model_loads.labels("loaded" if first.swapped else "none").inc()
    kind = kind_for(spec)
    own_api = kind.predict_api(project, engine, slot, clock)
    if own_api is not None:  # a body that is not a table of instances
        max_body_bytes = max(max_body_bytes, own_api.max_body_bytes)
        scorer: Any = own_api.scorer
    else:
        mv = registry.champion(project)
        snap = snapshots.get(engine, mv.snapshot_id, missing_ok=True) if mv else None
        # The request model follows the champion's training data at start-up.
        schema = snap.schema if snap else snapshots.latest(engine).schema
        Instance = instance_model(schema)
        PredictRequest = predict_request_model(Instance, MAX_INSTANCES)
        scorer = GroupScorer(project, engine, slot, clock)
    scorer.on_scored.append(metrics.scored)
    target = kind.target(data)
    FeedbackRequest = feedback_request_model(target)
    ReviewResolution = review_resolution_model(target)
    batcher = MicroBatcher(scorer)

    def refresh(actor: str = "system") -> Any:
        result = slot.refresh(actor)
        if result.swapped or result.refused:
            metrics.model_loads.labels("loaded" if result.swapped else "refused").inc()
        return result

    cpu_seen = [time.process_time()]

    def beat() -> None:
        spent, cpu_seen[0] = time.process_time() - cpu_seen[0], time.process_time()
        costs.record(engine, "serve", spent, detail="server process since the last heartbeat")
        with engine.begin() as conn:
            conn.execute(
                heartbeats.insert().values(
                    at=datetime.now(UTC),
                    source="server",
                    ok=slot.current is not None,
                    detail=str(heartbeat_seconds),  # the interval: gaps longer mean down time
                )
            )

    async def every(seconds: float, job: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.to_thread(job)
            except Exception:  # a failed check must never stop the server
                continue

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        batcher.start()
        tasks = [
            asyncio.create_task(every(s, job))
            for s, job in ((poll_seconds, refresh), (heartbeat_seconds, beat))
            if s > 0
        ]
        await asyncio.to_thread(beat)
        yield
        for task in tasks:
            task.cancel()
        await batcher.stop()

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
    app.router.route_class = JsonRoute  # a key given twice in a body is refused

    async def verified(presented: str, client: str) -> keys.Key | None:
        """The key, recalled at once or verified off the event loop (scrypt is slow on
        purpose); a client or prefix with too many failures gets 429 before any scrypt,
        a second late: a guesser that waits for answers then costs a timer, not the CPU
        that an instant refusal loop would take from everyone else."""
        if not presented:
            return None
        if (key := verifier.recall(presented)) is not None:
            return key
        try:
            verifier.throttle(presented, client)
            return await asyncio.to_thread(verifier.verify, presented, client)
        except keys.Throttled as exc:
            await asyncio.sleep(REFUSAL_DELAY_SECONDS)
            raise HTTPException(
                429, str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from None

    def require(*roles: str) -> Any:
        async def check(request: Request) -> keys.Key | None:
            if insecure:
                return None
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            presented = presented.strip() if scheme.lower() == "bearer" else ""
            key = await verified(presented, request.client.host if request.client else "")
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

    def charge(key: keys.Key | None, n: int, route: str) -> None:
        """429 unless ``key`` has ``n`` instances left of its rate on ``route`` (every
        worker draws on the same budget; without keys, ``--insecure``, nothing is limited)."""
        if key is None:
            return
        if n > limiter.burst:
            raise HTTPException(
                429, f"{n} instances exceed the rate limit's burst of {limiter.burst}"
            )
        if wait := limiter.retry_after(f"{key.prefix}{route}", n):
            raise HTTPException(
                429,
                f"rate limit of {limiter.rate:g} instances/s on {route} exceeded",
                headers={"Retry-After": str(wait)},
            )

    def actor(key: keys.Key | None) -> str:
        return f"key:{key.prefix}" if key else "system"

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={200: {"model": Readiness}, **errors(503)})
    async def readyz() -> JSONResponse:
        champion = slot.current
        if champion is None:
            return JSONResponse({"status": "no champion loaded"}, 503)
        return JSONResponse({"status": "ready", "model_version": champion.version})

    @app.get("/metrics", response_class=Response, responses=METRICS)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    if own_api is not None:
        api = own_api

        @app.post(
            "/v1/predict",
            response_class=Response,
            openapi_extra=api.openapi,
            responses=errors(*AUTH, 415, *BODY),
            dependencies=[BEARER],
            description=api.description,
        )
        async def predict_uploads(request: Request, key: Any = require("service")) -> Response:
            champion = slot.current
            if champion is None:
                raise HTTPException(503, "no champion model is loaded")
            items = await api.read(request)
            charge(key, len(items), "/v1/predict")  # before preparing: that is the work
            rows = await asyncio.to_thread(api.prepare, items, champion.model)
            text = json.dumps(api.respond(await batcher.submit(rows)))
            return Response(text, media_type="application/json")

    else:

        @app.post(
            "/v1/predict",
            response_class=Response,
            responses={
                200: {"model": PredictResponse, "description": "One answer per instance"},
                **errors(*AUTH, *BODY),
            },
            dependencies=[BEARER],
        )
        async def predict(body: PredictRequest, key: Any = require("service")) -> Response:
            if slot.current is None:
                raise HTTPException(503, "no champion model is loaded")
            # Checked and redacted per request, before grouping: a bad one fails alone.
            rows = scorer.encode([instance.model_dump() for instance in body.instances])
            charge(key, len(rows), "/v1/predict")
            version, answers = await batcher.submit(rows)
            # Serialised here, once: the answers are plain JSON types already, and FastAPI's
            # response-model round trip would cost more than the prediction on small groups.
            text = json.dumps({"model_version": version, "predictions": answers})
            return Response(text, media_type="application/json")

    def _record_feedback(seq: int, actual: float, observed: datetime, source: str) -> str:
        outcome = pd.DataFrame({"seq": [seq], "actual": [actual], "observed_at": [observed]})
        with engine.begin() as conn:
            loaded, corrected, _ = feedback.apply(
                conn, outcome, source=source, at=datetime.now(UTC)
            )
        return "loaded" if loaded else "corrected" if corrected else "unchanged"

    def _actual(value: object, field: str) -> float:
        (code,) = target.encode([value])
        if code is None:
            raise HTTPException(
                422, [{"loc": ["body", field], "type": "value_error", "msg": target.refusal()}]
            )
        return code

    def known(prediction_id: str) -> int:
        """The sequence number of ``prediction_id``: strictly parsed, its row inside its
        batch; a 404 otherwise."""
        found = prediction_log.resolve(engine, [prediction_id]).iloc[0]
        if pd.isna(found):
            raise HTTPException(404, NO_PREDICTION)
        return int(found)

    @app.post("/v1/feedback", responses=errors(*AUTH, 404, *BODY), dependencies=[BEARER])
    async def post_feedback(body: FeedbackRequest, key: Any = require("service")) -> dict[str, Any]:
        actual = _actual(body.actual, "actual")
        charge(key, 1, "/v1/feedback")
        observed = body.observed_at or datetime.now(UTC)
        if body.prediction_id is not None:
            found = prediction_log.resolve(engine, [body.prediction_id])
        else:  # the same matching as a feedback file: latest prediction before observed_at
            keys = pd.Series([keyed_hash(body.id, project.pii_key)])
            found = await asyncio.to_thread(
                feedback.match_entities, engine, data.id, keys, pd.Series([pd.Timestamp(observed)])
            )
        if pd.isna(found.iloc[0]):
            raise HTTPException(404, "no prediction matches this feedback")
        seq = int(found.iloc[0])
        state = await asyncio.to_thread(_record_feedback, seq, actual, observed, actor(key))
        return {"status": state}

    @app.get("/v1/predictions/{prediction_id}", responses=errors(*AUTH, 404), dependencies=[BEARER])
    async def prediction(prediction_id: str, _key: Any = require("auditor")) -> dict[str, Any]:
        """The whole decision record: input (PII redacted), version, champion then,
        lineage, explanation and every event about that version."""
        await asyncio.to_thread(known, prediction_id)
        try:
            record = await asyncio.to_thread(audit.record, project, prediction_id)
        except UnknownPrediction:
            raise HTTPException(404, NO_PREDICTION) from None
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        return json.loads(json.dumps(record, default=str))

    @app.get(
        "/v1/predictions/{prediction_id}/explanation",
        responses=errors(*AUTH, 404),
        dependencies=[BEARER],
    )
    async def explanation(prediction_id: str, _key: Any = require("auditor")) -> dict[str, Any]:
        """Why: SHAP values per feature in log-odds; base + values = the model's output."""
        await asyncio.to_thread(known, prediction_id)
        try:
            return await asyncio.to_thread(
                functools.partial(kind.explain, project, prediction_id, inline=True)
            )
        except UnknownPrediction:
            raise HTTPException(404, NO_PREDICTION) from None
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/v1/reviews", responses=errors(*AUTH, 422), dependencies=[BEARER])
    async def open_reviews(
        limit: int = 100, _key: Any = require("operator")
    ) -> dict[str, list[dict[str, Any]]]:
        found = await asyncio.to_thread(reviews.open_items, engine, limit)
        return {"reviews": json.loads(json.dumps(found, default=str))}

    @app.post(
        "/v1/reviews/{prediction_id}", responses=errors(*AUTH, 404, *BODY), dependencies=[BEARER]
    )
    async def resolve_review(
        prediction_id: str, body: ReviewResolution, key: Any = require("operator")
    ) -> dict[str, Any]:
        await asyncio.to_thread(known, prediction_id)
        _actual(body.label, "label")  # 422 naming the field when it is no class or value
        try:
            await asyncio.to_thread(
                reviews.resolve, engine, project.spec, prediction_id, body.label, actor=actor(key)
            )
        except UnknownPrediction:
            raise HTTPException(404, NO_PREDICTION) from None
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        return {"status": "resolved", "label": body.label}

    @app.post("/v1/admin/reload", responses=errors(*AUTH), dependencies=[BEARER])
    async def reload(key: Any = require("operator")) -> dict[str, Any]:
        result = await asyncio.to_thread(refresh, actor(key))
        return {
            "model_version": result.model_version,
            "swapped": result.swapped,
            "refused": result.refused,
        }

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the field and the problem; never echo the input back (it may be PII, or NaN,
        # which JSON cannot carry).
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, 422)

    app.add_middleware(Occupancy, batcher=batcher, path="/v1/predict")
    app.add_middleware(
        BodyLimit, limit=max_body_bytes, timeout=body_timeout, max_pending=max_pending_bodies
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
