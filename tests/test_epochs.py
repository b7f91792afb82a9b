"""A training's epochs (``copml.log_epoch``): MLflow step metrics of the run, a progress
bar on a terminal only, and nothing at all outside ``copml train``."""

from __future__ import annotations

import io
import math

from rich.console import Console

import copml
from copml import epochs, registry
from copml.project import Project


def _history(project: Project, run_id: str, name: str) -> list[tuple[int, float]]:
    found = registry.client(project).get_metric_history(run_id, name)
    return sorted((m.step, m.value) for m in found)


def test_epochs_become_step_metrics_and_a_bar_on_a_terminal(churn: Project) -> None:
    copml.log_epoch("net", 1, 3, {"loss": 9.0})  # outside a training: nothing, no error
    screen = io.StringIO()
    with (
        registry.training_run(churn) as run,
        epochs.reporting(run, Console(file=screen, force_terminal=True, width=120)),
    ):
        for epoch, loss in enumerate((0.9, 0.5, 0.3), start=1):
            copml.log_epoch("net", epoch, 3, {"loss": loss, "val_recall": math.nan})
    assert _history(churn, run.run_id, "net.loss") == [(1, 0.9), (2, 0.5), (3, 0.3)]
    assert _history(churn, run.run_id, "net.val_recall") == []  # unknown is not a 0
    shown = screen.getvalue()
    assert "training net" in shown and "3/3" in shown and "loss 0.3" in shown


def test_no_bar_where_the_output_is_not_a_terminal(churn: Project) -> None:
    quiet = io.StringIO()
    with registry.training_run(churn) as run, epochs.reporting(run, Console(file=quiet)):
        copml.log_epoch("net", 1, 2, {"loss": 0.7})
        copml.log_epoch("net", 2, 2, {"loss": 0.6})
    assert quiet.getvalue() == ""
    assert _history(churn, run.run_id, "net.loss") == [(1, 0.7), (2, 0.6)]
