"""A training's epochs as the team's own ``train`` reports them (``copml.log_epoch``):
each epoch's figures become MLflow step metrics of the run, so ``mlflow ui`` draws the
learning curves, and on a terminal a Rich progress bar shows them with an ETA. Output that
is not a terminal (CI, a scheduler's log) gets no bar: the run holds the figures.

Outside ``copml train`` (a notebook, a test of the team's code) it does nothing, so a
``train`` function that reports its epochs still runs anywhere.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from copml.registry import TrainingRun


class _Reporter:
    def __init__(self, run: TrainingRun, console: Console) -> None:
        self._run = run
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        if console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[figures]}"),
                console=console,
            )
            self._bars.start()

    def log(self, model: str, epoch: int, epochs: int, metrics: Mapping[str, float]) -> None:
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        self._run.log_metrics({f"{model}.{k}": v for k, v in finite.items()}, step=epoch)
        if self._bars is None:
            return
        if model not in self._tasks:
            self._tasks[model] = self._bars.add_task(f"training {model}", total=epochs, figures="")
        figures = "  ".join(f"{k} {v:.4g}" for k, v in finite.items())
        self._bars.update(self._tasks[model], completed=epoch, total=epochs, figures=figures)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()


_active: ContextVar[_Reporter | None] = ContextVar("copml_epochs", default=None)


def log_epoch(model: str, epoch: int, epochs: int, metrics: Mapping[str, float]) -> None:
    """Report epoch ``epoch`` (from 1) of ``epochs`` of the network or estimator ``model``
    (``detector``, ``typer``, ...): ``metrics`` such as ``loss``, ``val_recall``."""
    reporter = _active.get()
    if reporter is not None:
        reporter.log(model, epoch, epochs, metrics)


@contextlib.contextmanager
def reporting(run: TrainingRun, console: Console | None = None) -> Iterator[None]:
    """Within the block, :func:`log_epoch` reports to ``run`` (and a bar on a terminal)."""
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    reporter = _Reporter(run, console)
    token = _active.set(reporter)
    try:
        yield
    finally:
        _active.reset(token)
        reporter.close()
