"""The engine seam: where a batch's partitions are scored.

An engine takes a :class:`~copml.engines.job.ScoringJob` and the partitions of the input
and runs :func:`~copml.engines.job.score_partition` once per partition on its workers,
returning what each wrote. That is all the platform asks of Spark or Ray; everything
else (planning, verifying the parts, the header commit) is :mod:`copml.partitioned`'s and
the same for every engine. ``local`` is not an engine here: it is today's single-process
``copml score``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from copml.errors import CopmlError

if TYPE_CHECKING:
    from copml.engines.job import Partition, PartWritten, ScoringJob

ENGINES = ("local", "spark", "ray")
DISTRIBUTED = ("spark", "ray")


class Engine(Protocol):
    """A cluster (or a local one) that maps the scoring of partitions over its workers."""

    name: str

    def run(self, job: ScoringJob, partitions: list[Partition]) -> list[PartWritten]:
        """What :func:`score_partition` returned for each partition, in any order."""
        ...

    def close(self) -> None:
        """Release the cluster (stop a local one; disconnect from a remote one)."""
        ...


@contextmanager
def opened(name: str, cluster: str | None = None, workers: int = 2) -> Iterator[Engine]:
    """The engine ``name`` on ``cluster`` (a URL; None: a local cluster of ``workers``),
    closed on the way out whatever happens."""
    engine: Engine
    if name == "spark":
        from copml.engines.spark import SparkEngine

        engine = SparkEngine(cluster, workers)
    elif name == "ray":
        from copml.engines.ray import RayEngine

        engine = RayEngine(cluster, workers)
    else:
        raise CopmlError(f"--engine: {name!r} is not a cluster engine (one of spark, ray)")
    try:
        yield engine
    finally:
        engine.close()
