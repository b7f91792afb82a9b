"""Small real batches for scoring tests, from the churn simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from copml.simulation import Population, as_source_csv


def month(folder: Path, *, seed: int = 11, size: int = 500) -> tuple[Path, pd.DataFrame]:
    """A batch of active customers as CSV, and who churned that month (no offers)."""
    population = Population(seed=seed, size=size)
    batch = folder / f"batch-{seed}.csv"
    folder.mkdir(parents=True, exist_ok=True)
    as_source_csv(population.customers).to_csv(batch, index=False)
    outcome = population.close_month(np.zeros(size, dtype=bool))
    return batch, outcome
