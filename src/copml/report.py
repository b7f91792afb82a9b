"""An HTML report of a project's metric windows: every metric against its threshold.

Self-contained (plots are inline PNGs, no CDN), so it opens offline and can be attached
to an e-mail or a ticket.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from copml.display import figure
from copml.monitor.status import requirements
from copml.monitor.window import Window
from copml.project import Project

_TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Marker:
    """Something that happened, drawn as a vertical line on every plot."""

    at: datetime
    label: str


@dataclass(frozen=True)
class Panel:
    metric: str
    title: str
    lines: tuple[tuple[str, float], ...]  # (label, y) of thresholds / targets


def panels(project: Project) -> list[Panel]:
    """A plot per declared requirement, plus drift."""
    spec = project.spec
    out = []
    for name, bound in spec.effectiveness.thresholds.items():
        lines = tuple(
            (f"{k} {v}", v) for k, v in (("min", bound.min), ("max", bound.max)) if v is not None
        )
        out.append(Panel(name, f"{name} (effectiveness)", lines))
    for name, kpi in spec.kpis.items():
        lines = tuple(
            (f"{k} {v}", v)
            for k, v in (("target", kpi.target), ("baseline", kpi.baseline))
            if v is not None
        )
        out.append(Panel(name, f"{name} (KPI, {kpi.better} is better)", lines))
    out.append(
        Panel("drift", f"share of drifted features (PSI > {spec.effectiveness.drift_psi})", ())
    )
    return out


def plot(panel: Panel, windows: list[Window], markers: list[Marker]) -> str:
    """The panel as a PNG (base64); a figure of its own (not pyplot's global list), so
    threads may draw at once."""
    from matplotlib.figure import Figure

    xs = [w.start for w in windows]  # a window is labelled by the period it covers
    ys = [w.metrics.get(panel.metric, math.nan) for w in windows]
    fig = Figure(figsize=(6.4, 2.6))
    ax = fig.subplots()
    ax.plot(xs, ys, marker="o", color="#1f4e79", label=panel.metric)
    for arm, color in (("shadow", "#27ae60"), ("canary", "#e67e22")):  # a rollout's arms
        beside = [w.metrics.get(f"{arm}.{panel.metric}", math.nan) for w in windows]
        if any(isinstance(y, float) and not math.isnan(y) for y in beside):
            ax.plot(xs, beside, marker="s", linestyle="--", color=color, label=f"{arm}")
    for (label, y), style in zip(panel.lines, ("--", ":"), strict=False):
        ax.axhline(y, color="#c0392b", linestyle=style, linewidth=1, label=label)
    for marker in markers:
        ax.axvline(marker.at, color="#7f8c8d", linestyle="-.", linewidth=0.8)
        ax.annotate(
            marker.label,
            (marker.at, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="#555",
        )
    ax.set_title(panel.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96)
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(
    project: Project,
    windows: list[Window],
    path: Path,
    *,
    title: str,
    markers: list[Marker] | None = None,
    rows: list[dict[str, Any]] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Render the report to ``path`` and return it."""
    from jinja2 import Environment, FileSystemLoader

    markers = markers or []
    # Autoescape always: select_autoescape() would not match a '.html.j2' template name.
    env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=True)
    env.filters["fmt"] = figure
    html = env.get_template("report.html.j2").render(
        title=title,
        spec=project.spec,
        plots=[(p.title, plot(p, windows, markers)) for p in panels(project)],
        rows=rows or [],
        status=requirements(project.spec, windows[-1] if windows else None),
        markers=markers,
        notes=notes or [],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
