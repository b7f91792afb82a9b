"""OpenLineage run events for copml's jobs (snapshot, train, score, ...).

Lineage tools (Marquez, DataHub, ...) learn which data a model came from only if each job
reports its runs. Events go to a JSON-lines file under ``COPML_HOME`` by default, so every
project has an audit trail with no server; ``COPML_OPENLINEAGE_URL`` sends them over HTTP
instead, and ``COPML_OPENLINEAGE_DISABLED=1`` turns them off. Lineage is a side channel:
a failure to emit is logged and never breaks the job that emits.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from copml import times
from copml.project import Project

log = logging.getLogger(__name__)

PRODUCER = "https://github.com/copml/copml"
"""The ``producer`` URI stamped on every event and facet copml builds."""

RUN_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, PRODUCER)
"""Fixed namespace for :func:`run_uuid`: the same copml id always maps to the same run id."""

URL_ENV = "COPML_OPENLINEAGE_URL"
ENDPOINT_ENV = "COPML_OPENLINEAGE_ENDPOINT"
API_KEY_ENV = "COPML_OPENLINEAGE_API_KEY"
DISABLED_ENV = "COPML_OPENLINEAGE_DISABLED"

EVENT_TYPES = ("START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER")

# A lineage server that is down must not hold a job up for long: few, quick retries.
_HTTP_TIMEOUT_S = 5.0
_HTTP_RETRY: dict[str, Any] = {"total": 2, "connect": 2, "read": 2, "backoff_factor": 0.1}


@dataclass(frozen=True)
class Dataset:
    """A dataset a job read or wrote, named as OpenLineage names it (namespace + name)."""

    namespace: str
    name: str
    facets: dict[str, Any] = field(default_factory=dict)


def schema_facet(columns: list[tuple[str, str]]) -> Any:
    """The standard ``schema`` dataset facet from ``(column, type)`` pairs, in column order."""
    from openlineage.client.facet_v2 import schema_dataset

    return schema_dataset.SchemaDatasetFacet(
        fields=[
            schema_dataset.SchemaDatasetFacetFields(name=name, type=kind, ordinal_position=i)
            for i, (name, kind) in enumerate(columns, start=1)
        ],
        producer=PRODUCER,
    )


def run_uuid(text: str) -> str:
    """A UUID run id derived from a copml id, so START and COMPLETE of one run share it."""
    return str(uuid.uuid5(RUN_NAMESPACE, text))


def job_namespace(project: Project) -> str:
    """One OpenLineage job namespace per copml project."""
    return f"copml.{project.spec.project}"


def events_path(project: Project) -> Path:
    """Where the default file transport appends events, one JSON document a line."""
    return project.home / "lineage" / "events.jsonl"


def emit(
    project: Project,
    job: str,
    *,
    run_id: str | None = None,
    inputs: Sequence[Dataset] = (),
    outputs: Sequence[Dataset] = (),
    event_type: str = "COMPLETE",
    at: datetime | None = None,
    facets: dict[str, Any] | None = None,
) -> str:
    """Send one run event for ``job`` and return its run id, even when sending failed.

    ``run_id`` must be a UUID (OpenLineage requires one); any other text is mapped through
    :func:`run_uuid`, so callers may pass their own stable ids. A new uuid4 is used when it
    is omitted. ``at`` defaults to now; a naive time is taken as UTC, as copml's ``--at`` is.
    ``facets`` are run facets (client facet objects or plain dicts).
    """
    rid = _as_uuid(run_id) if run_id else str(uuid.uuid4())
    if _disabled():
        return rid
    try:
        event = _run_event(project, job, rid, inputs, outputs, event_type, at, facets)
        transport = _transport(project)
        try:
            transport.emit(event)
        finally:
            transport.close()
    except Exception as exc:  # lineage must never break the job
        log.warning("OpenLineage %s event for job %r not emitted: %s", event_type, job, exc)
    return rid


def read_events(project: Project) -> list[dict[str, Any]]:
    """The events the file transport wrote, oldest first (for tests and audits)."""
    path = events_path(project)
    if not path.exists():
        return []
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash must not hide the rest
            log.warning("%s:%d is not a JSON event; skipped", path, number)
    return events


def _disabled() -> bool:
    return os.environ.get(DISABLED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _as_uuid(run_id: str) -> str:
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        return run_uuid(run_id)


def _run_event(
    project: Project,
    job: str,
    run_id: str,
    inputs: Sequence[Dataset],
    outputs: Sequence[Dataset],
    event_type: str,
    at: datetime | None,
    facets: dict[str, Any] | None,
) -> Any:
    """Build the client's RunEvent; its validators check run id and time like the spec."""
    from openlineage.client.event_v2 import (
        InputDataset,
        Job,
        OutputDataset,
        Run,
        RunEvent,
        RunState,
    )
    from openlineage.client.facet_v2 import job_type_job

    when = times.utc(at or datetime.now(UTC))
    job_facets = {
        "jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH", integration="COPML", jobType="JOB", producer=PRODUCER
        )
    }
    return RunEvent(
        eventType=RunState(event_type.upper()),
        eventTime=when.isoformat(),
        run=Run(runId=run_id, facets=dict(facets or {})),
        job=Job(namespace=job_namespace(project), name=job, facets=job_facets),
        inputs=[InputDataset(namespace=d.namespace, name=d.name, facets=d.facets) for d in inputs],
        outputs=[
            OutputDataset(namespace=d.namespace, name=d.name, facets=d.facets) for d in outputs
        ],
        producer=PRODUCER,
    )


def _transport(project: Project) -> Any:
    """HTTP when a lineage server is configured, else append to the project's events file."""
    url = os.environ.get(URL_ENV, "").strip()
    if url:
        from openlineage.client.transport.http import (
            ApiKeyTokenProvider,
            HttpConfig,
            HttpTransport,
            TokenProvider,
        )
        from openlineage.client.transport.http_common import DEFAULT_RETRY_CONFIG

        api_key = os.environ.get(API_KEY_ENV)
        config = HttpConfig(
            url=url,
            endpoint=os.environ.get(ENDPOINT_ENV) or "api/v1/lineage",
            timeout=_HTTP_TIMEOUT_S,
            auth=ApiKeyTokenProvider({"api_key": api_key}) if api_key else TokenProvider({}),
            retry={**DEFAULT_RETRY_CONFIG, **_HTTP_RETRY},
        )
        return HttpTransport(config)

    from openlineage.client.transport.file import FileConfig, FileTransport

    project.ensure_home()  # keeps the events out of the project's git history
    path = events_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileTransport(FileConfig(log_file_path=str(path), append=True))


def snapshot_dataset(project: Project, snapshot: Any) -> Dataset:
    """A frozen snapshot as an OpenLineage dataset: named by its content hash, with its schema."""
    columns = [
        (name, spec.get("type", "string")) for name, spec in snapshot.schema["columns"].items()
    ]
    return Dataset(
        f"copml.{project.spec.project}",
        f"snapshot/{snapshot.id}",
        {"schema": schema_facet(columns)},
    )


def model_dataset(project: Project, version: str) -> Dataset:
    return Dataset(f"copml.{project.spec.project}", f"model/{project.spec.project}/{version}")


def file_dataset(path: Any) -> Dataset:
    return Dataset("file", str(path))
