"""The cascade endpoint: an x-ray in (JSON base64 or a multipart upload), the decision of
both networks out, after the prediction, model 2's answer, the image's sha256 and (when the
spec says ``keep``) the image itself are durably stored.

Uploads are checked before they reach the batcher: a body that is not a complete image of
acceptable size is refused with a 4xx naming the field, never scored and never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, Engine

from copml import prediction_log, rollout
from copml.apps.xray import image_archive, image_sets
from copml.apps.xray.scoring import record_answers
from copml.apps.xray.vision import distribution
from copml.apps.xray.vision.images import decode, read_upload, statistics
from copml.errors import DataValidationError
from copml.kinds import OUT_OF_DISTRIBUTION, kind_for, review_reason
from copml.project import Project
from copml.serve.arms import Arms, ArmsSlot, ShadowScorer
from copml.serve.batcher import Pending, report_scored
from copml.serve.champion import Champion, ChampionSlot
from copml.serve.oversight import HaltSlot
from copml.serve.requests import parse_json
from copml.store import bulk_insert, prediction_inputs

MAX_IMAGES = 16
STATISTICS_SIZE = 64  # as load_arrays' default, used for snapshot statistics


class ImageInstance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(..., min_length=1, description="the image file (JPEG or PNG), base64")


class ImagePredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[ImageInstance] = Field(..., min_length=1, max_length=MAX_IMAGES)


OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ImagePredictRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            },
        },
    }
}


def _refuse(status: int, loc: list[str | int], msg: str) -> HTTPException:
    return HTTPException(status, [{"loc": loc, "msg": msg, "type": "value_error"}])


async def read_uploads(request: Request, max_bytes: int) -> list[tuple[list[str | int], bytes]]:
    """(field location, image bytes) per uploaded image, from either body format."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form()
        files = form.getlist("file")
        if not files:
            raise _refuse(422, ["body", "file"], "upload the image as the form field 'file'")
        if len(files) > MAX_IMAGES:
            raise _refuse(422, ["body", "file"], f"at most {MAX_IMAGES} images per request")
        out: list[tuple[list[str | int], bytes]] = []
        for i, item in enumerate(files):
            if isinstance(item, str):
                raise _refuse(422, ["body", "file", i], "expected a file upload, got text")
            out.append((["body", "file", i], await item.read()))
        return out
    if kind != "application/json":
        raise HTTPException(415, "send application/json (base64 images) or multipart/form-data")
    try:  # read as every JSON body is: a key given twice is refused
        body = ImagePredictRequest.model_validate(parse_json(await request.body()))
    except ValidationError as exc:
        detail = [
            {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        raise HTTPException(422, detail) from None
    out = []
    for i, instance in enumerate(body.instances):
        loc: list[str | int] = ["body", "instances", i, "image"]
        if len(instance.image) > max_bytes * 4 // 3 + 4:
            raise _refuse(413, loc, f"image larger than {max_bytes} bytes")
        try:
            out.append((loc, base64.b64decode(instance.image, validate=True)))
        except (binascii.Error, ValueError):
            raise _refuse(422, loc, "not valid base64") from None
    return out


def screening(project: Project, cascade: Any) -> dict[str, Any] | None:
    """The profile requests are checked against; None: not checked (switched off in the
    spec, or a version trained before profiles were recorded)."""
    if not project.spec.serving.out_of_distribution.check:
        return None
    return cascade.profile


def prepare(
    uploads: list[tuple[list[str | int], bytes]],
    size: int,
    max_bytes: int,
    profile: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Decode and check every upload (in a worker thread: decoding is CPU work). With a
    ``profile``, an image far larger than any trained on is decoded at a reduced scale."""
    limit = distribution.max_pixels(profile) if profile is not None else None
    rows = []
    for loc, content in uploads:
        if len(content) > max_bytes:
            raise _refuse(413, loc, f"image of {len(content)} bytes exceeds {max_bytes}")
        try:
            upload = read_upload(content, size, limit)
        except DataValidationError as exc:
            raise _refuse(422, loc, str(exc)) from None
        grey = upload.grey
        # The monitored statistics at the size the training snapshot measured them.
        monitored = grey if size == STATISTICS_SIZE else decode(content, STATISTICS_SIZE)[0]
        mean, std = statistics(monitored[None])
        rows.append(
            {
                "array": grey,
                "content": content,
                "sha256": hashlib.sha256(content).hexdigest(),
                "width": upload.width,
                "height": upload.height,
                "mode": upload.mode,
                "colour": upload.colour,
                "intensity_mean": float(mean[0]),
                "intensity_std": float(std[0]),
            }
        )
    return rows


class ImageScorer:
    """Score one group of uploaded images with the champion cascade (or, for the requests
    the canary draws, with the canary) and log it; raises only before the commit (the
    batcher then splits the group), never after it. A shadow scores the answered images
    again after the commit. An x-ray carries no entity id: the canary draws per request."""

    def __init__(
        self,
        project: Project,
        engine: Engine,
        slot: ChampionSlot,
        clock: Callable[[], datetime] | None = None,
        arms: ArmsSlot | None = None,
        shadow: ShadowScorer | None = None,
        halt: HaltSlot | None = None,
    ) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._halt = halt
        self._project = project
        self._spec = project.spec
        self._engine = engine
        self._slot = slot
        self._arms = arms
        self._shadow = shadow
        options = image_sets.settings(project.spec.data)
        self._archive = image_archive.directory(project.home) if options.keep else None
        self.on_scored: list[Any] = []
        self.on_arm: list[Any] = []

    def __call__(
        self, group: list[Pending]
    ) -> list[tuple[str, dict[str, str], list[dict[str, Any]]]]:
        champion = self._slot.current  # read once: this group finishes on these models
        if champion is None:
            raise RuntimeError("no champion model is loaded")
        arms = self._arms.current if self._arms is not None else Arms()
        arm_of = [
            rollout.CANARY
            if arms.canary is not None and rollout.in_canary(None, arms.share)
            else rollout.CHAMPION
            for _ in group
        ]
        now = self._clock()
        parts = [
            _Part(arm, model, [p for p, a in zip(group, arm_of, strict=True) if a == arm])
            for arm, model in ((rollout.CHAMPION, champion), (rollout.CANARY, arms.canary))
            if model is not None and arm in arm_of
        ]
        every = self._halt is not None and self._halt.reviews_all()  # halted: all to a person
        for part in parts:
            part.decide(every, self._project)
        if self._archive is not None:  # stored before its prediction is, after it scored
            for part in parts:
                for row in part.rows:
                    image_archive.put_bytes(self._archive, row["content"])
        done = time.perf_counter()
        kept = self._archive is not None

        def alongside(conn: Connection, firsts: list[int]) -> None:
            for part, first in zip(parts, firsts, strict=True):
                latencies = [(done - p.started) * 1000 for p in part.group for _ in p.rows]
                bulk_insert(
                    conn,
                    prediction_inputs,
                    ("seq", "input", "input_hash", "entity_key", "latency_ms"),
                    [
                        (first + i, _stored(row, kept), row["sha256"], None, latencies[i])
                        for i, row in enumerate(part.rows)
                    ],
                )
                shas = [row["sha256"] for row in part.rows]
                record_answers(
                    conn, first, part.decided, shas, part.model.models, now, part.reasons
                )

        written = [
            (
                prediction_log.Header(
                    part.key, now, self._spec.project, part.model.version, None, "api", arm=part.arm
                ),
                [(part.positive, part.scores, part.review, None)],
            )
            for part in parts
        ]
        prediction_log.write_many(self._engine, written, alongside)
        answered: dict[int, tuple[str, dict[str, str], list[dict[str, Any]]]] = {}
        for part in parts:
            report_scored(self.on_scored, part.model.version, part.positive, part.review)
            report_scored(self.on_arm, part.arm, part.model.version, len(part.rows))
            answered.update(part.answers())
            if arms.shadow is not None and self._shadow is not None:
                arrays = [row["array"] for row in part.rows]
                self._shadow.offer(arms.shadow, {"array": arrays}, part.key, now)
        return [answered[id(p)] for p in group]


def _stored(row: dict[str, Any], kept: bool) -> str:
    """What the log keeps of an image: its hash, size and statistics (the image itself is
    in the archive when the spec says ``keep``)."""
    return json.dumps(
        {
            "sha256": row["sha256"],
            "width": row["width"],
            "height": row["height"],
            "intensity_mean": row["intensity_mean"],
            "intensity_std": row["intensity_std"],
            "kept": kept,
        }
    )


_SCREENED = ("array", "mode", "colour", "width", "height", "intensity_mean", "intensity_std")


class _Part:
    """One arm's requests of a group: their rows, the cascade's decisions, their batch key."""

    def __init__(self, arm: str, model: Champion, group: list[Pending]) -> None:
        self.arm, self.model, self.group = arm, model, group
        self.rows = [row for pending in group for row in pending.rows]
        self.key = prediction_log.new_key()

    def decide(self, review_all: bool, project: Project) -> None:
        """Score the rows; an image unlike the training images, or every one when
        ``review_all`` (a halt), goes to a person."""
        cascade = self.model.model
        self.decided = cascade.predict(np.stack([r["array"] for r in self.rows]))
        self.unlike: list[tuple[str, ...]] = [()] * len(self.rows)
        if (profile := screening(project, cascade)) is not None:
            columns = {name: [r[name] for r in self.rows] for name in _SCREENED}
            self.unlike = kind_for(project.spec).screen(project, cascade, profile, columns)
            self.decided["review"] = self.decided["review"].to_numpy() | [
                bool(u) for u in self.unlike
            ]
        self.reasons = [review_reason(u) for u in self.unlike]
        if review_all:
            self.decided["review"] = True
        self.positive = (self.decided["label"] == cascade.rules.positive).to_numpy()
        self.scores = self.decided["score"].to_numpy(dtype=np.float64)
        self.review = self.decided["review"].to_numpy(dtype=bool)

    def answers(self) -> dict[int, tuple[str, dict[str, str], list[dict[str, Any]]]]:
        """Each request's answer, by the request's identity."""
        out, i = {}, 0
        for pending in self.group:
            answers = []
            for row in pending.rows:
                probability = self.decided["type_probability"].iat[i]
                answers.append(
                    {
                        "prediction_id": f"{self.key}{i:08x}",
                        "label": self.decided["label"].iat[i],
                        "score": float(self.scores[i]),
                        "type": self.decided["type"].iat[i],
                        "type_probability": None if np.isnan(probability) else float(probability),
                        "review": bool(self.review[i]),
                        "image_sha256": row["sha256"],
                    }
                )
                if self.unlike[i]:  # why a person must look, beyond the scores
                    answers[-1]["reason"] = OUT_OF_DISTRIBUTION
                    answers[-1]["unlike_training"] = list(self.unlike[i])
                i += 1
            out[id(pending)] = (self.model.version, self.model.models, answers)
        return out
