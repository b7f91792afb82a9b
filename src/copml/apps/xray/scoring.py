"""Scoring x-rays with the champion cascade, in batch (``copml score FOLDER``) and in the
server: the same decisions, the same record.

Each image's record is the prediction (model 1: label and score, the review flag), model 2's
answer and both networks' registered versions (``cascade_answers``), and the image's sha256;
the image itself is archived by that hash when the spec says ``keep``. Low confidence in
either model opens a review, in the same transaction as the prediction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, insert, select

from copml import costs, prediction_log, registry, rollout, snapshots
from copml.apps.xray import image_archive, image_sets
from copml.apps.xray.answers import cascade_answers
from copml.errors import DataValidationError, NotFoundError
from copml.kinds import kind_for
from copml.project import Project
from copml.score import emit_scored_lineage, record_scored, refuse_if_halted
from copml.store import open_store, reviews

OUTPUT_COLUMNS = [
    "path",
    "label",
    "score",
    "type",
    "review",
    "type_probability",
    "model_version",
    "prediction_id",
]


@dataclass
class ImageScoreResult:
    rows: int
    model_version: str
    snapshot_id: str
    prediction_batch: str
    output: Path
    positives: int
    reviews: int


def record_answers(
    conn: Connection,
    first: int,
    decided: pd.DataFrame,
    sha256: list[str],
    models: dict[str, str],
    at: datetime,
    reasons: list[str | None] | None = None,
) -> None:
    """Model 2's answers and the review queue entries of one logged group, in its
    transaction; ``reasons``: why each went to a person beyond its scores (None: unsure)."""
    types = decided["type"].tolist()
    probabilities = decided["type_probability"].tolist()
    conn.execute(
        insert(cascade_answers),
        [
            {
                "seq": first + i,
                "type": types[i],
                "type_probability": None if pd.isna(probabilities[i]) else float(probabilities[i]),
                "image_sha256": sha256[i],
                "models": models,
            }
            for i in range(len(decided))
        ],
    )
    flagged = np.flatnonzero(decided["review"].to_numpy())
    if len(flagged):
        why = reasons or [None] * len(decided)
        conn.execute(
            insert(reviews),
            [{"seq": first + int(i), "opened_at": at, "reason": why[int(i)]} for i in flagged],
        )


def versions_of(mv: registry.ModelVersion) -> dict[str, str]:
    """The cascade's version and its two networks' registered versions, for every answer."""
    return {"cascade": mv.version, **registry.parts(mv)}


def score_folder(
    project: Project,
    folder: str | Path,
    output: str | Path,
    *,
    at: datetime | None = None,
    actor: str = "system",
) -> ImageScoreResult:
    """Score every image under ``folder`` with the champion cascade; log all, write ``output``.

    All or nothing, as tabular scoring: an unreadable image stops the batch before anything
    is logged (every bad file named), and the output appears only after the log commits.
    """
    from copml.apps.xray.vision import images as vision

    spec = project.spec
    engine = open_store(project.db_url)
    halted = refuse_if_halted(project, engine)
    champion = registry.champion(project)
    if champion is None:
        raise NotFoundError("no champion cascade yet: train one and promote it")
    cascade = registry.load(project, champion)
    folder = Path(folder).resolve()
    found = vision.validate(vision.listing(folder), allow_duplicates=True)
    when = at or datetime.now(UTC)
    running = rollout.current(engine, spec.project)
    shadow = rollout.load_arm(project, engine, actor, running.shadow, rollout.SHADOW)
    with costs.metered(engine, "score", at=when, detail=str(folder)):
        table = image_sets.image_table(found)
        arrays = cascade.arrays([str(f) for f in found.files()])
        decided = cascade.predict(arrays)
        if halted is not None:  # halted into review_all: every image to a radiologist
            decided["review"] = True
        # The shadow scores the same images (a batch has no ids: no canary splits it).
        mirrored = (
            None
            if shadow is None
            else kind_for(spec).decide_rows(project, shadow[1], {"array": list(arrays)})
        )
    if image_sets.settings(spec.data).keep:
        archive = image_archive.directory(project.home)
        for file, digest in zip(found.files(), table["sha256"], strict=True):
            image_archive.put_file(archive, file, digest)
    frozen = table[["path", "sha256", *spec.data.features]]
    snap = snapshots.prepare(
        frozen, spec.data, directory=project.snapshots_dir, source=str(folder), kind="batch"
    )
    positive = (decided["label"] == cascade.rules.positive).to_numpy()
    review = decided["review"].to_numpy(dtype=bool)
    scores = decided["score"].to_numpy(dtype=np.float64)
    models = versions_of(champion)
    key = prediction_log.new_key()
    output = Path(output)
    out = pd.DataFrame(
        {
            "path": table["path"],
            "label": decided["label"],
            "score": scores,
            "type": decided["type"],
            "type_probability": decided["type_probability"],
            "review": review,
            "model_version": champion.version,
            "prediction_id": prediction_log.prediction_ids(key, len(table)).to_pylist(),
        },
        columns=OUTPUT_COLUMNS,
    )
    staged = output.with_name(f".{output.stem}.staged{output.suffix}")
    output.parent.mkdir(parents=True, exist_ok=True)

    def finish(conn: Connection, first: int) -> None:
        snapshots.record(conn, snap, actor=actor)
        record_answers(conn, first, decided, table["sha256"].tolist(), models, when)
        evidence = {
            "rows": len(table),
            "snapshot_id": snap.id,
            "batch": key,
            "positives": int(positive.sum()),
            "reviews": int(review.sum()),
            "models": models,
            "output": str(output),
        }
        record_scored(conn, project, champion.version, str(folder), evidence, actor=actor, at=when)
        if output.suffix.lower() in (".parquet", ".pq"):
            out.to_parquet(staged, index=False)
        else:
            out.to_csv(staged, index=False)

    header = prediction_log.Header(key, when, spec.project, champion.version, snap.id, "batch")
    parts = [(header, [(positive, scores, review, None)])]
    if shadow is not None and mirrored is not None:  # its own batch over the same rows
        chunk = (mirrored.label, mirrored.score, mirrored.review, None)
        parts.append((header.mirrored_by(shadow[0]), [chunk]))
    try:
        prediction_log.write_many(engine, parts, lambda conn, firsts: finish(conn, firsts[0]))
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    os.replace(staged, output)
    emit_scored_lineage(project, key, str(folder), champion.version, snap, output, when)
    return ImageScoreResult(
        len(table), champion.version, snap.id, key, output, int(positive.sum()), int(review.sum())
    )


def answer(project: Project, seq: int) -> dict[str, Any] | None:
    """Model 2's stored answer and the networks' versions for one prediction."""
    engine = open_store(project.db_url)
    with engine.connect() as conn:
        row = conn.execute(select(cascade_answers).where(cascade_answers.c.seq == seq)).first()
    return None if row is None else dict(row._mapping)


def image_of(project: Project, record: dict[str, Any]) -> Path:
    """The very image a stored decision was made on, verified by its sha256: from the
    archive when kept, else from a batch's source folder if the file there is unchanged."""
    sha256 = record["input"]["sha256"]
    try:
        return image_archive.get(image_archive.directory(project.home), sha256)
    except DataValidationError:
        pass
    if record.get("snapshot_id"):
        snap = snapshots.get(open_store(project.db_url), record["snapshot_id"])
        assert snap is not None
        candidate = Path(snap.source) / record["input"]["path"]
        if candidate.exists() and image_archive.file_sha256(candidate) == sha256:
            return candidate
    raise NotFoundError(
        f"the image of prediction {record['prediction_id']} ({sha256[:12]}…) was not kept "
        "(data.images.keep: false) and is not at its source any more"
    )
