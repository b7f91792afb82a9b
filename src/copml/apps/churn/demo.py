"""``copml demo churn``: the COPML loop on simulated months, using only the public services.

init → snapshot → train, then for each month: score the active customers in batch, send
retention offers to the ones flagged, reveal who churned, load that ground truth, compute
the month's metric window and let the spec's policies act (``copml operate``). A market
shift makes the model decay: in the ``recoverable`` scenario a retrained, gated challenger
brings it back; in the ``persistent`` one nothing can, the escalation policy alerts a
(local) webhook and flags the project for re-evaluation.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd

from copml import display, feedback, snapshots
from copml.apps.churn.simulation import SCENARIOS, Population, as_source_csv
from copml.apps.narration import Hook, describe, summarise
from copml.errors import CopmlError
from copml.monitor.window import monitor
from copml.operate.reevaluation import suspended
from copml.operate.runner import operate_once
from copml.project import load_project
from copml.report import Marker, write_report
from copml.scaffold import init
from copml.score import score
from copml.store import open_store
from copml.train import train

START = datetime(2026, 1, 1, tzinfo=UTC)
ACTOR = "user:demo"


def _month(offset: int) -> datetime:
    return (pd.Timestamp(START) + pd.DateOffset(months=offset)).to_pydatetime()


def _row(
    month: int, when: datetime, window: Any, version: str, shifted: bool, acted: str
) -> dict[str, Any]:
    m = window.metrics
    return {
        "month": f"{when:%Y-%m}" + (" *" if shifted else ""),
        "version": version,
        "scored": int(m["predictions"]),
        "accuracy": m["accuracy"],
        "recall": m["recall"],
        "roc_auc": m["roc_auc"],
        "churn": m.get("churn_rate", math.nan),
        "drift": m["drift"],
        "cost": m.get("cost", math.nan),
        "actions": acted,
    }


# The canary scenario: the shift's retrained challenger meets live customers before it
# takes them over: a month in shadow, then a canary answering a fifth of customers, and
# the live comparison promotes it (or ends it, when it is worse).
_ROLLOUT = """
promotion: {metric: recall, min_gain: 0.0, require_approval: false, canary_share: 20%}

policies:
  - name: retrain-into-shadow
    when: accuracy < 0.75 and shadow.predictions == 0 and canary.predictions == 0
    do: [retrain, validate, shadow]
    cooldown: 1 window
  - name: canary-after-shadow
    when: shadow.accuracy >= champion.accuracy
    do: [canary]
  - name: promote-on-live
    when: canary.accuracy >= champion.accuracy - 0.01
    do: [promote, redeploy]
  - name: abort-when-worse
    when: canary.accuracy < champion.accuracy - 0.01 or shadow.accuracy < champion.accuracy - 0.02
    do: [abort, alert]
  - name: escalate
    when: accuracy <= 0.70 for 4 windows and churn_rate >= 0.10
    do: [alert, reevaluate]
"""


# canary: the market shifts for good, the challenger proves better live and is promoted;
# canary-blip: the shift lasts two months, so the challenger learnt a market that is gone:
# in shadow it answers worse than the champion, and the policy aborts it.
_ROLLOUTS = ("canary", "canary-blip")


def _rollout_policies(spec_file: Path) -> None:
    """The example's promotion and policies replaced by the rollout chain above."""
    text = spec_file.read_text()
    start, end = text.index("promotion:"), text.index("# After a shift")
    spec_file.write_text(text[:start] + _ROLLOUT.strip() + "\n\n" + text[end:])


def run_churn_demo(
    directory: Path | None,
    *,
    months: int = 12,
    shift_month: int | None = 7,
    seed: int = 7,
    scenario: str = "recoverable",
    console: Any,
) -> Path:
    """Run the demo in ``directory`` (default ``./demo-churn``); returns the report path."""
    directory = (directory or Path("demo-churn")).resolve()
    if directory.exists() and any(directory.iterdir()):
        raise CopmlError(f"{directory} is not empty; remove it or choose another --dir")
    began = time.perf_counter()
    if scenario not in (*SCENARIOS, *_ROLLOUTS):
        raise CopmlError(
            f"no scenario {scenario!r}; choose one of {', '.join([*SCENARIOS, *_ROLLOUTS])}"
        )
    init(directory, "churn", seed=seed)
    if scenario in _ROLLOUTS:
        _rollout_policies(directory / "copml.yaml")
    hook = ThreadingHTTPServer(("127.0.0.1", 0), type("Hook", (Hook,), {"received": []}))
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_address[1]}/hook"
    spec_file = directory / "copml.yaml"
    spec_file.write_text(
        spec_file.read_text() + f"\n# The demo's local webhook receiver stands in for the team's.\n"
        f'alerts: {{webhook: "{url}", backoff_seconds: 0.1}}\n'
    )
    project = load_project(directory)
    project.ensure_home()
    engine = open_store(project.db_url)
    console.print(f"[bold]copml demo churn[/] in {directory}")
    snap = snapshots.create(
        engine, project.spec.data, root=project.root, directory=project.snapshots_dir, actor=ACTOR
    )
    console.print(f"snapshot {snap.id[:12]}… of {snap.n_rows} labelled customers")
    result = train(project, actor=ACTOR, at=START - timedelta(days=1))  # on simulated time
    console.print(
        f"trained version {result.version}: holdout accuracy {result.metrics['accuracy']:.3f}, "
        f"recall {result.metrics['recall']:.3f}, ROC AUC {result.metrics['roc_auc']:.3f}"
        + (" → champion" if result.champion else "")
    )
    if not result.champion:
        raise CopmlError(
            "the first model missed the declared minimums: " + "; ".join(result.failures)
        )
    market = SCENARIOS["recoverable" if scenario in _ROLLOUTS else scenario]
    revert = shift_month + 2 if scenario == "canary-blip" and shift_month is not None else None
    population = Population(
        seed=seed + 1, shift_month=shift_month, revert_month=revert, after=market
    )
    markers = [Marker(START, f"v{result.version} champion")]
    rows: list[dict[str, Any]] = []
    batches, outcomes, outputs = (directory / d for d in ("batches", "outcomes", "outputs"))
    for folder in (batches, outcomes, outputs):
        folder.mkdir(exist_ok=True)
    scored_rows = [0]  # the month's customers, for the bar's rate and time left
    each = len(population.customers)
    for month in display.counted(
        range(months), "simulating months", months * each, "customers",
        lambda _: scored_rows[0], console,
    ):  # fmt: skip
        begins, ends = _month(month), _month(month + 1)
        label = f"{begins:%Y-%m}"
        batch = batches / f"{label}.csv"
        as_source_csv(population.customers).to_csv(batch, index=False)
        scored = score(
            project,
            batch,
            outputs / f"{label}.csv",
            at=begins + timedelta(hours=6),
            actor=ACTOR,
        )
        flagged = pd.read_csv(outputs / f"{label}.csv")["label"].eq("Yes").to_numpy()
        shifted = shift_month is not None and shift_month <= month < (revert or months)
        outcome = population.close_month(flagged)
        outcome["observed_at"] = ends - timedelta(days=1)
        outcome.to_csv(outcomes / f"{label}.csv", index=False)
        feedback.load(project, outcomes / f"{label}.csv", at=ends - timedelta(days=1), actor=ACTOR)
        window = monitor(project, end=ends)
        acted, happened = describe(operate_once(project, at=ends))
        markers += happened
        rows.append(_row(month, begins, window, scored.model_version, shifted, acted))
        scored_rows[0] = scored.rows
    hook.shutdown()
    hook.server_close()
    windows = summarise(
        console,
        project,
        rows,
        f"month by month (* after the market shift; scenario {scenario})",
        hook.RequestHandlerClass.received,  # type: ignore[attr-defined]
    )
    flagged = suspended(open_store(project.db_url), project)
    if flagged is not None:
        console.print(f"[bold red]project flagged for re-evaluation[/]: {flagged['reason']}")
    if shift_month is not None and shift_month < months:
        markers.append(Marker(_month(shift_month), "market shift"))
    if revert is not None and revert < months:
        markers.append(Marker(_month(revert), "market back"))
    report = write_report(
        project,
        windows,
        directory / "report.html",
        title=f"copml demo: {project.spec.project}, {months} months",
        markers=markers,
        rows=rows,
        notes=[
            f"Simulated {months} months of {population.size} active customers; the market "
            f"shifts in month {shift_month + 1 if shift_month is not None else 'never'}"
            f"{' for two months' if revert is not None else ''} (scenario {scenario}). "
            "Retention offers reach every customer the champion flags; "
            "the spec's policies run after each month's window.",
        ],
    )
    console.print(
        f"report: {report}\nMLflow UI: mlflow ui --backend-store-uri {project.tracking_uri}\n"
        f"done in {time.perf_counter() - began:.0f} s"
    )
    return report
