"""The churn reference application end to end on simulated months."""

import io
import math
from pathlib import Path

from rich.console import Console

from copml import events, registry
from copml.demo import run_churn_demo
from copml.monitor.window import history
from copml.project import load_project
from copml.store import open_store


def _run(folder: Path, **options: object) -> tuple[Path, str]:
    out = io.StringIO()
    report = run_churn_demo(folder, seed=7, console=Console(file=out, width=160), **options)
    return report, out.getvalue()


def test_decay_is_detected_and_a_gated_retrain_recovers(tmp_path: Path) -> None:
    report, text = _run(tmp_path / "demo", months=9, shift_month=5)
    project = load_project(tmp_path / "demo")
    windows = history(project)
    assert len(windows) == 9
    before, shifted = windows[:5], windows[5:7]
    assert all(w.metrics["accuracy"] >= 0.75 for w in before)
    assert all(w.metrics["accuracy"] < 0.75 for w in shifted)  # decay is visible
    assert all(w.n_labelled == w.n_predictions == 4000 for w in windows)
    assert not any(math.isnan(w.metrics["drift"]) for w in windows)
    assert all(w.metrics["cost"] > 0 for w in windows)  # compute, reviews and the fixed cost
    engine = open_store(project.db_url)
    promoted = [
        e for e in events.history(engine, kind="model.promoted") if e["actor"] != "user:demo"
    ]
    assert promoted and promoted[0]["actor"] == "policy:retrain-on-decay"
    assert events.history(engine, kind="model.validated")  # the promotion went through the gate
    new = registry.champion(project)
    assert new is not None and new.version != "1"
    recovered = [w for w in windows if w.model_version == new.version]
    assert recovered and all(w.metrics["accuracy"] >= 0.74 for w in recovered)
    assert "month by month" in text and "2026-06 *" in text and "retrain→v2" in text
    html = report.read_text()
    assert html.count("<img") >= 5 and "market shift" in html and "promoted" in html


def test_a_persistent_shift_escalates_to_a_webhook_and_flags_the_project(tmp_path: Path) -> None:
    _, text = _run(tmp_path / "demo", months=8, shift_month=4, scenario="persistent")
    project = load_project(tmp_path / "demo")
    engine = open_store(project.db_url)
    windows = history(project)
    assert all(w.metrics["accuracy"] <= 0.70 for w in windows[4:])
    assert registry.champion(project).version == "1"  # type: ignore[union-attr]
    assert events.history(engine, kind="model.refused")  # retrained challengers were no better
    opened = events.history(engine, kind="alert.opened")
    assert any(e["evidence"]["key"] == "policy:escalate" for e in opened)
    webhook = [d for e in opened for d in e["evidence"]["deliveries"] if d["channel"] == "webhook"]
    assert webhook and all(d["ok"] for d in webhook)  # the local receiver got them
    assert "webhook received 2 alert(s)" in text
    assert "project flagged for re-evaluation" in text
    assert events.history(engine, kind="project.reevaluate")
