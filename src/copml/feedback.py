"""Ground truth arriving after the fact, joined to the predictions it judges.

Rows name a ``prediction_id`` or the entity id (matched, through its keyed hash, to the
latest prediction for that entity made before the outcome was observed). Loading is
idempotent: the same file twice changes nothing; a changed outcome is a correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select, update

from copml import events, snapshots
from copml.errors import DataValidationError
from copml.labels import encode_actual
from copml.project import Project
from copml.redaction import redact_series
from copml.store import bind_value, bulk_insert, feedback, open_store, predictions

_CHUNK = 5000


@dataclass
class FeedbackResult:
    rows: int
    loaded: int = 0
    unchanged: int = 0
    corrected: int = 0
    unknown: int = 0
    unknown_examples: list[str] = field(default_factory=list)


def _chunks(values: list[str]) -> list[list[str]]:
    return [values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)]


def _by_prediction_id(engine: Engine, ids: list[str]) -> set[str]:
    found: set[str] = set()
    with engine.connect() as conn:
        for part in _chunks(sorted(set(ids))):
            rows = conn.execute(select(predictions.c.id).where(predictions.c.id.in_(part)))
            found.update(r[0] for r in rows)
    return found


def _by_entity(engine: Engine, keys: pd.Series, observed: pd.Series) -> pd.Series:
    """The latest prediction per entity made at or before its outcome was observed."""
    found = []
    with engine.connect() as conn:
        for part in _chunks(sorted(set(keys.dropna()))):
            query = select(
                predictions.c.id, predictions.c.entity_key, predictions.c.created_at
            ).where(predictions.c.entity_key.in_(part))
            found.extend(conn.execute(query).all())
    if not found:
        return pd.Series([None] * len(keys), index=keys.index, dtype="object")
    preds = pd.DataFrame(found, columns=["prediction_id", "key", "created_at"])
    preds["created_at"] = pd.to_datetime(preds["created_at"], utc=True)
    rows = pd.DataFrame(
        {"key": keys.to_numpy(), "observed": observed.to_numpy(), "row": keys.index}
    )
    merged = rows.merge(preds, on="key", how="left")
    merged = merged[merged["created_at"].isna() | (merged["created_at"] <= merged["observed"])]
    latest = merged.sort_values("created_at").groupby("row")["prediction_id"].last()
    return latest.reindex(keys.index)


def load(
    project: Project,
    path: str | Path,
    *,
    at: datetime | None = None,
    skip_unknown: bool = False,
    actor: str = "system",
) -> FeedbackResult:
    """Load a CSV or Parquet file of outcomes; unknown ids refuse the file unless skipped."""
    data = project.spec.data
    engine = open_store(project.db_url)
    frame = snapshots.read_files([Path(path)])
    if frame.empty:
        raise DataValidationError(f"{path}: the feedback file has no rows")
    actual_col = next((c for c in ("actual", data.target) if c in frame.columns), None)
    id_col = next((c for c in ("prediction_id", data.id) if c in frame.columns), None)
    if actual_col is None or id_col is None:
        raise DataValidationError(
            f"{path}: feedback needs a 'prediction_id' or {data.id!r} column and an 'actual' "
            f"or {data.target!r} column; found {', '.join(map(str, frame.columns))}"
        )
    now = at or datetime.now(UTC)
    if "observed_at" in frame.columns:
        observed = pd.to_datetime(frame["observed_at"], utc=True, errors="coerce")
        if observed.isna().any():
            bad = int(observed.isna().sum())
            raise DataValidationError(f"{path}: observed_at: {bad} values are not dates")
    else:
        observed = pd.Series(pd.Timestamp(now), index=frame.index)
    actual = pd.Series(encode_actual(frame[actual_col].tolist(), data), index=frame.index)
    if actual.isna().any():
        rows = np.flatnonzero(actual.isna().to_numpy())[:5] + 2
        raise DataValidationError(
            f"{path}: {actual_col}: {int(actual.isna().sum())} values are neither the positive "
            f"nor the negative label (lines {', '.join(map(str, rows))})"
        )
    ids = frame[id_col].astype("string")
    if id_col == "prediction_id":
        known = _by_prediction_id(engine, ids.dropna().tolist())
        matched = ids.where(ids.isin(known))
    else:
        keys = redact_series(ids, project.pii_key)
        matched = _by_entity(engine, keys, observed)
    unknown = matched.isna().to_numpy()
    result = FeedbackResult(rows=len(frame), unknown=int(unknown.sum()))
    result.unknown_examples = ids[unknown].head(5).astype(str).tolist()
    if result.unknown and not skip_unknown:
        raise DataValidationError(
            f"{path}: {result.unknown} of {len(frame)} rows name no known prediction "
            f"(e.g. {', '.join(result.unknown_examples)}); nothing was loaded. "
            "Use --skip-unknown to load the rest.",
        )
    table = pd.DataFrame(
        {
            "prediction_id": matched[~unknown].astype(str),
            "actual": actual[~unknown].astype(int),
            "observed_at": observed[~unknown],
        }
    ).drop_duplicates("prediction_id", keep="last")
    existing: dict[str, int] = {}
    with engine.connect() as conn:
        for part in _chunks(table["prediction_id"].tolist()):
            query = select(feedback.c.prediction_id, feedback.c.actual).where(
                feedback.c.prediction_id.in_(part)
            )
            existing.update((r[0], r[1]) for r in conn.execute(query))
    before = table["prediction_id"].map(existing)
    new = table[before.isna()]
    changed = table[before.notna() & (before != table["actual"])]
    result.loaded = len(new)
    result.corrected = len(changed)
    result.unchanged = len(table) - len(new) - len(changed)
    loaded_at = bind_value(engine, feedback.c.loaded_at, now)
    source = str(Path(path).name)
    with engine.begin() as conn:
        stamps = [
            bind_value(engine, feedback.c.observed_at, t.to_pydatetime())
            for t in new["observed_at"]
        ]
        bulk_insert(
            conn,
            feedback,
            ("prediction_id", "actual", "observed_at", "loaded_at", "source"),
            zip(
                new["prediction_id"],
                new["actual"].tolist(),
                stamps,
                [loaded_at] * len(new),
                [source] * len(new),
                strict=True,
            ),
        )
        for pid, value in zip(changed["prediction_id"], changed["actual"].tolist(), strict=True):
            conn.execute(
                update(feedback).where(feedback.c.prediction_id == pid).values(actual=value)
            )
        if result.loaded or result.corrected:
            events.record(
                conn,
                "feedback.loaded",
                actor=actor,
                subject=f"feedback:{source}",
                reason=f"ground truth from {path}",
                evidence={
                    "loaded": result.loaded,
                    "corrected": result.corrected,
                    "unchanged": result.unchanged,
                    "unknown": result.unknown,
                },
                at=now,
            )
    return result
