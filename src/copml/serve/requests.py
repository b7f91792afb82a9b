"""Request models generated from the champion's training snapshot schema.

The API accepts exactly the declared columns with their declared types: a wrong type, a
missing or unknown field, a value outside the declared categories or range, NaN or
infinity all get a 422 that names the field, before any model code runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, create_model

from copml.spec import Column

_BASE: dict[str, Any] = {
    "string": StrictStr,
    "integer": int,
    "float": float,
    "boolean": bool,
    "datetime": datetime,
}


def _annotation(col: Column) -> Any:
    if col.categories is not None:
        values = tuple(int(c) if col.type == "integer" else str(c) for c in col.categories)
        return Literal[values]  # type: ignore[valid-type]
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
        bounds = {"ge": col.min, "le": col.max} if col.type in ("integer", "float") else {}
        if name == schema["id"]:
            fields[name] = (annotation | None, Field(None))
        elif col.nullable:
            fields[name] = (annotation | None, Field(..., **bounds))
        else:
            fields[name] = (annotation, Field(..., **bounds))
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    return create_model("Instance", __config__=config, **fields)


def predict_request_model(instance: type[BaseModel], max_instances: int) -> type[BaseModel]:
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        instances=(list[instance], Field(..., min_length=1, max_length=max_instances)),  # type: ignore[valid-type]
    )


class Prediction(BaseModel):
    prediction_id: str
    label: Any
    score: float
    review: bool


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[Prediction]
