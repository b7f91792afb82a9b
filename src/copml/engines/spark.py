"""Apache Spark: partitions scored as the tasks of one RDD stage.

``cluster`` is a master URL (``spark://host:7077``); without one, ``local[N]``. The job is
a broadcast variable, so each executor receives the champion's bytes once, and Spark
reuses its Python workers, so each loads (and verifies) the model once. The driver binds
to loopback unless ``SPARK_LOCAL_IP`` says otherwise.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from copml.engines.job import Partition, PartWritten, ScoringJob, score_partition


class SparkEngine:
    name = "spark"

    def __init__(self, cluster: str | None, workers: int = 2) -> None:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        host = os.environ["SPARK_LOCAL_IP"]
        builder = (
            SparkSession.builder.master(cluster or f"local[{workers}]")
            .appName("copml-score")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.host", host)
            .config("spark.driver.bindAddress", host)
            .config("spark.pyspark.python", sys.executable)
            # A partition that fails is retried (a lost executor's tasks too), then the
            # run fails: a data error fails the same way every time.
            .config("spark.task.maxFailures", "4")
            .config("spark.executorEnv.OMP_NUM_THREADS", "1")
        )
        if os.environ.get("PYTHONPATH"):  # a source checkout on the executors' path too
            builder = builder.config("spark.executorEnv.PYTHONPATH", os.environ["PYTHONPATH"])
        self._session: Any = builder.getOrCreate()
        self._session.sparkContext.setLogLevel("ERROR")

    def run(self, job: ScoringJob, partitions: list[Partition]) -> list[PartWritten]:
        sc = self._session.sparkContext
        shipped = sc.broadcast(job)
        try:
            return (
                sc.parallelize(partitions, len(partitions))
                .map(lambda p: score_partition(shipped.value, p))
                .collect()
            )
        finally:
            shipped.unpersist()

    def close(self) -> None:
        """Stop the context and the JVM this process started (its gateway exits when its
        standard input closes), so no Java process outlives the run."""
        from pyspark import SparkContext

        gateway = SparkContext._gateway
        self._session.stop()
        if gateway is None:
            return
        proc = getattr(gateway, "proc", None)
        gateway.shutdown()
        SparkContext._gateway = None
        SparkContext._jvm = None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except Exception:
                proc.kill()
                proc.wait()
