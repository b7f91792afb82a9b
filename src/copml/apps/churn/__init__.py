"""The churn application: a telco customer population simulated month by month, and the
demo that runs the COPML loop on it (its model is the platform's ``binary`` kind)."""

from __future__ import annotations

from pathlib import Path

HISTORY_ROWS = 6000


def starting_data(directory: Path, seed: int) -> Path:
    """``copml init --example churn``'s dataset: simulated customers with their churn."""
    from copml.apps.churn.simulation import Population, as_source_csv

    data = directory / "data" / "customers.csv"
    data.parent.mkdir(exist_ok=True)
    as_source_csv(Population(seed=seed).history(HISTORY_ROWS)).to_csv(data, index=False)
    return data
