"""OpenLineage run events: the default file transport, HTTP to a real local server, and
the promise that lineage never breaks a job.

Events are checked against the official OpenLineage JSON Schema when a copy of it ships in
an installed package, in ``tests/data/`` or in ``$OPENLINEAGE_SPEC_DIR`` (a checkout's
``spec/`` folder); the structural checks run everywhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import Enum
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import attrs
import pytest

from copml import lineage
from copml.lineage import Dataset, emit, read_events, run_uuid, schema_facet
from copml.project import Project

DATA = Path(__file__).resolve().parent / "data"
CORE_ID = re.compile(r"^https://openlineage\.io/spec/\d+-\d+-\d+/OpenLineage\.json$")

CHURN_COLUMNS = [("customer_id", "string"), ("tenure", "int64"), ("churned", "bool")]


@pytest.fixture(autouse=True)
def _no_lineage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test chooses its own transport."""
    for var in (lineage.URL_ENV, lineage.ENDPOINT_ENV, lineage.API_KEY_ENV, lineage.DISABLED_ENV):
        monkeypatch.delenv(var, raising=False)


def _train_run(project: Project) -> str:
    """A START and a COMPLETE for one ``train`` run: a snapshot in, a model out."""
    snapshot = Dataset(
        namespace="file://copml",
        name="churn/snapshots/2026-01-01",
        facets={"schema": schema_facet(CHURN_COLUMNS)},
    )
    model = Dataset(namespace="mlflow://copml", name="models:/churn/1")
    run_id = run_uuid("train:42")
    started = datetime(2026, 1, 1, 6, 0, tzinfo=UTC)
    assert emit(project, "train", run_id=run_id, inputs=[snapshot], event_type="START", at=started)
    assert emit(
        project, "train", run_id=run_id, inputs=[snapshot], outputs=[model], event_type="COMPLETE"
    )
    return run_id


def test_train_run_events_in_file(fresh_churn: Project) -> None:
    run_id = _train_run(fresh_churn)

    assert lineage.events_path(fresh_churn) == fresh_churn.home / "lineage" / "events.jsonl"
    events = read_events(fresh_churn)
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    for event in events:
        _assert_valid_event(event)
        assert event["run"]["runId"] == run_id == str(uuid.UUID(run_id))
        assert event["job"]["namespace"] == f"copml.{fresh_churn.spec.project}"
        assert event["job"]["name"] == "train"
        assert event["producer"] == "https://github.com/copml/copml"
        assert event["schemaURL"].startswith("https://openlineage.io/spec/")
        assert datetime.fromisoformat(event["eventTime"]).tzinfo is not None
        (snapshot,) = event["inputs"]
        assert snapshot["name"] == "churn/snapshots/2026-01-01"
        schema = snapshot["facets"]["schema"]
        assert schema["_producer"] == "https://github.com/copml/copml"
        assert [(f["name"], f["type"]) for f in schema["fields"]] == CHURN_COLUMNS
    assert events[0]["eventTime"] == "2026-01-01T06:00:00+00:00"
    assert events[0]["outputs"] == []
    assert [o["name"] for o in events[1]["outputs"]] == ["models:/churn/1"]
    # State stays under COPML_HOME, which copml keeps out of git.
    assert (fresh_churn.home / ".gitignore").read_text() == "*\n"


def test_every_job_emits_events_the_openlineage_client_loads_strictly(churn: Project) -> None:
    """The real snapshot, train and score events, read back through the client's classes."""
    from batches import month
    from copml.score import score

    done = subprocess.run(
        [sys.executable, "-m", "copml", "snapshot", "--json"],
        cwd=churn.root,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k not in ("COPML_HOME", "COPML_DB_URL")},
    )
    assert done.returncode == 0, done.stderr
    batch, _ = month(churn.root / "in")
    score(churn, batch, churn.root / "out" / "scores.csv", at=datetime(2026, 2, 1))

    events = read_events(churn)
    assert {e["job"]["name"] for e in events} == {"snapshot", "train", "score"}
    for event in events:
        _assert_valid_event(event)
    (scored,) = [e for e in events if e["job"]["name"] == "score"]
    assert scored["eventTime"] == "2026-02-01T00:00:00+00:00"  # a naive --at is UTC
    assert [d["namespace"] for d in scored["outputs"]] == [f"copml.{churn.spec.project}", "file"]
    assert scored["outputs"][1]["name"] == str(churn.root / "out" / "scores.csv")


def test_events_match_official_schema(fresh_churn: Project) -> None:
    from jsonschema import Draft202012Validator

    registry, core_uri, defs = _official_schemas()
    _train_run(fresh_churn)
    events = read_events(fresh_churn)
    assert len(events) == 2

    checker = Draft202012Validator.FORMAT_CHECKER
    run_event = Draft202012Validator(
        {"$ref": f"{core_uri}#/{defs}/RunEvent"}, registry=registry, format_checker=checker
    )
    for event in events:
        errors = [e.message for e in run_event.iter_errors(event)]
        assert not errors, errors
        for facet in _facets(event):
            if facet["_schemaURL"].split("#")[0] in registry:
                validator = Draft202012Validator(
                    {"$ref": facet["_schemaURL"]}, registry=registry, format_checker=checker
                )
                errors = [e.message for e in validator.iter_errors(facet)]
                assert not errors, (facet["_schemaURL"], errors)


def test_http_transport_posts_to_server(
    fresh_churn: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[tuple[str, str, dict[str, Any]]] = []

    class Lineage(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with _serving(Lineage) as url:
        monkeypatch.setenv(lineage.URL_ENV, url)
        run_id = emit(fresh_churn, "score", inputs=[Dataset("file://copml", "batch.csv")])

    ((path, content_type, event),) = received
    _assert_valid_event(event)
    assert path == "/api/v1/lineage"
    assert content_type == "application/json"
    assert event["run"]["runId"] == run_id
    assert event["eventType"] == "COMPLETE"
    assert event["job"] == {
        "namespace": f"copml.{fresh_churn.spec.project}",
        "name": "score",
        "facets": event["job"]["facets"],
    }
    assert event["inputs"][0]["name"] == "batch.csv"
    assert read_events(fresh_churn) == []  # HTTP replaces the file transport


def test_unreachable_server_does_not_raise(
    fresh_churn: Project, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port that was just free and now has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(lineage.URL_ENV, f"http://127.0.0.1:{port}")

    with caplog.at_level(logging.WARNING, logger="copml.lineage"):
        run_id = emit(fresh_churn, "snapshot", run_id="snapshot:7")

    assert run_id == run_uuid("snapshot:7")
    assert "not emitted" in caplog.text


def test_unwritable_file_does_not_raise(
    fresh_churn: Project, caplog: pytest.LogCaptureFixture
) -> None:
    lineage.events_path(fresh_churn).mkdir(parents=True)  # a folder where the file should be

    with caplog.at_level(logging.WARNING, logger="copml.lineage"):
        emit(fresh_churn, "train")

    assert "not emitted" in caplog.text


def test_disabled(fresh_churn: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lineage.DISABLED_ENV, "1")
    run_id = emit(fresh_churn, "train")
    assert uuid.UUID(run_id).version == 4
    assert not lineage.events_path(fresh_churn).exists()
    assert read_events(fresh_churn) == []


def test_run_ids() -> None:
    assert run_uuid("train:42") == run_uuid("train:42") != run_uuid("train:43")
    assert uuid.UUID(run_uuid("train:42")).version == 5
    given = str(uuid.uuid4())
    assert lineage._as_uuid(given) == given
    assert lineage._as_uuid("train:42") == run_uuid("train:42")


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on a free local port for the duration of a ``with`` block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _facets(event: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from event["run"].get("facets", {}).values()
    yield from event["job"].get("facets", {}).values()
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        for key in ("facets", "inputFacets", "outputFacets"):
            yield from dataset.get(key, {}).values()


@cache
def _schema_files() -> tuple[Path, ...]:
    """Official OpenLineage spec files (core and facets) that this machine already has."""
    roots = [DATA]
    if os.environ.get("OPENLINEAGE_SPEC_DIR"):
        roots.append(Path(os.environ["OPENLINEAGE_SPEC_DIR"]))
    roots += [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    found: list[Path] = []
    for root in roots:
        for folder, _, files in os.walk(root):
            found += [
                Path(folder, f)
                for f in files
                if f == "OpenLineage.json" or f.endswith("Facet.json")
            ]
    return tuple(found)


def _official_schemas() -> tuple[Any, str, str]:
    """A registry of the official schemas found, the core schema's URI and its defs keyword."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry: Registry = Registry()
    core: tuple[str, str] | None = None
    for path in _schema_files():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        uri = doc.get("$id") if isinstance(doc, dict) else None
        if not isinstance(uri, str) or not uri.startswith("https://openlineage.io/spec/"):
            continue  # only the project's own published schemas count as official
        registry = registry.with_resource(
            uri, Resource.from_contents(doc, default_specification=DRAFT202012)
        )
        defs = "$defs" if "$defs" in doc else "definitions"
        if (
            CORE_ID.match(uri)
            and "RunEvent" in doc.get(defs, {})
            and (core is None or uri > core[0])
        ):
            core = (uri, defs)
    if core is None:
        pytest.skip(
            "the official OpenLineage JSON Schema (OpenLineage.json) ships in no installed "
            "package here; put it in tests/data/ or set OPENLINEAGE_SPEC_DIR to validate"
        )
    return registry, core[0], core[1]


def _assert_valid_event(event: dict[str, Any]) -> None:
    """Load ``event`` strictly into the client's ``RunEvent`` and facet classes (their own
    validators run; any field they do not know fails), check that nothing was lost on the
    way back, and check the fields the OpenLineage spec requires."""
    from openlineage.client.event_v2 import RunEvent
    from openlineage.client.serde import Serde

    loaded = _structure(event, RunEvent, "event")
    assert Serde.to_dict(loaded) == event
    assert datetime.fromisoformat(event["eventTime"]).tzinfo is not None, event["eventTime"]
    assert str(uuid.UUID(event["run"]["runId"])) == event["run"]["runId"]
    _assert_uri(event["producer"])
    _assert_uri(event["schemaURL"])
    for named in [event["job"], *event.get("inputs", []), *event.get("outputs", [])]:
        assert isinstance(named["namespace"], str) and named["namespace"], named
        assert isinstance(named["name"], str) and named["name"], named
    for facet in _facets(event):
        _assert_uri(facet["_producer"])
        _assert_uri(facet["_schemaURL"])
        assert urlparse(facet["_schemaURL"]).fragment.startswith("/$defs/"), facet


def _assert_uri(value: Any) -> None:
    parts = urlparse(value) if isinstance(value, str) else None
    assert parts and parts.scheme in ("http", "https") and parts.netloc, value


@cache
def _facet_classes() -> dict[str, type]:
    """Every facet class the client ships, by the ``_schemaURL`` its instances carry."""
    import importlib
    import pkgutil

    from openlineage.client import generated
    from openlineage.client.generated.base import BaseFacet

    found: dict[str, type] = {}
    for module in pkgutil.iter_modules(generated.__path__):
        for obj in vars(importlib.import_module(f"{generated.__name__}.{module.name}")).values():
            if isinstance(obj, type) and issubclass(obj, BaseFacet) and attrs.has(obj):
                found[obj._get_schema()] = obj
    return found


def _structure(data: Any, kind: Any, where: str) -> Any:
    """``data`` as an instance of the annotated type ``kind``, refusing anything unknown."""
    import types
    import typing

    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            assert type(None) in args, f"{where}: null is not allowed"
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _structure(data, kind, where)
    if origin is list:
        assert isinstance(data, list), f"{where}: expected a list"
        return [_structure(item, args[0], f"{where}[{i}]") for i, item in enumerate(data)]
    if origin is dict:
        assert isinstance(data, dict), f"{where}: expected an object"
        return {key: _structure(v, args[1], f"{where}.{key}") for key, v in data.items()}
    if isinstance(kind, type) and issubclass(kind, Enum):
        return kind(data)
    if attrs.has(kind):
        assert isinstance(data, dict), f"{where}: expected an object"
        if "_schemaURL" in data:  # a facet: the declared base, made concrete by its schema
            concrete = _facet_classes().get(data["_schemaURL"])
            assert concrete is not None, f"{where}: no client facet for {data['_schemaURL']}"
            assert issubclass(concrete, kind), f"{where}: a {concrete.__name__} is no {kind}"
            kind = concrete
        fields = {f.name: f for f in attrs.fields(attrs.resolve_types(kind))}
        unknown = set(data) - set(fields)
        assert not unknown, f"{where}: {kind.__name__} has no field {sorted(unknown)}"
        values = {
            f.alias: _structure(data[name], f.type, f"{where}.{name}")
            for name, f in fields.items()
            if f.init and name in data
        }
        instance = kind(**values)  # the client's own validators run here
        for name, f in fields.items():
            if not f.init and name in data:  # schema URLs: fixed by the class
                assert getattr(instance, name) == data[name], f"{where}.{name}: {data[name]}"
        return instance
    assert isinstance(data, kind) and not (kind is int and isinstance(data, bool)), (
        f"{where}: expected {kind.__name__}, got {data!r}"
    )
    return data
