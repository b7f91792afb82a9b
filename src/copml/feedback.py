"""Ground truth arriving after the fact, joined to the predictions it judges.

Rows name a ``prediction_id`` or the entity id. An entity is matched, through its keyed
hash, to its latest prediction made before the outcome was observed. Loading is
idempotent: the same file twice changes nothing; a changed outcome is a correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sqlalchemy import Engine, select, update

from copml import events, prediction_log, snapshots
from copml.errors import DataValidationError
from copml.labels import encode_actual
from copml.project import Project
from copml.redaction import redact_series
from copml.store import bind_value, bulk_insert, feedback, open_store

_CHUNK = 5000


@dataclass
class FeedbackResult:
    rows: int
    loaded: int = 0
    unchanged: int = 0
    corrected: int = 0
    unknown: int = 0
    unknown_examples: list[str] = field(default_factory=list)


def _by_entity(engine: Engine, id_column: str, keys: pd.Series, observed: pd.Series) -> pd.Series:
    """Sequence number of the latest batch prediction per entity made before ``observed``.

    Batch predictions keep the entity (as its keyed hash) in their input snapshot, so the
    search reads one column per batch, newest first, and stops once every row is matched.
    """
    matched = pd.Series(pd.NA, index=keys.index, dtype="Int64")
    remaining = pd.DataFrame({"key": keys, "observed": observed}).dropna(subset=["key"])
    latest = observed.max().to_pydatetime() + timedelta(microseconds=1)
    for batch in reversed(prediction_log.batches_between(engine, None, latest)):
        if remaining.empty:
            break
        if batch.snapshot_id is None:
            continue
        snap = snapshots.get(engine, batch.snapshot_id)
        assert snap is not None
        ids = pq.read_table(snap.path, columns=[id_column]).column(0).to_pandas()
        rows = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
        eligible = remaining[remaining["observed"] >= batch.created_at]
        found = eligible["key"].map(rows).dropna()
        matched.loc[found.index] = batch.first_seq + found.astype("int64")
        remaining = remaining.drop(index=found.index)
    return matched


def _existing(engine: Engine, seqs: list[int]) -> dict[int, int]:
    found: dict[int, int] = {}
    with engine.connect() as conn:
        for i in range(0, len(seqs), _CHUNK):
            query = select(feedback.c.prediction_seq, feedback.c.actual).where(
                feedback.c.prediction_seq.in_(seqs[i : i + _CHUNK])
            )
            found.update((r[0], r[1]) for r in conn.execute(query))
    return found


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
        seq = prediction_log.resolve(engine, ids.fillna("").tolist())
        seq.index = frame.index
    else:
        seq = _by_entity(engine, data.id, redact_series(ids, project.pii_key), observed)
    unknown = seq.isna().to_numpy()
    result = FeedbackResult(rows=len(frame), unknown=int(unknown.sum()))
    result.unknown_examples = ids[unknown].head(5).astype(str).tolist()
    if result.unknown and not skip_unknown:
        raise DataValidationError(
            f"{path}: {result.unknown} of {len(frame)} rows name no known prediction "
            f"(e.g. {', '.join(result.unknown_examples)}); nothing was loaded. "
            "Use --skip-unknown to load the rest.",
        )
    table = (
        pd.DataFrame(
            {
                "seq": seq[~unknown].astype("int64"),
                "actual": actual[~unknown].astype(int),
                "observed_at": observed[~unknown],
            }
        )
        .drop_duplicates("seq", keep="last")
        .sort_values("seq")
    )
    before = table["seq"].map(_existing(engine, table["seq"].tolist()))
    new = table[before.isna()]
    changed = table[before.notna() & (before != table["actual"])]
    result.loaded = len(new)
    result.corrected = len(changed)
    result.unchanged = len(table) - len(new) - len(changed)
    loaded_at = bind_value(engine, feedback.c.loaded_at, now)
    source = str(Path(path).name)
    stamps = [
        bind_value(engine, feedback.c.observed_at, t.to_pydatetime()) for t in new["observed_at"]
    ]
    with engine.begin() as conn:
        bulk_insert(
            conn,
            feedback,
            ("prediction_seq", "actual", "observed_at", "loaded_at", "source"),
            zip(
                new["seq"].tolist(),
                new["actual"].tolist(),
                stamps,
                [loaded_at] * len(new),
                [source] * len(new),
                strict=True,
            ),
        )
        for seq_value, value in zip(
            changed["seq"].tolist(), changed["actual"].tolist(), strict=True
        ):
            conn.execute(
                update(feedback).where(feedback.c.prediction_seq == seq_value).values(actual=value)
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
