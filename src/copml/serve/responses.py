"""What the API answers: the response models, the errors each route may answer with, and
the bearer-key scheme, so that the published OpenAPI describes the server as it behaves
(clients are generated from it)."""

from __future__ import annotations

from typing import Any

from fastapi import Security
from fastapi.security import HTTPBearer
from pydantic import BaseModel


class Prediction(BaseModel):
    """One decision: ``label`` the class (or a regression's value), ``score`` the positive
    class's or the chosen class's probability (or the value); a multiclass model answers
    every class's probability too. An input unlike the training data is reviewed with
    ``reason`` ``out_of_distribution`` and the checks it failed (``unlike_training``)."""

    prediction_id: str
    label: Any
    score: float
    review: bool
    probabilities: dict[str, float] | None = None
    reason: str | None = None
    unlike_training: list[str] | None = None


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[Prediction]


class Readiness(BaseModel):
    status: str
    model_version: str | None = None


class Issue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """Every refusal: a sentence, or one issue per field for a body or a parameter."""

    detail: str | list[Issue]


_INTEGER = {"schema": {"type": "integer"}}
_WHY: dict[int, dict[str, Any]] = {
    401: {
        "description": "No valid API key (Authorization: Bearer)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    403: {"description": "The key's role may not do this"},
    404: {"description": "No such prediction"},
    408: {"description": "The request body stopped arriving"},
    409: {"description": "The Idempotency-Key was used before with other instances"},
    413: {"description": "The request body is over the size limit"},
    415: {"description": "The body is neither JSON nor a multipart upload"},
    422: {"description": "A field of the body or a parameter is invalid; `loc` names it"},
    429: {
        "description": "Rate limit exceeded, or too many failed keys from this client or prefix",
        "headers": {"Retry-After": _INTEGER},
    },
    503: {
        "description": "No champion model is loaded, too many requests wait for their bodies, "
        "or the store is unreachable for now (retry after Retry-After, with the same "
        "Idempotency-Key)",
        "headers": {"Retry-After": _INTEGER},
    },
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented refusals among ``statuses``, each with the :class:`Problem` body."""
    return {status: {"model": Problem, **_WHY[status]} for status in statuses}


# Every route with a key: missing or wrong key, wrong role, too many failed keys (429).
AUTH = (401, 403, 429)
# The routes that take a body also answer what the body guard refuses.
BODY = (408, 413, 422, 503)
# Keys are checked by the routes themselves; this only declares the scheme in the OpenAPI.
BEARER = Security(HTTPBearer(auto_error=False, description="an API key from `copml keys`"))
METRICS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
