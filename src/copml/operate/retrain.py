"""``retrain``: a new snapshot of the declared source plus labelled production data, then a
tracked run. Production rows are the predictions of the look-back period joined with their
ground truth, so a model that decayed after a shift learns from the world as it is now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from copml import lineage, snapshots
from copml.kinds import kind_for
from copml.monitor.window import window_frame
from copml.project import Project
from copml.store import open_store
from copml.train import TrainResult, train


@dataclass
class Retrained:
    snapshot_id: str
    source_rows: int
    production_rows: int
    result: TrainResult


def _labelled(project: Project, at: datetime) -> pd.DataFrame:
    """Predictions of the look-back period that have their ground truth."""
    spec = project.spec
    start = (pd.Timestamp(at) - spec.retraining.lookback.offset()).to_pydatetime()
    frame = window_frame(open_store(project.db_url), start, at, spec.data.features)
    return frame[frame["actual"].notna()]


def production_rows(project: Project, frame: pd.DataFrame) -> pd.DataFrame:
    """Labelled predictions (``frame``, from :func:`_labelled`) as training rows (declared
    types)."""
    data = project.spec.data
    if frame.empty or any(f not in frame.columns for f in data.features):
        return pd.DataFrame(columns=list(data.columns))
    target = kind_for(project.spec).target(data)
    rows = pd.DataFrame(
        {
            # Entity ids were redacted at scoring; a row's prediction number is unique.
            data.id: [f"prediction-{int(s)}" for s in frame["seq"]],
            **{f: frame[f].to_numpy() for f in data.features},
            data.target: target.decode(frame["actual"].to_numpy()),
        }
    )
    for column in data.features:  # categoricals from Parquet back to plain values
        if isinstance(rows[column].dtype, pd.CategoricalDtype):
            rows[column] = rows[column].astype(object)
    return snapshots.validate(rows, data)


def retrain(
    project: Project, *, actor: str, at: datetime, run_tags: dict[str, str] | None = None
) -> Retrained:
    spec = project.spec
    labelled = _labelled(project, at)
    own = kind_for(spec).retraining_snapshot(project, labelled, actor=actor)
    if own is not None:  # data that is not a table file: the kind freezes it
        snap, source_rows, production_rows_ = own
        result = train(project, snapshot_id=snap.id, actor=actor, at=at, run_tags=run_tags)
        return Retrained(snap.id, source_rows, production_rows_, result)
    engine = open_store(project.db_url)
    source = snapshots.validate(
        snapshots.read_source(spec.data.source, project.root, spec.data.query), spec.data
    )
    production = (
        production_rows(project, labelled)
        if spec.retraining.include_production
        else pd.DataFrame(columns=list(spec.data.columns))
    )
    # Recent production alone when the spec says so (a shifted world); the source when
    # there is no labelled production data yet.
    parts = [source] if spec.retraining.include_source or production.empty else []
    combined = pd.concat([*parts, production], ignore_index=True)
    source_rows = len(source) if parts else 0
    snap = snapshots.prepare(
        combined,
        spec.data,
        directory=project.snapshots_dir,
        source=f"{spec.data.source if parts else 'no source'} + {len(production)} labelled "
        "production rows",
        kind="training",
    )
    with engine.begin() as conn:
        snap = snapshots.record(conn, snap, actor=actor)
    lineage.emit(
        project,
        "snapshot",
        run_id=snap.id,
        inputs=[lineage.file_dataset(spec.data.source)],
        outputs=[lineage.snapshot_dataset(project, snap)],
        at=at,
    )
    result = train(project, snapshot_id=snap.id, actor=actor, at=at, run_tags=run_tags)
    return Retrained(snap.id, source_rows, len(production), result)
