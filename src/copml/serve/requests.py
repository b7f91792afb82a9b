"""What the API accepts: request models generated from the champion's training snapshot
schema and the spec's labels, and the JSON reading they are validated from.

The API accepts exactly the declared columns with their declared types, as JSON Schema
reads the published OpenAPI: an integer column takes ``78`` and ``78.0`` but not ``true``,
a number column not ``true`` either. A wrong type, a missing or unknown field, a value
outside the declared categories or range, NaN or infinity, and a key given twice all get a
422 that names the field, before any model code runs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from copml import times
from copml.labels import Target
from copml.spec import Column


def _number(value: Any) -> Any:
    """JSON Schema's numbers: ``true`` is none (Python's bool is an int)."""
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "Input should be a number, not a boolean")
    return value


def _whole(value: Any) -> Any:
    """JSON Schema's integers: ``78.0`` is one, ``true`` is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not a boolean")
    return value


_BASE: dict[str, Any] = {
    "string": StrictStr,
    "boolean": bool,
    "datetime": datetime,
}


def _annotation(col: Column) -> Any:
    if col.categories is not None:
        if col.type == "integer":
            values = tuple(int(c) for c in col.categories)
            return Annotated[Literal[values], BeforeValidator(_whole)]  # type: ignore[valid-type]
        return Literal[tuple(str(c) for c in col.categories)]  # type: ignore[valid-type]
    # Bounds inside the validator, so that they reach the schema as minimum/maximum.
    if col.type == "integer":
        return Annotated[int, Field(ge=col.min, le=col.max), BeforeValidator(_whole)]
    if col.type == "float":
        return Annotated[float, Field(ge=col.min, le=col.max), BeforeValidator(_number)]
    if col.type == "category":
        return StrictStr
    return _BASE[col.type]


def instance_model(schema: dict[str, Any]) -> type[BaseModel]:
    """One instance: every feature required (``null`` only where declared nullable); the
    entity id optional."""
    fields: dict[str, Any] = {}
    for name, spec in schema["columns"].items():
        if name == schema.get("target"):
            continue
        col = Column.model_validate(spec)
        annotation = _annotation(col)
        if name == schema["id"]:
            fields[name] = (annotation | None, Field(None))
        elif col.nullable:
            fields[name] = (annotation | None, Field(...))
        else:
            fields[name] = (annotation, Field(...))
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    return create_model("Instance", __config__=config, **fields)


def predict_request_model(instance: type[BaseModel], max_instances: int) -> type[BaseModel]:
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        instances=(list[instance], Field(..., min_length=1, max_length=max_instances)),  # type: ignore[valid-type]
    )


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # absent, never null: the schema says a string


def _time(value: object, info: ValidationInfo) -> datetime:
    """A time field read as the CLI reads ``--at`` (:mod:`copml.times`); a 422 naming it."""
    try:
        return times.parse(value, info.field_name or "time")  # type: ignore[arg-type]
    except times.TimeError as exc:
        raise PydanticCustomError("time_parsing", exc.message) from None


# The schema says what the parser takes: an ISO 8601 time in the years it can hold.
_TIME_SCHEMA = {
    "type": "string",
    "format": "date-time",
    "pattern": "^(19|20|21)[0-9]{2}-",
    "description": "ISO 8601; a time without a zone is UTC; years 1900-2199",
}
Time = Annotated[datetime, BeforeValidator(_time), WithJsonSchema(_TIME_SCHEMA)]


def feedback_request_model(target: Target) -> type[BaseModel]:
    """Ground truth for one prediction, named by its id or by the entity's id (exactly one:
    ``oneOf`` in the schema, a 422 otherwise)."""

    class FeedbackRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"oneOf": [{"required": ["prediction_id"]}, {"required": ["id"]}]},
        )
        prediction_id: str = Field(
            None, min_length=24, max_length=24, json_schema_extra=_no_default
        )
        id: str = Field(None, min_length=1, max_length=256, json_schema_extra=_no_default)
        actual: target.annotation()  # type: ignore[valid-type]
        observed_at: Time | None = None

        @model_validator(mode="before")
        @classmethod
        def _exactly_one(cls, raw: Any) -> Any:
            if isinstance(raw, dict) and ("prediction_id" in raw) == ("id" in raw):
                raise ValueError("give exactly one of prediction_id and id")
            return raw

    return FeedbackRequest


def review_resolution_model(target: Target) -> type[BaseModel]:
    """A human's label (a class, or a value) for a prediction in the review queue."""
    return create_model(
        "ReviewResolution",
        __config__=ConfigDict(extra="forbid"),
        label=(target.annotation(), ...),
        reason=(str | None, Field(None, max_length=2000, description="why, when it overrides")),
    )


def _refuse(loc: list[str | int], msg: str, kind: str) -> HTTPException:
    return HTTPException(422, [{"loc": ["body", *loc], "msg": msg, "type": kind}])


class _Repeated(dict[str, Any]):
    """An object in which a key was given more than once."""

    repeated: list[str]


def _repeats(value: Any, loc: list[str | int]) -> Iterator[list[str | int]]:
    if isinstance(value, _Repeated):
        yield from ([*loc, key] for key in value.repeated)
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _repeats(item, [*loc, key])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _repeats(item, [*loc, i])


def parse_json(body: bytes) -> Any:
    """The body as JSON, refusing with a 422 what ``json.loads`` reads silently or badly:
    a key given twice in one object (it would keep the last), bytes that are not UTF-8."""
    repeated = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        found = dict(items)
        if len(found) == len(items):
            return found
        repeated = True
        marked = _Repeated(found)
        marked.repeated = [key for key, n in Counter(k for k, _ in items).items() if n > 1]
        return marked

    try:
        value = json.loads(body.decode("utf-8"), object_pairs_hook=pairs)
    except UnicodeDecodeError as exc:
        raise _refuse([], f"the body is not UTF-8 (byte {exc.start})", "json_invalid") from None
    except json.JSONDecodeError as exc:
        raise _refuse([exc.pos], f"JSON decode error: {exc.msg}", "json_invalid") from None
    if repeated:
        where = next(_repeats(value, []))
        raise _refuse(where, f"key {where[-1]!r} is given more than once", "duplicate_key")
    return value


class _JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """A route whose JSON body is read by :func:`parse_json`."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(_JsonRequest(request.scope, request.receive))

        return handle
