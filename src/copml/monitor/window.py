"""Compute and store one metric window: effectiveness, KPIs, drift and operations.

A window is a calendar period of ``effectiveness.window`` (``1 month``: a calendar month,
``1 week``: Monday to Monday, ``1 day``, ``1 hour``; ``N`` units: blocks of N counted from
1970), over prediction time: the period that contains the evaluation time, or ends at it
when it falls on a boundary (``--at 2026-03-01T00:00Z`` is February). Every computation
of a period lands on the same period, so two runs in the same month never store two
overlapping windows; computing it again (ground truth arrives late) replaces its figures.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from sqlalchemy import Engine, delete, insert, select

from copml import costs, estimation, prediction_log, registry, reviews, snapshots, times
from copml.errors import UserCodeError
from copml.kinds import kind_for
from copml.monitor.arms import arm_metrics, shadow_frame
from copml.monitor.drift import FeatureDrift, drift_share, feature_drift
from copml.monitor.fairness import fairness
from copml.project import Project
from copml.rollout import SHADOW
from copml.spec import Duration
from copml.store import heartbeats, json_safe, metric_windows, open_store
from copml.usercode import load_function


@dataclass
class Window:
    """One stored (or just computed) metric window: the period, the version that served
    most of it, its figures by metric name (NaN when unknown) and each feature's drift."""

    start: datetime
    end: datetime
    model_version: str | None
    n_predictions: int
    n_labelled: int
    metrics: dict[str, float]
    drift: dict[str, FeatureDrift]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MONDAY = datetime(1970, 1, 5, tzinfo=UTC)  # weeks run Monday to Monday (ISO 8601)
_FIXED = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}


def _period_start(span: Duration, at: datetime) -> datetime:
    """The start of the period of ``span`` that ``at`` lies in, ``[start, start + span)``."""
    n = span.amount
    if span.unit in ("month", "year"):
        months = 12 if span.unit == "year" else 1
        index = ((at.year - 1970) * 12 + at.month - 1) // months // n * n * months
        return datetime(1970 + index // 12, index % 12 + 1, 1, tzinfo=UTC)
    origin, unit = (_MONDAY, timedelta(weeks=1)) if span.unit == "week" else (_EPOCH, None)
    unit = unit or _FIXED[span.unit]
    return origin + (at - origin) // (unit * n) * (unit * n)


def _shift(moment: datetime, span: Duration, times_: int) -> datetime:
    return times.utc((pd.Timestamp(moment) + span.offset() * times_).to_pydatetime())


def period(span: Duration, at: datetime) -> tuple[datetime, datetime]:
    """``(start, end)`` of the window of ``span`` that contains ``at``, or ends at ``at``
    when ``at`` is a boundary: the period a computation at ``at`` describes."""
    at = times.utc(at)
    start = _period_start(span, at)
    if start == at:  # on a boundary: the period that just ended
        return _shift(start, span, -1), start
    return start, _shift(start, span, 1)


def periods(span: Duration, at: datetime, n: int) -> list[tuple[datetime, datetime]]:
    """The ``n`` consecutive periods ending with the one of ``at``, oldest first."""
    start, end = period(span, at)
    found = [(start, end)]
    while len(found) < n:
        end, start = start, _shift(start, span, -1)
        found.append((start, end))
    return found[::-1]


def _snapshot_features(
    engine: Engine, batch: prediction_log.Batch, rows: np.ndarray, features: list[str]
) -> pa.Table:
    """The monitored features of a batch's rows, read from its input snapshot; text columns
    as dictionaries (categoricals in pandas: a byte per row, not a string object)."""
    snap = snapshots.get(engine, batch.snapshot_id)  # type: ignore[arg-type]
    assert snap is not None
    schema = pads.dataset(snap.path, format="parquet").schema
    names = [c for c in features if c in snap.schema["columns"]]
    text = [c for c in names if pa.types.is_string(schema.field(c).type)]
    table = pq.read_table(snap.path, columns=names, read_dictionary=text)
    whole = len(rows) == table.num_rows and (len(rows) == 0 or rows[-1] == len(rows) - 1)
    return table if whole else table.take(pa.array(rows))


def window_frame(
    engine: Engine, start: datetime, end: datetime, features: list[str]
) -> pd.DataFrame:
    """Predictions made in ``[start, end)``, with their input features and ground truth.

    The window's decisions are read as columns in one pass over its range of sequence
    numbers, and its features straight from the input snapshots' Parquet: a window of
    10,000,000 predictions is read in seconds and a few GB (not a Python object per row).
    """
    # What was answered: a shadow's batches answered no one (see monitor.arms).
    found = sorted(
        (b for b in prediction_log.batches_between(engine, start, end) if b.arm != SHADOW),
        key=lambda b: b.first_seq,
    )
    if not found:
        columns = ["seq", "row_index", "label", "score", "review", "actual", "model_version"]
        frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        frame["latency_ms"] = pd.Series(dtype="float64")
        frame["arm"] = pd.Series(dtype="object")
        return frame
    frame, owner = prediction_log.batches_decisions(engine, found)
    seq = frame["seq"].to_numpy()
    row_index = seq - np.array([b.first_seq for b in found], dtype=np.int64)[owner]
    frame.insert(1, "row_index", row_index)
    weighed = (
        prediction_log.probabilities_between(engine, int(seq[0]), int(seq[-1])) if len(seq) else {}
    )
    if weighed:
        frame["probabilities"] = pd.Series([weighed.get(s) for s in seq.tolist()])
    versions = pd.Index(sorted({b.model_version for b in found}))
    frame["model_version"] = pd.Categorical.from_codes(
        versions.get_indexer([b.model_version for b in found])[owner], categories=versions
    )
    arms = pd.Index(sorted({b.arm for b in found}))
    frame["arm"] = pd.Categorical.from_codes(
        arms.get_indexer([b.arm for b in found])[owner], categories=arms
    )
    api = [b for b in found if b.origin == "api" and b.snapshot_id is None]
    if api:  # every API row's stored input at once (a window holds thousands of batches)
        inputs = prediction_log.read_inputs(
            engine, api[0].first_seq, api[-1].first_seq + api[-1].n_rows - 1
        )
        keep = ["latency_ms", *(c for c in features if c in inputs.columns)]
        stored = inputs.set_index("seq").reindex(seq)[keep].reset_index(drop=True)
    bounds = np.searchsorted(owner, np.arange(len(found) + 1))
    parts: list[pa.Table | pd.DataFrame] = []
    for i, batch in enumerate(found):
        rows = slice(bounds[i], bounds[i + 1])
        if batch.snapshot_id is not None:
            parts.append(_snapshot_features(engine, batch, row_index[rows], features))
        elif batch.origin == "api":
            parts.append(stored.iloc[rows])
        else:
            parts.append(pd.DataFrame(index=range(rows.stop - rows.start)))
    if all(isinstance(p, pa.Table) for p in parts):  # one categorical per text column
        table = pa.concat_tables(parts, promote_options="permissive")
        del parts
        # Column by column, each freed once converted; then the pool gives back what it
        # keeps (mimalloc holds freed memory: a second window's worth of it otherwise).
        extra = table.to_pandas(split_blocks=True, self_destruct=True)
        del table
        pa.default_memory_pool().release_unused()
    else:
        extra = pd.concat(
            [p.to_pandas() if isinstance(p, pa.Table) else p for p in parts], ignore_index=True
        )
    if "latency_ms" not in extra.columns:
        extra["latency_ms"] = np.nan
    return pd.concat([frame, extra.reset_index(drop=True)], axis=1)


def availability(engine: Engine, start: datetime, end: datetime) -> float:
    """Share of the window the service was up.

    Outside probes (``copml probe``) are the measure when there are any: the share that
    succeeded. Otherwise the server's own heartbeats: a gap longer than two intervals
    counts as down time. No record at all: unknown.
    """
    h = heartbeats.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(h.at, h.source, h.ok, h.detail).where(h.at >= start, h.at < end).order_by(h.at)
        ).all()
    probes = [r for r in rows if r.source == "probe"]
    if probes:
        return sum(r.ok for r in probes) / len(probes)
    beats = [r for r in rows if r.source == "server"]
    if len(beats) < 2:
        return math.nan
    interval = float(beats[0].detail or 10.0)
    span = (beats[-1].at - beats[0].at).total_seconds()
    down = sum(
        max(0.0, (b.at - a.at).total_seconds() - interval)
        for a, b in itertools.pairwise(beats)
        if (b.at - a.at).total_seconds() > 2 * interval
    )
    down += sum(interval for b in beats if not b.ok)
    return max(0.0, 1 - down / span) if span > 0 else math.nan


def _kpis(project: Project, frame: pd.DataFrame) -> dict[str, float]:
    values = {}
    for name, kpi in project.spec.kpis.items():
        func = load_function(project.root, kpi.function, f"KPI {name!r}")
        try:
            values[name] = float(func(frame.copy(deep=False)))  # copy-on-write: safe, free
        except Exception as exc:
            raise UserCodeError(f"KPI {name!r} failed: {type(exc).__name__}: {exc}") from exc
    return values


def _reference_snapshot(
    project: Project, engine: Engine, lineage: registry.Lineage
) -> snapshots.Snapshot | None:
    """The training snapshot of a version (for an imported version, the snapshot it was
    checked on when imported): its profile is what feature drift is measured against."""
    snapshot_id = lineage.reference_snapshot_id
    return snapshots.get(engine, snapshot_id, missing_ok=True) if snapshot_id else None


def _output_drift(
    project: Project, lineage: registry.Lineage | None, frame: pd.DataFrame
) -> dict[str, float]:
    """PSI of the model's own output (``drift.prediction``, a regression's
    ``drift.residual``) against its holdout's at training; NaN without a reference (an
    imported version) or without values (residuals before any truth)."""
    names = project.spec.metrics.drift
    found = dict.fromkeys((f"drift.{name}" for name in names), math.nan)
    reference = (lineage.output_profile if lineage else None) or {}
    if not reference or not len(frame):
        return found
    current = pd.DataFrame(kind_for(project.spec).output_drift(project, frame))
    drifted = feature_drift(reference, current, list(names), project.spec.effectiveness.drift_psi)
    found.update({f"drift.{name}": result.psi for name, result in drifted.items()})
    return found


def _estimated(
    project: Project,
    frame: pd.DataFrame,
    labelled: pd.DataFrame,
    realised: dict[str, float],
    version: str | None,
    lineage: registry.Lineage | None,
) -> dict[str, float]:
    """The window's performance estimated from its versions' calibrations (whether or not
    the truth has landed) and, on the rows whose truth has, the estimate's error against
    the realised figures and the concept-shift flag; NaN where unknown."""
    spec = project.spec
    estimated = spec.metrics.estimated
    found = dict.fromkeys(estimation.names(estimated), math.nan)
    if not estimated or not len(frame):
        return found
    calibration_of = _calibration_of(project, version, lineage)
    calibrations = {v: calibration_of(v) for v in map(str, frame["model_version"].unique())}
    kind = kind_for(spec)
    found.update(kind.estimate(project, frame, calibrations))
    if len(labelled):
        same = (
            found if len(labelled) == len(frame) else kind.estimate(project, labelled, calibrations)
        )
        tolerance = spec.effectiveness.estimation_tolerance
        found.update(estimation.reconcile(same, realised, estimated, tolerance))
    return found


def _override_rate(engine: Engine, frame: pd.DataFrame) -> float:
    """The share of the window's reviewed decisions a person overrode (NaN: none reviewed)."""
    if not len(frame):
        return math.nan
    seq = frame["seq"]
    resolved, overridden = reviews.overrides(engine, int(seq.min()), int(seq.max()))
    return overridden / resolved if resolved else math.nan


def _ood_rate(engine: Engine, frame: pd.DataFrame) -> float:
    """The share of the window's decisions whose input was unlike the training data."""
    if not len(frame):
        return math.nan
    seq = frame["seq"]
    return reviews.out_of_distribution(engine, int(seq.min()), int(seq.max())) / len(frame)


def _calibration_of(
    project: Project, version: str | None, lineage: registry.Lineage | None
) -> Callable[[str], dict[str, Any] | None]:
    """Each version's recorded calibration, looked up once (``version``'s already was)."""

    @functools.cache
    def calibration(served: str) -> dict[str, Any] | None:
        if served == version and lineage is not None:
            return lineage.calibration
        return registry.recorded(project, served).calibration

    return calibration


def compute(project: Project, *, end: datetime | None = None) -> Window:
    """Figures for the period of ``end`` (default now; see :func:`period`), unstored."""
    spec = project.spec
    engine = open_store(project.db_url)
    start, end = period(spec.effectiveness.window, end or datetime.now(UTC))
    kind = kind_for(spec)
    features = kind.monitored_features(spec.data)
    frame = window_frame(engine, start, end, features)
    # The decisions alone, not the features: a window of millions of rows is not copied.
    decided = [
        c
        for c in ("label", "score", "review", "actual", "probabilities", "model_version")
        if c in frame
    ]
    known = frame["actual"].notna().to_numpy()
    labelled = frame[decided] if known.all() else frame.loc[known, decided]
    metrics: dict[str, float] = dict.fromkeys(spec.metrics.names(spec.classes), math.nan)
    if len(labelled):
        metrics.update(kind.window_metrics(project, labelled))
    metrics["predictions"] = float(len(frame))
    metrics["labelled"] = float(len(labelled))
    metrics["reviews"] = float(frame["review"].astype(bool).sum()) if len(frame) else 0.0
    metrics["override_rate"] = _override_rate(engine, frame)
    metrics["ood_rate"] = _ood_rate(engine, frame)
    latency = frame["latency_ms"].dropna()
    metrics["latency_p99_ms"] = float(np.percentile(latency, 99)) if len(latency) else math.nan
    metrics["availability"] = availability(engine, start, end)
    metrics["cost"], _ = costs.window_cost(engine, spec.costs, start, end, metrics["reviews"])
    metrics.update(_kpis(project, frame) if len(frame) else dict.fromkeys(spec.kpis, math.nan))
    if spec.data.sensitive:
        metrics.update(fairness(frame, spec.data.sensitive)[0])
    version = frame["model_version"].mode().iloc[0] if len(frame) else None
    drift: dict[str, FeatureDrift] = {}
    # The registration event answers without an MLflow round trip; the registry's tags
    # answer (no output profile) when this store did not see the registration.
    lineage = registry.recorded(project, version) if version else None
    reference = _reference_snapshot(project, engine, lineage) if lineage else None
    if reference is not None:
        drift = feature_drift(reference.profile, frame, features, spec.effectiveness.drift_psi)
    metrics["drift"] = drift_share(drift)
    for feature, result in drift.items():
        metrics[f"drift.{feature}"] = result.psi
    metrics.update(_output_drift(project, lineage, frame))
    metrics.update(_estimated(project, frame, labelled, metrics, version, lineage))
    shadow = shadow_frame(engine, start, end)
    metrics.update(arm_metrics(project, frame, shadow, _calibration_of(project, version, lineage)))
    return Window(start, end, version, len(frame), len(labelled), metrics, drift)


def store(project: Project, window: Window) -> None:
    """Store the window, replacing an earlier computation of the same window."""
    engine = open_store(project.db_url)
    with engine.begin() as conn:
        conn.execute(delete(metric_windows).where(metric_windows.c.window_end == window.end))
        conn.execute(
            insert(metric_windows).values(
                window_start=window.start,
                window_end=window.end,
                computed_at=datetime.now(UTC),
                model_version=window.model_version,
                n_predictions=window.n_predictions,
                n_labelled=window.n_labelled,
                metrics=json_safe(window.metrics),
                drift=json_safe({k: asdict(v) for k, v in window.drift.items()}),
            )
        )


def monitor(project: Project, *, end: datetime | None = None) -> Window:
    """Compute the current window and store it."""
    window = compute(project, end=end)
    store(project, window)
    return window


def consecutive(project: Project, at: datetime, n: int) -> list[Window]:
    """The ``n`` consecutive periods ending with the one of ``at`` (oldest first), as
    stored; a period never computed is a window without figures (unknown, never false).
    Empty when the period of ``at`` itself was never computed: nothing to judge yet.

    This is what ``for N windows`` means: N distinct calendar periods in a row, never
    one period counted twice and never a gap skipped over.
    """
    wanted = periods(project.spec.effectiveness.window, at, max(n, 1))
    engine = open_store(project.db_url)
    mw = metric_windows.c
    query = select(metric_windows).where(mw.window_end.in_([end for _, end in wanted]))
    with engine.connect() as conn:
        stored = {times.utc(r.window_end): r for r in conn.execute(query)}
    out, computed = [], []
    for start, end in wanted:
        row = stored.get(end)
        # A stored window of another span (the spec changed) is not this period.
        computed.append(row is not None and times.utc(row.window_start) == start)
        out.append(_window(row) if computed[-1] else Window(start, end, None, 0, 0, {}, {}))
    return out if computed[-1] else []


def _window(row: Any) -> Window:
    m = row._mapping
    metrics = {k: (math.nan if v is None else v) for k, v in m["metrics"].items()}
    return Window(
        times.utc(m["window_start"]),
        times.utc(m["window_end"]),
        m["model_version"],
        m["n_predictions"],
        m["n_labelled"],
        metrics,
        {feature: FeatureDrift.stored(found) for feature, found in (m["drift"] or {}).items()},
    )


def history(project: Project, limit: int = 120) -> list[Window]:
    """Stored windows, oldest first."""
    engine = open_store(project.db_url)
    query = select(metric_windows).order_by(metric_windows.c.window_end.desc()).limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [_window(row) for row in reversed(rows)]
