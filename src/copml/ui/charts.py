"""The dashboard's charts, drawn by the same code as the HTML report (``copml.report``).

Timelines are the report's panels (each declared requirement with its threshold lines)
plus availability, latency and cost, with the events that changed the model or raised
an alarm marked on the time axis. Charts are inline PNGs: no JavaScript, nothing fetched
from a CDN, so the dashboard works offline. Drawing is the slow part of a page, so each
chart is kept until the windows or the events it shows change.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from copml import events
from copml.explain import importance_figure
from copml.monitor.window import Window
from copml.project import Project
from copml.report import Marker, Panel, panels
from copml.report import plot as plot_panel
from copml.ui import records

# Event kinds drawn on timelines, and how each is labelled.
MARKED = (
    events.Kind.MODEL_REGISTERED,
    events.Kind.MODEL_REFUSED,
    events.Kind.MODEL_PROMOTED,
    events.Kind.MODEL_ROLLED_BACK,
    events.Kind.ALERT_OPENED,
    events.Kind.PROJECT_REEVALUATE,
)


@dataclass(frozen=True)
class Chart:
    metric: str
    title: str
    png: str  # base64


def _version(subject: str | None) -> str:
    return (subject or "").rsplit("/", 1)[-1]


def _label(event: dict[str, Any]) -> str:
    kind, version = event["kind"], _version(event["subject"])
    return {
        events.Kind.MODEL_REGISTERED: f"v{version} trained",
        events.Kind.MODEL_REFUSED: f"v{version} refused",
        events.Kind.MODEL_PROMOTED: f"v{version} promoted",
        events.Kind.MODEL_ROLLED_BACK: f"back to v{version}",
        events.Kind.ALERT_OPENED: "alert",
        events.Kind.PROJECT_REEVALUATE: "re-evaluation",
    }.get(kind, kind)


def markers(engine: Any, windows: list[Window]) -> list[Marker]:
    """The marked events inside the period the windows cover."""
    if not windows:
        return []
    found = records.events_between(engine, MARKED, windows[0].start, windows[-1].end)
    # Events at one instant (a retrain and its refusal) share one line and one label.
    labels: dict[datetime, list[str]] = {}
    for e in found:
        labels.setdefault(e["at"], []).append(_label(e))
    return [Marker(at, ", ".join(dict.fromkeys(texts))) for at, texts in labels.items()]


def timeline_panels(project: Project) -> list[Panel]:
    """The report's panels, each declared effectiveness metric the task estimates as
    estimated before its truth, then availability, p99 latency and cost against their
    targets."""
    spec = project.spec
    estimated = [
        Panel(f"estimated_{p.metric}", f"{p.metric} estimated before the truth", p.lines)
        for p in panels(project)
        if p.metric in spec.effectiveness.thresholds and p.metric in spec.metrics.estimated
    ]
    extra = [
        *estimated,
        Panel(
            "availability",
            "availability",
            (("target", spec.serving.availability),) if spec.serving.availability else (),
        ),
        Panel("latency_p99_ms", "latency p99 (ms)", ()),
        Panel(
            "cost",
            "cost per window",
            (("budget", spec.costs.budget_per_window),) if spec.costs.budget_per_window else (),
        ),
    ]
    return [*panels(project), *extra]


def _measured(metric: str, windows: list[Window]) -> bool:
    values = (w.metrics.get(metric, math.nan) for w in windows)
    return any(isinstance(v, int | float) and not math.isnan(v) for v in values)


_cache: OrderedDict[str, str] = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 256


def _cached_plot(panel: Panel, windows: list[Window], marks: list[Marker]) -> str:
    state = json.dumps(
        [
            panel.metric,
            panel.title,
            panel.lines,
            [(w.start.isoformat(), w.metrics.get(panel.metric)) for w in windows],
            [(m.at.isoformat(), m.label) for m in marks],
        ],
        default=str,
    )
    key = hashlib.sha256(state.encode()).hexdigest()
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    png = plot_panel(panel, windows, marks)
    with _cache_lock:
        _cache[key] = png
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return png


def timelines(
    project: Project, windows: list[Window], marks: list[Marker]
) -> tuple[list[Chart], list[str]]:
    """A chart per panel with figures, and the titles of the panels with none yet."""
    charts, empty = [], []
    for panel in timeline_panels(project):
        if _measured(panel.metric, windows):
            charts.append(Chart(panel.metric, panel.title, _cached_plot(panel, windows, marks)))
        else:
            empty.append(panel.title)
    return charts, empty


def kpi_chart(project: Project, windows: list[Window], marks: list[Marker]) -> Chart | None:
    """The first declared KPI against its target: the overview's one chart per project."""
    for panel in panels(project):
        if panel.metric in project.spec.kpis and _measured(panel.metric, windows):
            return Chart(panel.metric, panel.title, _cached_plot(panel, windows, marks))
    return None


def explanation_chart(values: dict[str, float], title: str) -> str:
    """One decision's SHAP values as bars (red pushes towards the positive class)."""
    ranked = dict(sorted(values.items(), key=lambda kv: -abs(kv[1])))
    fig = importance_figure(ranked, title)
    ax = fig.axes[0]
    for bar in ax.patches:
        bar.set_color("#c0392b" if bar.get_width() > 0 else "#1e8449")  # type: ignore[attr-defined]
    ax.axvline(0, color="#555", linewidth=0.8)
    ax.set_xlabel("SHAP value (log-odds); red raises the score, green lowers it")
    fig.tight_layout()
    return _png(fig)


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96)
    return base64.b64encode(buffer.getvalue()).decode()
