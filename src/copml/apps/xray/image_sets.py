"""Image folders as copml snapshots: every file validated, archived by its sha256 and
listed as a table (file facts plus the statistics monitored for drift); labelled
production images joined back for retraining."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, select

from copml import snapshots
from copml.apps.xray import image_archive
from copml.apps.xray.answers import cascade_answers
from copml.apps.xray.vision import images as vision
from copml.labels import class_labels
from copml.project import Project
from copml.spec import Data
from copml.store import open_store

# What copml records of every image: the file, its label, and the statistics it watches for
# drift (a new scanner changes brightness and contrast long before anyone relabels).
IMAGE_FEATURES = ("intensity_mean", "intensity_std", "width", "height")
_IMAGE_COLUMNS: dict[str, dict[str, Any]] = {
    "path": {"type": "string"},
    "label": {"type": "category"},  # categories: [images.negative, positive]
    "subtype": {"type": "string", "nullable": True},
    "group": {"type": "string", "nullable": True},
    "split": {"type": "string", "nullable": True},
    "sha256": {"type": "string"},
    "width": {"type": "integer", "min": 1},
    "height": {"type": "integer", "min": 1},
    "intensity_mean": {"type": "float", "min": 0, "max": 1},
    "intensity_std": {"type": "float", "min": 0, "max": 1},
}


class Images(BaseModel):
    """How image data is checked, and what is kept of an image a server scores
    (``data.images`` in ``copml.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: tuple[int, int] | None = Field(None, description="[width, height] every image must have")
    max_bytes: int = Field(10_000_000, ge=1024, description="largest upload the server accepts")
    keep: bool = Field(
        False, description="store each scored image (content-addressed) for audit and replay"
    )
    allow_duplicates: bool = Field(
        False, description="accept byte-identical files under different paths (same label)"
    )
    negative: str = Field("NORMAL", description="the label of images without the finding")


def declare(section: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` section of an image folder completed: an image set always has the same
    table of files, so the spec does not repeat it; ``images:`` holds its settings."""
    if section.get("columns"):
        raise ValueError("image data has fixed columns; remove 'columns'")
    if (section.get("id", "path"), section.get("target", "label")) != ("path", "label"):
        raise ValueError("image data is identified by 'path' and labelled by 'label'")
    if section.get("positive") is None:
        raise ValueError("image data needs 'positive', the label of the finding")
    settings = Images.model_validate(section.pop("images", None) or {})
    # The label is one of two classes, like any binary target: the negative one comes
    # from ``images.negative``.
    label = {"type": "category", "categories": [settings.negative, section["positive"]]}
    return {
        **section,
        "columns": {**_IMAGE_COLUMNS, "label": label},
        "options": settings.model_dump(),
        "monitored": list(IMAGE_FEATURES),
    }


def settings(data: Data) -> Images:
    """The ``images:`` settings of an image folder's data section."""
    return Images.model_validate(data.options or {})


def image_table(images: vision.ImageSet, archive: Path | None = None) -> pd.DataFrame:
    """An image set as copml's table: file facts plus the monitored statistics; each file
    copied into the content-addressed archive when ``archive`` is given."""
    frame = images.frame.copy()
    for extra in ("group", "split"):
        if extra not in frame:
            frame[extra] = None
    mean, std = vision.statistics(vision.load_arrays(images))
    frame["intensity_mean"], frame["intensity_std"] = mean, std
    if archive is not None:
        for file, digest in zip(images.files(), frame["sha256"], strict=True):
            image_archive.put_file(archive, file, digest)
    return frame


def create(
    engine: Engine, data: Data, *, root: Path, directory: Path, source: str, actor: str
) -> snapshots.Snapshot:
    """Freeze an image folder: every file validated and archived by its sha256."""
    folder = Path(source) if Path(source).is_absolute() else root / source
    options = settings(data)
    found = vision.read_folder(folder)
    vision.validate(
        found,
        size=options.size,
        labels=[str(data.positive), options.negative],
        allow_duplicates=options.allow_duplicates,
    )
    frame = image_table(found, image_archive.directory(directory.parent))
    return freeze_images(
        engine, data, frame, directory=directory, source=str(source), actor=actor, images=found
    )


def freeze_images(
    engine: Engine,
    data: Data,
    frame: pd.DataFrame,
    *,
    directory: Path,
    source: str,
    actor: str = "system",
    images: Any = None,
) -> snapshots.Snapshot:
    """Record a table of archived images as a training snapshot. Its id is the hash over
    paths, labels, subtypes and file hashes, so the same images and labels give the same id."""
    frame = frame[list(data.columns)].reset_index(drop=True)
    listed = images if images is not None else vision.ImageSet(frame, directory)
    extra = (
        {"__images__": {"kind": "images", **vision.profile(images)}} if images is not None else {}
    )
    return snapshots.freeze(
        engine,
        data,
        frame,
        snapshot_id=vision.content_sha256(listed),
        directory=directory,
        source=source,
        storage="images",
        profile=extra,
        actor=actor,
    )


def production_images(project: Project, frame: pd.DataFrame) -> pd.DataFrame:
    """The archived images of ``frame``'s labelled predictions, as snapshot rows."""
    data = project.spec.data
    if frame.empty:
        return pd.DataFrame(columns=list(data.columns))
    with open_store(project.db_url).connect() as conn:
        found = dict(
            conn.execute(
                select(cascade_answers.c.seq, cascade_answers.c.image_sha256).where(
                    cascade_answers.c.seq.in_([int(s) for s in frame["seq"]])
                )
            ).all()
        )
    archive = image_archive.directory(project.home)
    frame = frame[frame["seq"].map(lambda s: s in found)].copy()
    frame["sha256"] = frame["seq"].map(found)
    frame = frame[frame["sha256"].map(lambda d: image_archive.path_of(archive, d).exists())]
    negative, positive = class_labels(data)
    return pd.DataFrame(
        {
            "path": [f"production/{d}" for d in frame["sha256"]],
            "label": np.where(frame["actual"].to_numpy() == 1, positive, negative),
            "subtype": None,  # feedback says pneumonia or not; the type is not confirmed
            "group": None,
            "split": None,
            "sha256": frame["sha256"].to_numpy(),
            **{f: frame[f].to_numpy() for f in data.features},
        }
    ).drop_duplicates("sha256")


def retraining_snapshot(
    project: Project, labelled: pd.DataFrame, *, actor: str
) -> tuple[snapshots.Snapshot, int, int]:
    """The declared image folder plus the archived, labelled production images."""
    spec = project.spec
    engine = open_store(project.db_url)
    source = snapshots.create(
        engine, spec.data, root=project.root, directory=project.snapshots_dir, actor=actor
    ).load()
    production = (
        production_images(project, labelled)
        if spec.retraining.include_production
        else pd.DataFrame(columns=list(spec.data.columns))
    )
    parts = [source] if spec.retraining.include_source or production.empty else []
    combined = pd.concat([*parts, production], ignore_index=True)
    snap = freeze_images(
        engine,
        spec.data,
        combined,
        directory=project.snapshots_dir,
        source=f"{spec.data.source if parts else 'no source'} + {len(production)} labelled "
        "production images",
        actor=actor,
    )
    return snap, len(source) if parts else 0, len(production)
