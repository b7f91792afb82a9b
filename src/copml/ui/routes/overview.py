"""The overview of every project a person's key opens, and one project's page: its
requirements, KPIs, timelines and policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from copml import oversight, registry, reviews
from copml.monitor.status import Requirement, requirements
from copml.monitor.window import history
from copml.operate import reevaluation
from copml.ui import charts, records
from copml.ui.projects import Shown
from copml.ui.state import Board, LoginNeeded

router = APIRouter()


@dataclass
class _Summary:
    """One project on the overview."""

    shown: Shown
    role: str
    champion: str | None
    window_end: datetime | None
    status: list[Requirement]
    kpis: list[tuple[Requirement, float | None]]  # (requirement, baseline)
    alerts: list[dict[str, Any]]
    open_reviews: int
    flagged: dict[str, Any] | None
    chart: charts.Chart | None
    counts: dict[str, int] = field(default_factory=dict)
    halted: oversight.Halt | None = None


def _summary(here: Shown, role: str) -> _Summary:
    project, engine = here.project, here.engine
    windows = history(project, limit=36)
    latest = windows[-1] if windows else None
    status = requirements(project.spec, latest)
    kpis = [(r, project.spec.kpis[r.name].baseline) for r in status if r.kind == "kpi"]
    champion = registry.champion(project)
    counts = {s: sum(r.state == s for r in status) for s in ("met", "not met", "unknown")}
    return _Summary(
        shown=here,
        role=role,
        champion=champion.version if champion else None,
        window_end=latest.end if latest else None,
        status=status,
        kpis=kpis,
        alerts=records.open_alerts(engine),
        open_reviews=reviews.count_open(engine),
        flagged=reevaluation.suspended(engine, project),
        chart=charts.kpi_chart(project, windows, charts.markers(engine, windows)),
        counts=counts,
        halted=oversight.current(engine, project),
    )


def _project(here: Shown) -> dict[str, Any]:
    """One project's page: its summary, a timeline per metric with the events marked on
    it, and each policy with its latest evaluation."""
    project, engine = here.project, here.engine
    windows = history(project)
    marks = charts.markers(engine, windows)
    drawn, empty = charts.timelines(project, windows, marks)
    evaluations = records.latest_evaluations(engine)
    return {
        "summary": _summary(here, ""),
        "charts": drawn,
        "empty": empty,
        "marks": marks,
        "windows": windows,
        "policies": [(p, evaluations.get(p.name)) for p in project.spec.policies],
        "oversight": oversight.declared(project),
    }


@router.get("/")
async def overview(request: Request, board: Board) -> Response:
    session = board.session_of(request)
    if session is None:
        raise LoginNeeded
    grants = dict(session.grants)
    found = await board.work(
        lambda: [_summary(board.by_slug[s], k.role) for s, k in grants.items()]
    )
    return board.page(request, "overview.html.j2", summaries=found)


@router.get("/p/{slug}")
async def project_page(request: Request, board: Board, slug: str) -> Response:
    here = board.access(request, slug, "read").here
    return board.page(
        request, "project.html.j2", here=here, **await board.work(lambda: _project(here))
    )
