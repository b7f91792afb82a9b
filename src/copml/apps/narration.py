"""What both reference demos show while they run: a stand-in for the team's alert webhook,
the table of simulated periods, and what the policies did in each (report markers)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

from copml.display import figure
from copml.monitor.status import requirements
from copml.monitor.window import history
from copml.project import Project
from copml.report import Marker


class Hook(BaseHTTPRequestHandler):
    """The demo's stand-in for the team's chat or paging webhook: records what arrives."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def summarise(
    console: Any,
    project: Project,
    rows: list[dict[str, Any]],
    title: str,
    received: list[dict[str, Any]],
) -> list[Any]:
    """Print a demo's period table (figures that miss a minimum in red), the last window's
    requirements and the alerts the webhook received; return the stored windows."""
    from rich.table import Table

    table = Table(title=title)
    first = next(iter(rows[0]))
    for key in rows[0]:
        table.add_column(key, justify="left" if key == first else "right")
    thresholds = project.spec.effectiveness.thresholds
    for row in rows:
        cells = []
        for key, value in row.items():
            text = figure(value)
            if key in thresholds and isinstance(value, float) and not thresholds[key].met(value):
                text = f"[red]{text}[/]"
            cells.append(text)
        table.add_row(*cells)
    console.print(table)
    windows = history(project)
    status = requirements(project.spec, windows[-1] if windows else None)
    console.print("last window: " + ", ".join(f"{r.name} {r.state}" for r in status))
    if received:
        console.print(
            f"webhook received {len(received)} alert(s): "
            + "; ".join(a.get("title", "?") for a in received)
        )
    return windows


def describe(result: Any) -> tuple[str, list[Marker]]:
    """A table cell and report markers for what the policies did this month."""
    parts, markers = [], []
    for a in result.actions:
        if a["state"] != "succeeded":
            if not (a.get("error") or "").startswith("skipped"):
                parts.append(f"{a['kind']} ✗")
            if a["kind"] == "validate":
                markers.append(Marker(result.at, "challenger refused"))
            continue
        got = a.get("result") or {}
        if a["kind"] == "retrain":
            parts.append(f"retrain→v{got['version']}")
        elif a["kind"] == "promote":
            parts.append(f"promote v{got['version']}")
            markers.append(Marker(result.at, f"v{got['version']} promoted"))
        elif a["kind"] == "alert":
            parts.append("alert" + (" (open)" if got.get("deduplicated") else ""))
            if not got.get("deduplicated"):
                markers.append(Marker(result.at, "alert"))
        elif a["kind"] == "reevaluate" and not got.get("already"):
            parts.append("re-evaluate")
            markers.append(Marker(result.at, "re-evaluation"))
        elif a["kind"] not in ("redeploy", "reevaluate"):
            parts.append(a["kind"])
    suspended = [e for e in result.evaluations if "suspended" in (e.note or "")]
    if suspended:
        parts.append("retrain suspended")
    return ", ".join(parts), markers
