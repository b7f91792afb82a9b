"""Small real batches for scoring tests, from the churn simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from copml.apps.churn.simulation import Population, as_source_csv
from copml.project import Project


def month(folder: Path, *, seed: int = 11, size: int = 500) -> tuple[Path, pd.DataFrame]:
    """A batch of active customers as CSV, and who churned that month (no offers)."""
    population = Population(seed=seed, size=size)
    batch = folder / f"batch-{seed}.csv"
    folder.mkdir(parents=True, exist_ok=True)
    as_source_csv(population.customers).to_csv(batch, index=False)
    outcome = population.close_month(np.zeros(size, dtype=bool))
    return batch, outcome


def month_with_truth(project: Project, tmp_path: Path, seed: int = 11) -> pd.DataFrame:
    """Score a month (1 March 2026), load who churned (31 March); the scores with the truth."""
    from datetime import UTC, datetime

    from copml.feedback import load
    from copml.score import score

    batch, outcome = month(tmp_path / f"m{seed}", seed=seed)
    out = tmp_path / f"scores{seed}.csv"
    score(project, batch, out, at=datetime(2026, 3, 1, 6, tzinfo=UTC))
    truth = tmp_path / f"truth{seed}.csv"
    outcome.to_csv(truth, index=False)
    load(project, truth, at=datetime(2026, 3, 31, tzinfo=UTC))
    return pd.read_csv(out).merge(outcome, on="customerID")
