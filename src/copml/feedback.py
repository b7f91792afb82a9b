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
from sqlalchemy import Connection, Engine, select, update

from copml import events, prediction_log, snapshots, times
from copml.errors import DataValidationError
from copml.kinds import kind_for
from copml.project import Project
from copml.redaction import redact_series
from copml.rollout import SHADOW
from copml.store import (
    batches,
    bind_value,
    bulk_insert,
    feedback,
    lock_for_writing,
    open_store,
    prediction_inputs,
)

_CHUNK = 5000


@dataclass
class FeedbackResult:
    rows: int
    loaded: int = 0
    unchanged: int = 0
    corrected: int = 0
    unknown: int = 0
    unknown_examples: list[str] = field(default_factory=list)


def match_entities(
    engine: Engine, id_column: str, keys: pd.Series, observed: pd.Series
) -> pd.Series:
    """Sequence number of the latest prediction per entity (by keyed hash) made before
    ``observed``, for files and the API alike.

    Batch predictions keep the entity (as its keyed hash) in their input snapshot, so the
    search reads one column per batch, newest first, until every row has a match; API
    predictions keep it beside their input. The latest eligible candidate wins. A shadow's
    predictions answered no one: the truth belongs to the answered row they mirror.
    """
    rows = pd.DataFrame({"key": keys, "observed": observed}).dropna(subset=["key"])
    candidates: list[pd.DataFrame] = []
    unmatched = set(rows.index)
    latest = observed.max().to_pydatetime() + timedelta(microseconds=1)
    for batch in reversed(prediction_log.batches_between(engine, None, latest)):
        if not unmatched:
            break
        if batch.snapshot_id is None or batch.arm == SHADOW:  # a shadow answered no one
            continue
        snap = snapshots.get(engine, batch.snapshot_id)
        assert snap is not None
        ids = pq.read_table(snap.path, columns=[id_column]).column(0).to_pandas()
        position = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
        eligible = rows.loc[sorted(unmatched)]
        eligible = eligible[eligible["observed"] >= batch.created_at]
        found = eligible["key"].map(position).dropna()
        candidates.append(
            pd.DataFrame(
                {
                    "row": found.index,
                    "seq": batch.first_seq + found.to_numpy(dtype="int64"),
                    "created_at": batch.created_at,
                }
            )
        )
        unmatched -= set(found.index)
    candidates.append(_api_candidates(engine, rows))
    found = pd.concat(candidates, ignore_index=True)
    found = found.merge(rows[["observed"]], left_on="row", right_index=True)
    found = found[found["created_at"] <= found["observed"]]
    best = found.sort_values(["created_at", "seq"]).groupby("row")["seq"].last()
    return best.reindex(keys.index).astype("Int64")


def _api_candidates(engine: Engine, rows: pd.DataFrame) -> pd.DataFrame:
    i, b = prediction_inputs.c, batches.c
    keys = sorted(set(rows["key"]))
    found = []
    with engine.connect() as conn:
        for start in range(0, len(keys), _CHUNK):
            query = (
                select(i.seq, i.entity_key, b.created_at)
                .select_from(
                    prediction_inputs.join(
                        batches, i.seq.between(b.first_seq, b.first_seq + b.n_rows - 1)
                    )
                )
                .where(i.entity_key.in_(keys[start : start + _CHUNK]))
            )
            found.extend(tuple(r) for r in conn.execute(query))
    api = pd.DataFrame(found, columns=["seq", "key", "created_at"])
    matched = rows.reset_index(names="row").merge(api, on="key")
    return matched[["row", "seq", "created_at"]]


def _existing(conn: Connection, seqs: list[int]) -> dict[int, int]:
    found: dict[int, int] = {}
    for i in range(0, len(seqs), _CHUNK):
        query = select(feedback.c.prediction_seq, feedback.c.actual).where(
            feedback.c.prediction_seq.in_(seqs[i : i + _CHUNK])
        )
        found.update((r[0], r[1]) for r in conn.execute(query))
    return found


def apply(
    conn: Connection, outcomes: pd.DataFrame, *, source: str, at: datetime
) -> tuple[int, int, int]:
    """Store outcomes (``seq``, ``actual``, ``observed_at``) in the caller's transaction.

    New outcomes are inserted, changed ones corrected, equal ones left alone; returns
    (loaded, corrected, unchanged).
    """
    lock_for_writing(conn)  # read what is there, then write, with no one in between
    table = outcomes.drop_duplicates("seq", keep="last").sort_values("seq")
    before = table["seq"].map(_existing(conn, table["seq"].tolist()))
    new = table[before.isna()]
    changed = table[before.notna() & (before != table["actual"])]
    loaded_at = bind_value(conn, feedback.c.loaded_at, at)
    stamps = [
        bind_value(conn, feedback.c.observed_at, pd.Timestamp(t).to_pydatetime())
        for t in new["observed_at"]
    ]
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
    for seq_value, value in zip(changed["seq"].tolist(), changed["actual"].tolist(), strict=True):
        conn.execute(
            update(feedback).where(feedback.c.prediction_seq == seq_value).values(actual=value)
        )
    return len(new), len(changed), len(table) - len(new) - len(changed)


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
    now = times.utc(at) if at is not None else datetime.now(UTC)
    if "observed_at" in frame.columns:
        observed = times.parse_column(frame["observed_at"], f"{path}: observed_at")
    else:
        observed = pd.Series(pd.Timestamp(now), index=frame.index)
    target = kind_for(project.spec).target(data)
    codes = target.encode(frame[actual_col].tolist())
    actual = pd.Series(codes, index=frame.index, dtype="float64")
    if actual.isna().any():
        rows = np.flatnonzero(actual.isna().to_numpy())[:5] + 2
        raise DataValidationError(
            f"{path}: {actual_col}: {int(actual.isna().sum())} values are {target.refusal()} "
            f"(lines {', '.join(map(str, rows))})"
        )
    ids = frame[id_col].astype("string")
    if id_col == "prediction_id":
        seq = prediction_log.resolve(engine, ids.fillna("").tolist())
        seq.index = frame.index
    else:
        seq = match_entities(engine, data.id, redact_series(ids, project.pii_key), observed)
    unknown = seq.isna().to_numpy()
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
            "seq": seq[~unknown].astype("int64"),
            "actual": actual[~unknown].astype(int),
            "observed_at": observed[~unknown],
        }
    )
    source = str(Path(path).name)
    with engine.begin() as conn:
        counts = apply(conn, table, source=source, at=now)
        result.loaded, result.corrected, result.unchanged = counts
        if result.loaded or result.corrected:
            events.record(
                conn,
                events.Kind.FEEDBACK_LOADED,
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
