"""Batch scoring of 1,000,000 rows, every prediction logged to SQLite, against bare
pandas + ``predict_proba`` in chunks on the same rows and the same fitted pipeline.

Target (issue 2): copml's wall time at most 1.5x the bare baseline.
Run: .venv/bin/python benchmarks/score.py [ROWS]
"""

from __future__ import annotations

import json
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from copml import registry
from copml.score import CHUNK_ROWS, score
from workload import WORK, batch, hgb_project, timed


def main(rows: int = 1_000_000) -> dict[str, float]:
    print(f"batch scoring benchmark, {rows:,} rows")
    project = hgb_project("score")
    source = batch(WORK / f"batch-{rows}.parquet", rows)
    model = registry.load(project, registry.champion(project))  # loaded once, as copml does
    features = project.spec.data.features
    results: dict[str, float] = {}
    with timed("bare pandas + predict_proba", results):
        frame = pd.read_parquet(source)
        scores = []
        for start in range(0, len(frame), CHUNK_ROWS):
            scores.append(model.predict_proba(frame.iloc[start : start + CHUNK_ROWS][features]))
        out = pd.DataFrame({"customerID": frame["customerID"],
                            "score": pd.concat([pd.Series(s[:, 1]) for s in scores],
                                               ignore_index=True)})
        pq.write_table(pa.Table.from_pandas(out), WORK / "bare-out.parquet")
    with timed("copml score (validated, frozen, logged)", results):
        result = score(project, source, WORK / "copml-out.parquet")
    assert result.rows == rows
    results["ratio"] = results["copml score (validated, frozen, logged)"] / results[
        "bare pandas + predict_proba"
    ]
    print(f"  ratio copml / bare: {results['ratio']:.2f} (target <= 1.5)")
    return results


if __name__ == "__main__":
    figures = main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
    print(json.dumps(figures))
