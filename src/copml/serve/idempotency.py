"""``Idempotency-Key``: a retried prediction request gets the answer it was given, never a
second prediction.

A client whose response was lost, or a load balancer that retries on another replica after
one died mid-request, sends the same key again. The answer is stored in the transaction
that logs the predictions it names, so it exists exactly when they do, on every replica
sharing the store. A key belongs to the caller's API key and to the instances it came
with (a keyed hash of them): the same key with other instances is refused as a conflict
(409) rather than answered with other instances' scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Header, HTTPException, Request, Response
from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError

from copml import keys
from copml.redaction import keyed_hash
from copml.store import idempotency_keys

HEADER = "Idempotency-Key"
# Visible ASCII, as Stripe and the IETF draft use it: a UUID, a hash, an order number.
_KEY = r"^[\x21-\x7e]+$"
_T = idempotency_keys


@dataclass(frozen=True, slots=True)
class Claim:
    """A request's key, whose it is, and what it asked."""

    caller: str  # the API key's prefix; "" on a server without keys
    key: str
    request_hash: str


def refused(msg: str) -> HTTPException:
    """A 422 naming the header."""
    return HTTPException(422, [{"loc": ["header", HEADER], "msg": msg, "type": "value_error"}])


# The header as the route declares it (documented in the OpenAPI, validated by FastAPI).
Key = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=255,
        pattern=_KEY,
        description="Any unique string of visible ASCII: a retry with the same key gets the "
        "stored answer, never a second prediction",
    ),
]


def claim(
    request: Request,
    given: str | None,
    caller: keys.Key | None,
    instances: list[dict[str, Any]],
    secret: bytes,
) -> Claim | None:
    """The request's claim on its ``Idempotency-Key`` (None without one); a 422 when the
    header is given twice."""
    if given is None:
        return None
    if len(request.headers.getlist(HEADER)) > 1:
        raise refused(f"{HEADER} is given more than once")
    asked = json.dumps(instances, sort_keys=True, default=str)
    return Claim(caller.prefix if caller else "", given, keyed_hash(asked, secret))


def answered(engine: Engine, claim: Claim) -> str | None:
    """The answer already given to ``claim``'s key, or None; a 409 when the key came with
    other instances."""
    with engine.connect() as conn:
        row = conn.execute(
            select(_T.c.request_hash, _T.c.response).where(
                _T.c.caller == claim.caller, _T.c.key == claim.key
            )
        ).first()
    if row is None:
        return None
    if row.request_hash != claim.request_hash:
        raise HTTPException(409, f"this {HEADER} was used with other instances; use a new key")
    return str(row.response)


def record(conn: Connection, answers: list[tuple[Claim, int, str]], at: datetime) -> None:
    """Store each claim with its first prediction's seq and its answer, in the predictions'
    transaction. A plain insert, not COPY: few rows, and a key stored meanwhile must fail
    as SQLAlchemy's ``IntegrityError`` (:func:`lost_race`)."""
    if answers:
        # One statement with a row of VALUES per claim: an executemany would run in
        # psycopg's pipeline mode, which a unique violation leaves aborted.
        conn.execute(
            insert(_T).values(
                [
                    {
                        "caller": c.caller,
                        "key": c.key,
                        "request_hash": c.request_hash,
                        "seq": seq,
                        "response": body,
                        "created_at": at,
                    }
                    for c, seq, body in answers
                ]
            )
        )


def lost_race(error: BaseException) -> bool:
    """Whether a group failed on a key stored meanwhile (the same key in flight twice)."""
    return isinstance(error, IntegrityError) and "idempotency_keys" in str(error.orig or error)


def text(version: str, answers: list[dict[str, Any]]) -> str:
    """The response body of a prediction request, stored as sent."""
    return json.dumps({"model_version": version, "predictions": answers})


def replay(body: str) -> Response:
    """The stored answer, marked as a replay."""
    return Response(body, media_type="application/json", headers={"Idempotent-Replayed": "true"})
