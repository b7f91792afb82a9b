"""``copml operate``: the embedded scheduler (design §9).

Two cron schedules from the spec: ``serving.schedule`` runs the batch (score the declared
``serving.input``), ``operations.schedule`` computes the metric window and evaluates the
policies. The same steps are what ``copml export airflow`` hands to Apache Airflow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from copml import costs, times
from copml.monitor.window import monitor
from copml.operate import leadership, lifecycle, runner
from copml.project import Project
from copml.store import open_store


@dataclass
class Run(runner.Pass):
    steps: list[str] = field(default_factory=list)


def _score(project: Project, at: datetime) -> str:
    from copml.score import score

    source = project.spec.serving.input
    assert source is not None
    out = project.home / "scores" / f"{at:%Y%m%dT%H%M%S}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = score(project, Path(project.root, source), out, at=at, actor="system:operate")
    return f"scored {result.rows} rows of {source} with v{result.model_version} → {out}"


def run_once(project: Project, *, at: datetime | None = None, batch: bool = True) -> Run:
    """One pass: the batch run (when declared), the metric window, the policies; skipped
    when another operator leads the store's pass now."""
    at = times.utc(at or datetime.now(UTC))
    if lifecycle.is_retired(project):
        return Run(at, steps=["the model is retired: nothing scheduled"])
    with leadership.lead(project) as lead:
        if lead is None:
            return Run(at, led=False, steps=["another copml operate leads this pass: skipped"])
        return _led(project, at, lead, batch=batch)


def _led(project: Project, at: datetime, lead: leadership.Lead, *, batch: bool) -> Run:
    """The pass of the process that leads: the batch, the window and the policies run
    under one lock, so no two operators score a batch or act on a window twice."""
    steps = []
    engine = open_store(project.db_url)
    with costs.metered(engine, "operate", at=at, detail="operate pass"):
        spec = project.spec
        if batch and spec.serving.mode == "batch" and spec.serving.input:
            steps.append(_score(project, at))
        window = monitor(project, end=at)
        steps.append(
            f"window ending {window.end:%Y-%m-%d %H:%M}: {window.n_predictions} predictions"
        )
        result = runner.operate(project, at, lead)
    return Run(
        at=result.at,
        recovered=result.recovered,
        evaluations=result.evaluations,
        actions=result.actions,
        led=result.led,
        incident_alerts=result.incident_alerts,
        steps=steps,
    )


def _next(expression: str, after: datetime) -> datetime:
    from croniter import croniter

    return croniter(expression, after).get_next(datetime)


def run_forever(project: Project, *, console: Any) -> None:
    """Wake at each scheduled time and run what is due, until interrupted."""
    spec = project.spec
    schedules = {"operations": spec.operations.schedule}
    if spec.serving.mode == "batch" and spec.serving.schedule and spec.serving.input:
        schedules["batch"] = spec.serving.schedule
    now = datetime.now(UTC)
    due = {name: _next(expr, now) for name, expr in schedules.items()}
    console.print(
        "copml operate: "
        + ", ".join(f"{n} '{schedules[n]}' next {t:%Y-%m-%d %H:%M}Z" for n, t in due.items())
    )
    try:
        while not lifecycle.is_retired(project):
            name, when = min(due.items(), key=lambda item: item[1])
            wait = (when - datetime.now(UTC)).total_seconds()
            if wait > 0:
                time.sleep(min(wait, 60))  # wake at least every minute to re-check
                continue
            result = run_once(project, at=when, batch=name == "batch")
            for step in result.steps:
                console.print(f"{when:%Y-%m-%d %H:%M}Z {step}")
            for a in result.actions:
                console.print(f"  action {a['id']} {a['kind']}: {a['state']}")
            due[name] = _next(schedules[name], when)
    except KeyboardInterrupt:
        console.print("stopped")
