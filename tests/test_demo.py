"""The churn reference application end to end on simulated months."""

import io
import math
from pathlib import Path

from rich.console import Console

from copml.demo import run_churn_demo
from copml.monitor.window import history
from copml.project import load_project


def test_demo_shows_decay_after_the_market_shift(tmp_path: Path) -> None:
    out = io.StringIO()
    report = run_churn_demo(
        tmp_path / "demo", months=8, shift_month=5, seed=7, console=Console(file=out, width=120)
    )
    windows = history(load_project(tmp_path / "demo"))
    assert len(windows) == 8
    before, after = windows[:5], windows[5:]
    assert all(w.metrics["accuracy"] >= 0.75 for w in before)
    assert all(w.metrics["accuracy"] < 0.75 for w in after)  # decay is visible
    assert min(w.metrics["churn_rate"] for w in after) > max(
        w.metrics["churn_rate"] for w in before
    )
    assert all(w.n_labelled == w.n_predictions == 4000 for w in windows)
    assert not any(math.isnan(w.metrics["drift"]) for w in windows)
    text = out.getvalue()
    assert "month by month" in text and "2026-06 *" in text
    html = report.read_text()
    assert html.count("<img") == 5 and "market shift" in html and "not met" in html
