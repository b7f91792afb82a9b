"""Ray Data: partitions scored by a pool of actors, one per worker slot.

``cluster`` is a Ray address (``host:6379`` or ``ray://…``); without one, a local Ray
started for this run and stopped after it. Each actor receives the job once (in its
constructor), so it verifies and loads the champion once and scores every partition it
is handed; an actor that dies is restarted by Ray Data and its partition retried.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pandas as pd

from copml.engines.job import Partition, PartWritten, ScoringJob, score_partition


class _Scorer:
    """A Ray Data callable class: one per actor, holding the job and its partitions."""

    def __init__(self, job: ScoringJob, partitions: list[Partition]) -> None:
        self._job = job
        self._partitions = partitions

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        written = [
            dataclasses.asdict(score_partition(self._job, self._partitions[int(i)]))
            for i in batch["part"]
        ]
        for w in written:  # a column of text, never of None
            w["error"] = w["error"] or ""
        return pd.DataFrame(written)


class RayEngine:
    name = "ray"

    def __init__(self, cluster: str | None, workers: int = 2) -> None:
        import ray

        env = {"OMP_NUM_THREADS": "1"}
        if os.environ.get("PYTHONPATH"):  # a source checkout on the workers' path too
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        options: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": "warning",
            "log_to_driver": False,
            "runtime_env": {"env_vars": env},
        }
        if cluster is None:
            options["num_cpus"] = workers
        ray.init(address=cluster, **options)
        ray.data.DataContext.get_current().enable_progress_bars = False
        self._workers = workers if cluster is None else max(1, int(ray.cluster_resources()["CPU"]))

    def run(self, job: ScoringJob, partitions: list[Partition]) -> list[PartWritten]:
        import ray

        items = [{"part": p.index} for p in partitions]
        rows = (
            ray.data.from_items(items, override_num_blocks=len(items))
            .map_batches(
                _Scorer,
                fn_constructor_kwargs={"job": job, "partitions": partitions},
                batch_size=1,
                batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=min(self._workers, len(partitions))),
                num_cpus=1,
            )
            .take_all()
        )
        return [
            PartWritten(
                part=int(r["part"]),
                first_row=int(r["first_row"]),
                n_rows=int(r["n_rows"]),
                path=str(r["path"]),
                sha256=str(r["sha256"]),
                input_path=str(r["input_path"]),
                input_sha256=str(r["input_sha256"]),
                output_path=str(r["output_path"]),
                error=str(r["error"]) or None,
            )
            for r in rows
        ]

    def close(self) -> None:
        import ray

        ray.shutdown()
