"""``POST /v1/feedback``: the truth about one prediction, named by its id or by the
entity's id and when the truth was observed (matched as a feedback file is)."""

import asyncio
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel
from sqlalchemy import Engine

from copml import feedback, prediction_log
from copml.redaction import keyed_hash
from copml.serve.access import ServiceKey, actor, charge
from copml.serve.requests import JsonRoute
from copml.serve.responses import AUTH, BEARER, BODY, errors
from copml.serve.state import Served


def router(FeedbackRequest: type[BaseModel]) -> APIRouter:
    """The route for feedback bodies of ``FeedbackRequest`` (the target's classes)."""
    routes = APIRouter(route_class=JsonRoute)

    @routes.post("/v1/feedback", responses=errors(*AUTH, 404, *BODY), dependencies=[BEARER])
    async def post_feedback(
        server: Served,
        body: FeedbackRequest,
        key: ServiceKey,
    ) -> dict[str, Any]:
        actual = server.actual(body.actual, "actual")
        charge(server.limiter, key, 1, "/v1/feedback")
        observed = body.observed_at or datetime.now(UTC)
        if body.prediction_id is not None:
            found = prediction_log.resolve(server.engine, [body.prediction_id])
        else:  # the same matching as a feedback file: latest prediction before observed_at
            entity = pd.Series([keyed_hash(body.id, server.project.pii_key)])
            found = await asyncio.to_thread(
                feedback.match_entities,
                server.engine,
                server.project.spec.data.id,
                entity,
                pd.Series([pd.Timestamp(observed)]),
            )
        if pd.isna(found.iloc[0]):
            raise HTTPException(404, "no prediction matches this feedback")
        seq = int(found.iloc[0])
        state = await asyncio.to_thread(_record, server.engine, seq, actual, observed, actor(key))
        return {"status": state}

    return routes


def _record(engine: Engine, seq: int, actual: float, observed: datetime, source: str) -> str:
    """Store the truth of prediction ``seq``; whether it was new, corrected or the same."""
    outcome = pd.DataFrame({"seq": [seq], "actual": [actual], "observed_at": [observed]})
    with engine.begin() as conn:
        loaded, corrected, _ = feedback.apply(conn, outcome, source=source, at=datetime.now(UTC))
    return "loaded" if loaded else "corrected" if corrected else "unchanged"
