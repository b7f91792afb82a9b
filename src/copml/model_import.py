"""``copml models import URI``: a model a team already has in MLflow becomes a copml version.

The model is copied from its own store, loaded and checked against the spec (a binary
scikit-learn classifier that scores the declared features) before anything is written;
then it is registered with lineage ``imported`` (source URI, source run, flavors,
signature, artifact sha256 of the copy) and from there is gated, approved, promoted,
served, monitored, audited and replayed like a trained version. It has no recorded
snapshot or code, so it cannot be reproduced.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from copml import events, lineage, registry, snapshots
from copml.errors import CopmlError, NotFoundError, UserCodeError
from copml.project import Project
from copml.store import open_store

CHECK_ROWS = 200
"""Rows of the latest snapshot an imported model must score before it is registered."""


@dataclass
class ImportResult:
    version: str
    source_uri: str
    source_run_id: str
    flavors: list[str]
    artifact_sha256: str
    signature: dict[str, Any] | None = None
    reference_snapshot_id: str | None = None
    notes: list[str] = field(default_factory=list)


def _check_scores(project: Project, uri: str, model: Any) -> snapshots.Snapshot | None:
    """Score the first rows of the latest snapshot, which becomes the version's reference
    for drift and explanations (none yet: the gate checks later)."""
    from copml.kinds import kind_for

    try:
        snap = snapshots.latest(open_store(project.db_url))
    except NotFoundError:
        return None
    kind = kind_for(project.spec)
    features = kind.training_frame(project, snap)[project.spec.data.features].head(CHECK_ROWS)
    try:
        kind.decide(project, model, kind.scores(model, features))
    except UserCodeError as exc:  # the kind says what is wrong with the model
        raise CopmlError(f"cannot import {uri}: {exc}") from None
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise CopmlError(
            f"cannot import {uri}: it does not score the declared features ({reason})"
        ) from None
    return snap


def import_model(
    project: Project,
    uri: str,
    *,
    tracking_uri: str | None = None,
    actor: str = "system",
    at: datetime | None = None,
) -> ImportResult:
    """Register the MLflow model ``uri`` (in ``tracking_uri``, default the project's store)
    as a new version; nothing is written unless every check passes."""
    with tempfile.TemporaryDirectory(prefix="copml-import-") as tmp:
        source = registry.fetch(uri, tracking_uri or project.tracking_uri, Path(tmp))
        if "sklearn" not in source.flavors:
            raise CopmlError(
                f"cannot import {uri}: copml imports scikit-learn models (MLflow flavor "
                f"'sklearn'); this one has {', '.join(source.flavors) or 'no flavor'}"
            )
        try:
            model = registry.load_folder(source.folder, project.spec.model.task)
        except Exception as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            raise CopmlError(f"cannot import {uri}: its model does not load ({reason})") from None
        reference = _check_scores(project, uri, model)
        sha = registry.directory_sha256(source.folder)
        tags = {
            registry.TAG + "lineage": registry.IMPORTED,
            registry.TAG + "source_uri": uri,
            registry.TAG + "source_tracking_uri": source.tracking_uri,
            registry.TAG + "source_run_id": source.run_id,
            registry.TAG + "flavors": json.dumps(list(source.flavors)),
            registry.TAG + "signature": json.dumps(source.signature) if source.signature else "",
            registry.TAG + "artifact_sha256": sha,
            registry.TAG + "state": "registered",
            **({registry.TAG + "reference_snapshot_id": reference.id} if reference else {}),
        }
        mv = registry.register_imported(project, source, tags)
    result = ImportResult(
        mv.version,
        uri,
        source.run_id,
        list(source.flavors),
        sha,
        source.signature,
        reference.id if reference else None,
    )
    if reference is None:
        result.notes.append(
            "no snapshot yet: not checked against the declared features; drift and "
            "explanations will have no reference"
        )
    lineage.emit(
        project,
        "import",
        run_id=mv.run_id,
        inputs=[lineage.Dataset(source.tracking_uri, uri)],
        outputs=[lineage.model_dataset(project, mv.version)],
        at=at,
    )
    with open_store(project.db_url).begin() as conn:
        events.record(
            conn,
            events.Kind.MODEL_REGISTERED,
            actor=actor,
            subject=events.model_subject(project.spec.project, mv.version),
            reason=f"imported from {uri}",
            evidence={
                "lineage": registry.IMPORTED,
                "run_id": mv.run_id,
                "snapshot_id": None,
                "reference_snapshot_id": reference.id if reference else None,
                "source_uri": uri,
                "source_tracking_uri": source.tracking_uri,
                "source_run_id": source.run_id,
                "flavors": list(source.flavors),
                "signature": source.signature,
                "artifact_sha256": sha,
            },
            at=at,
        )
    return result
