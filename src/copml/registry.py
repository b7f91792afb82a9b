"""The only module that talks to MLflow's tracking store and model registry.

Each project gets its own client (MLflow's process-global tracking URI is never set), and
training logs through a :class:`TrainingRun` of that client. A registered model is named
after the project. Versions carry their lineage as tags (snapshot, seed, commit, artifact
sha256); the alias ``champion`` marks the version in production. Models are loaded from a
local, sha256-verified copy, once per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import ssl
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from sqlalchemy import Engine

from copml import events
from copml.errors import CopmlError, NotFoundError
from copml.store import open_store

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from copml.project import Project

CHAMPION = "champion"
# The tracking URIs of MLflow's database stores (SQLAlchemy dialects it supports).
_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
TAG = "copml."
TRAINED = "trained"
IMPORTED = "imported"


@dataclass(frozen=True)
class Lineage:
    """Where a version came from, read back typed from its registration event or its tags.

    ``trained`` by copml: its training snapshot, seed, params and commit. ``imported`` from
    another MLflow store: its source URI, source run and flavors, and none of the former.
    ``reference_snapshot_id`` is what drift and explanations compare with (the training
    snapshot, or the one an imported version was checked on); ``output_profile`` is the
    profile of the model's output on its holdout, ``calibration`` the mapping of its scores
    to probabilities fitted there (:mod:`copml.estimation`). ``None`` marks what was not
    recorded.
    """

    run_id: str
    artifact_sha256: str
    origin: str = TRAINED
    snapshot_id: str = ""
    reference_snapshot_id: str = ""
    seed: int | None = None
    params: dict[str, Any] | None = None  # also None when the recorded text is unreadable
    git_commit: str | None = None
    git_dirty: bool | None = None
    source_uri: str = ""
    source_run_id: str = ""
    flavors: tuple[str, ...] = ()
    signature: dict[str, Any] | None = None
    output_profile: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None

    @property
    def imported(self) -> bool:
        return self.origin == IMPORTED

    @classmethod
    def from_evidence(cls, evidence: Mapping[str, Any]) -> Lineage:
        """From the evidence of the ``model.registered`` event that ``copml train`` or
        ``copml models import`` records."""
        if evidence.get("lineage") == IMPORTED:
            return cls(
                run_id=evidence["run_id"],
                artifact_sha256=evidence["artifact_sha256"],
                origin=IMPORTED,
                reference_snapshot_id=evidence.get("reference_snapshot_id") or "",
                source_uri=evidence["source_uri"],
                source_run_id=evidence["source_run_id"],
                flavors=tuple(evidence["flavors"]),
                signature=evidence.get("signature"),
            )
        return cls(
            run_id=evidence["run_id"],
            artifact_sha256=evidence["artifact_sha256"],
            snapshot_id=evidence["snapshot_id"],
            reference_snapshot_id=evidence["snapshot_id"],
            seed=int(evidence["seed"]),
            params=dict(evidence["params"]),
            git_commit=evidence["git_commit"],
            git_dirty=bool(evidence["git_dirty"]),
            output_profile=evidence.get("output_profile"),
            calibration=evidence.get("calibration"),
        )

    @classmethod
    def from_tags(cls, run_id: str, tags: Mapping[str, str]) -> Lineage:
        """From a version's ``copml.*`` registry tags (all text)."""
        seed, dirty = tags.get(TAG + "seed", ""), tags.get(TAG + "git_dirty")
        snapshot_id = tags.get(TAG + "snapshot_id", "")
        flavors = _json_value(tags.get(TAG + "flavors"))
        return cls(
            run_id=run_id,
            artifact_sha256=tags.get(TAG + "artifact_sha256", ""),
            origin=tags.get(TAG + "lineage", TRAINED),
            snapshot_id=snapshot_id,
            reference_snapshot_id=snapshot_id or tags.get(TAG + "reference_snapshot_id", ""),
            seed=int(seed) if seed.lstrip("-").isdigit() else None,
            params=_json_object(tags.get(TAG + "params")),
            git_commit=tags.get(TAG + "git_commit"),
            git_dirty=None if dirty is None else dirty == "true",
            source_uri=tags.get(TAG + "source_uri", ""),
            source_run_id=tags.get(TAG + "source_run_id", ""),
            flavors=tuple(map(str, flavors)) if isinstance(flavors, list) else (),
            signature=_json_object(tags.get(TAG + "signature")),
        )

    def seed_or(self, default: int) -> int:
        """The recorded seed (0 included), else ``default`` (the spec's)."""
        return default if self.seed is None else self.seed


def _json_value(text: str | None) -> Any:
    """The JSON value of a tag's text; None for no text or unreadable text."""
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _json_object(text: str | None) -> dict[str, Any] | None:
    """A JSON object's dict; None for no text, unreadable text or another JSON value."""
    found = _json_value(text)
    return found if isinstance(found, dict) else None


@dataclass(frozen=True)
class ModelVersion:
    """A registered version as copml sees it."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]
    created_at_ms: int

    @property
    def snapshot_id(self) -> str:
        return self.tags.get(TAG + "snapshot_id", "")

    @property
    def artifact_sha256(self) -> str:
        return self.tags.get(TAG + "artifact_sha256", "")

    @property
    def tagged_lineage(self) -> Lineage:
        """The lineage the version's registry tags record, typed."""
        return Lineage.from_tags(self.run_id, self.tags)

    @property
    def state(self) -> str:
        if CHAMPION in self.aliases:
            return CHAMPION
        return self.tags.get(TAG + "state", "registered")

    @property
    def lineage(self) -> str:
        """``trained`` by copml from a snapshot, or ``imported`` from another MLflow store."""
        return self.tags.get(TAG + "lineage", TRAINED)


@cache
def _quiet_mlflow() -> None:
    import logging
    import warnings

    # copml reports what matters itself; MLflow's INFO chatter and its pickle advice
    # (copml verifies every artifact's sha256 before loading) would bury it.
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?$")
    # Against a tracking server MLflow also writes "View run … at: URL" to stdout when a run
    # ends (it would spoil `--json` output) and a progress bar to stderr when it downloads:
    # its own switches, read at each call, turn both off (a user's setting still wins).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI (None for a server or an in-memory store)."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    return Path(database) if database and database != ":memory:" else None


def _create_sqlite_store(path: Path, artifacts_uri: str) -> None:
    """Create a SQLite tracking store at ``path`` that is either complete or absent.

    MLflow builds a new store by running its migrations one after another, not in one
    transaction: a process killed meanwhile leaves a store that no later command can open.
    So the store is built in a temporary file of the same folder and renamed into place;
    a file lock keeps two processes from building it at once.
    """
    from filelock import FileLock
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock")):
        if path.exists():  # another process built it while this one waited
            return
        for stale in path.parent.glob(f".{path.name}-*.tmp*"):  # left by a killed process
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}-{uuid.uuid4().hex}.tmp")  # SQLite creates it
        try:
            # Also creates the model registry's tables (one schema, one migration history).
            store = SqlAlchemyStore(f"sqlite:///{tmp}", artifacts_uri)
            store.engine.dispose()
            with tmp.open("rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power cut
        finally:
            os.close(folder)


def _answering(uri: str) -> None:
    """A tracking server's URI must reach something that answers HTTP, asked once: MLflow's
    own client retries a refused connection with backoff for about four minutes before it
    gives up, so a wrong or stopped server would hold every command that long."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    from urllib.error import HTTPError
    from urllib.request import urlopen

    # Credentials in the URI are MLflow's to send, not this probe's.
    bare = parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
    try:
        with urlopen(bare, timeout=30):  # http or https: checked above
            return
    except HTTPError:
        return  # it answered (a login page, a 404 at the root): MLflow's calls will tell
    except OSError as exc:
        if isinstance(exc, ssl.SSLError) or isinstance(getattr(exc, "reason", None), ssl.SSLError):
            # It speaks TLS with a certificate this probe does not trust: MLflow's own
            # settings (MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS) decide.
            return
        reason = " ".join(str(getattr(exc, "reason", None) or exc).split())[:120]
        raise CopmlError(
            f"MLflow tracking server {_without_password(uri)} cannot be reached ({reason}): "
            "check that it runs and that MLFLOW_TRACKING_URI names it"
        ) from None


@cache
def _opened(uri: str) -> None:
    """Open the tracking store once per process; an unusable one becomes one clear line."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    _answering(uri)
    try:
        c = _client(uri)
        c.search_experiments(max_results=1)
        c.search_registered_models(max_results=1)
    except (MlflowException, SQLAlchemyError, OSError) as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:120]
        path = _sqlite_path(uri)
        if path is None:
            raise CopmlError(
                f"MLflow tracking store {_without_password(uri)} cannot be opened ({reason}): "
                "check that the server is reachable and its database migrated"
            ) from None
        raise CopmlError(
            f"MLflow tracking store {path} cannot be opened ({reason}); it may have been left "
            "unfinished by an interrupted command: if it holds no runs you need, move it "
            "aside and run the command again"
        ) from None


def client(project: Project) -> MlflowClient:
    """A client on the project's tracking store (its store created on first use).

    Only this client is used, never MLflow's process-global tracking URI: two projects in
    one process (the dashboard, a test session) each reach their own store."""
    _quiet_mlflow()
    project.ensure_home()
    store = _sqlite_path(project.tracking_uri)
    if store is not None and not store.exists():
        _create_sqlite_store(store, project.artifacts_uri)
    _opened(project.tracking_uri)
    return _client(project.tracking_uri)


@cache
def _client(uri: str) -> MlflowClient:
    """One client per tracking store and process (MLflow clients are thread-safe)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(project: Project) -> str:
    """The project's MLflow experiment, created with artifacts under ``COPML_HOME``."""
    c = client(project)
    found = c.get_experiment_by_name(project.spec.project)
    if found is not None:
        return found.experiment_id
    # A database store (SQLite, PostgreSQL, …) keeps artifacts under COPML_HOME, not in an
    # ./mlruns of whatever folder the command ran in; a server or a file store places its own.
    database = urlparse(project.tracking_uri).scheme.split("+")[0] in _DATABASES
    location = project.artifacts_uri if database else None
    return c.create_experiment(project.spec.project, artifact_location=location)


@dataclass(frozen=True)
class TrainingRun:
    """A run of the project's experiment, logged through the project's own client: what
    MLflow's fluent API does for its one active run, without the process-global state."""

    client: MlflowClient
    run_id: str

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        found = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=found)

    def log_dict(self, value: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, value, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)


@contextlib.contextmanager
def training_run(project: Project, tags: dict[str, str] | None = None) -> Iterator[TrainingRun]:
    """A new run of the project's experiment, ended FINISHED, or FAILED when the block
    raises; it carries MLflow's usual context tags (user, source, git commit)."""
    from mlflow.entities import RunStatus
    from mlflow.tracking.context.registry import resolve_tags

    c = client(project)
    run = c.create_run(experiment_id(project), tags=resolve_tags(tags or {}))
    try:
        yield TrainingRun(c, run.info.run_id)
    except BaseException:
        c.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    c.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))


def download_artifact(project: Project, run_id: str, path: str, into: Path) -> Path:
    """The local copy, under ``into``, of the artifact ``path`` of a run of the project."""
    import mlflow

    found = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path=path,
        dst_path=str(into),
        tracking_uri=client(project).tracking_uri,
    )
    return Path(found)


@dataclass(frozen=True)
class RunRecord:
    """What a training run logged: its metrics and tags (holdout figures, lineage)."""

    metrics: dict[str, float]
    tags: dict[str, str]


def run_record(project: Project, run_id: str) -> RunRecord:
    """The metrics and tags of a run of the project."""
    run = client(project).get_run(run_id)
    return RunRecord(dict(run.data.metrics), dict(run.data.tags))


def artifact_names(project: Project, run_id: str, folder: str) -> set[str]:
    """The file names a run logged under ``folder``; raises :class:`CopmlError` when the
    run's artifacts cannot be read (a moved store, an unreachable server)."""
    from mlflow.exceptions import MlflowException

    try:
        return {Path(a.path).name for a in client(project).list_artifacts(run_id, folder)}
    except MlflowException as exc:
        raise CopmlError(f"the run's artifacts cannot be read: {exc}") from exc


def fail_running(project: Project, tag: str, value: str) -> int:
    """Marks FAILED the project's runs still RUNNING with tag ``tag`` = ``value``: what a
    killed process left (nothing was registered from them: registration is a run's last
    step). Returns how many."""
    c = client(project)
    experiment = c.get_experiment_by_name(project.spec.project)
    if experiment is None:
        return 0
    left = c.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'RUNNING'",
    )
    for run in left:
        c.set_terminated(run.info.run_id, status="FAILED")
    return len(left)


def directory_sha256(path: Path) -> str:
    """sha256 over every file's relative path and content, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


def _convert(mv: Any) -> ModelVersion:
    return ModelVersion(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id,
        source=mv.source,
        tags=dict(mv.tags or {}),
        aliases=tuple(getattr(mv, "aliases", []) or []),
        created_at_ms=int(mv.creation_timestamp or 0),
    )


_HOLDOUT = "holdout_"


def holdout_names(metrics: dict[str, float]) -> dict[str, float]:
    """Holdout metrics as a run logs them: ``holdout_<name>``, a per-class metric's ``=``
    as ``:`` (MLflow refuses ``=`` in a name); NaN (undefined) left out."""
    return {
        _HOLDOUT + name.replace("=", ":"): value
        for name, value in metrics.items()
        if value == value
    }


def holdout_metrics(project: Project, mv: ModelVersion) -> dict[str, float]:
    """The holdout metrics logged on a version's run, by copml's names; {} when the run is
    gone (an imported version's lives in another store)."""
    from mlflow.exceptions import MlflowException

    try:
        logged = client(project).get_run(mv.run_id).data.metrics
    except MlflowException:
        return {}
    return {
        key.removeprefix(_HOLDOUT).replace(".class:", ".class="): float(value)
        for key, value in logged.items()
        if key.startswith(_HOLDOUT)
    }


def _new_version(
    project: Project, name: str, run_id: str, artifact_path: str, tags: dict[str, str]
) -> str:
    """A new version of the registered model ``name`` (created on first use) from the
    run's artifact folder; its version number."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode

    c = client(project)
    try:
        c.create_registered_model(name)
    except MlflowException as exc:  # registered by an earlier version
        if exc.error_code not in (
            ErrorCode.Name(RESOURCE_ALREADY_EXISTS),
            ErrorCode.Name(ALREADY_EXISTS),
        ):
            raise
    source = f"{c.get_run(run_id).info.artifact_uri}/{artifact_path}"
    return str(c.create_model_version(name, source, run_id=run_id, tags=tags).version)


def register(
    project: Project, run_id: str, artifact_path: str, tags: dict[str, str]
) -> ModelVersion:
    """Register the run's model folder as a new version with its lineage tags."""
    return get(project, _new_version(project, project.spec.project, run_id, artifact_path, tags))


def register_part(
    project: Project, part: str, run_id: str, artifact_path: str, tags: dict[str, str]
) -> str:
    """Register one part of a composite model under ``<project>-<part>``; its version number.

    The composite version is what is promoted and served; the parts are registered too, so
    each has its own version in MLflow and every answer can name them all."""
    name = f"{project.spec.project}-{part}"
    return _new_version(project, name, run_id, artifact_path, tags)


@dataclass(frozen=True)
class SourceModel:
    """A model found in another MLflow store, copied into a local folder to be imported."""

    uri: str
    tracking_uri: str
    run_id: str
    flavors: tuple[str, ...]
    signature: dict[str, Any] | None
    folder: Path


_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))")
_RUNS_URI = re.compile(r"runs:/(?P<run>[0-9a-zA-Z]+)/(?P<path>[\w.\-/]+)")
_URI_FORMS = "models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH"


def _without_password(uri: str) -> str:
    """A tracking URI fit to record: a password in it is replaced by ``***``."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


def _source_client(uri: str, tracking_uri: str) -> MlflowClient:
    """A client on the store ``uri`` names, which must exist: importing creates nothing."""

    _quiet_mlflow()
    path = _sqlite_path(tracking_uri)
    if tracking_uri.startswith("sqlite:") and (path is None or not path.is_file()):
        raise CopmlError(
            f"cannot import {uri}: no MLflow tracking store at {path or tracking_uri} "
            "(--tracking-uri)"
        )
    try:
        _opened(tracking_uri)
    except CopmlError as exc:
        raise CopmlError(f"cannot import {uri}: {exc}") from None
    return _client(tracking_uri)


def _artifact_location(c: MlflowClient, uri: str) -> tuple[str, str]:
    """(the model folder's artifact URI, the run that logged it) for a models:/ or runs:/ URI.

    MLflow 3 keeps a model logged with ``log_model`` as a *logged model* of its own
    (``models:/m-…``), older versions in the run's artifacts: both are looked up."""
    models, runs = _MODELS_URI.fullmatch(uri), _RUNS_URI.fullmatch(uri)
    if models is not None:
        name = models["name"]
        if models["alias"]:
            mv = c.get_model_version_by_alias(name, models["alias"])
        else:
            mv = c.get_model_version(name, models["version"])
        source = str(mv.source)
        if source.startswith("models:/"):
            return c.get_logged_model(source.removeprefix("models:/")).artifact_location, mv.run_id
        if source.startswith("runs:/"):
            return _artifact_location(c, source)
        return source, mv.run_id
    if runs is None:
        raise CopmlError(f"cannot import {uri}: expected {_URI_FORMS}")
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run_id, path = runs["run"], runs["path"].strip("/")
    run = c.get_run(run_id)
    logged = c.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{path}'",
    )
    if logged:
        return logged[0].artifact_location, run_id
    # Not the client's list_artifacts: for a runs:/ path it looks for logged models through
    # MLflow's process-global tracking URI, which copml never sets.
    repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=c.tracking_uri)
    if repo.list_artifacts(path):
        return f"{run.info.artifact_uri}/{path}", run_id
    raise CopmlError(f"cannot import {uri}: run {run_id} has no model at {path!r}")


def fetch(uri: str, tracking_uri: str, into: Path) -> SourceModel:
    """Copy the MLflow model ``uri`` names, in the store at ``tracking_uri``, into ``into``.

    Nothing is written anywhere else: a URI that names nothing is one clear error."""
    if not (_MODELS_URI.fullmatch(uri) or _RUNS_URI.fullmatch(uri)):
        raise CopmlError(f"cannot import {uri}: expected {_URI_FORMS}")
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    c = _source_client(uri, tracking_uri)
    try:
        location, run_id = _artifact_location(c, uri)
        folder = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(into), tracking_uri=tracking_uri
            )
        )
    except MlflowException as exc:
        reason = " ".join(exc.message.split())[:200]
        raise CopmlError(f"cannot import {uri}: {reason}") from None
    if not (folder / "MLmodel").is_file():
        raise CopmlError(f"cannot import {uri}: it is not an MLflow model (no MLmodel file)")
    model = Model.load(str(folder))
    return SourceModel(
        uri=uri,
        tracking_uri=_without_password(tracking_uri),
        run_id=run_id or "",
        flavors=tuple(model.flavors),
        signature=model.signature.to_dict() if model.signature is not None else None,
        folder=folder,
    )


def load_folder(folder: Path, task: str) -> Any:
    """The estimator of a model folder that is not registered yet (not cached)."""
    return _load.__wrapped__(str(folder), "", task)


def register_imported(project: Project, source: SourceModel, tags: dict[str, str]) -> ModelVersion:
    """Register a fetched model as a new version: a run of the project's experiment holds
    the copy (so the project's store keeps it, whatever becomes of the source store)."""
    c = client(project)
    # A run's tag holds at most 8,000 characters, a version's 100,000: a wide signature
    # goes on the version only (the run holds it in its MLmodel file anyway).
    small = {k: v for k, v in tags.items() if k != TAG + "signature"}
    run = c.create_run(experiment_id(project), tags={**small, "mlflow.runName": "import"})
    c.log_artifacts(run.info.run_id, str(source.folder), "model")
    c.set_terminated(run.info.run_id)
    return register(project, run.info.run_id, "model", tags)


def parts(mv: ModelVersion) -> dict[str, str]:
    """The registered versions of a composite model's parts (empty for a single model)."""
    return json.loads(mv.tags.get(TAG + "parts", "{}"))


def get(project: Project, version: str) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        return _convert(client(project).get_model_version(project.spec.project, str(version)))
    except MlflowException:
        raise NotFoundError(f"model {project.spec.project!r} has no version {version!r}") from None


def versions(project: Project) -> list[ModelVersion]:
    """Every version, newest first."""
    from mlflow.exceptions import MlflowException

    try:
        found = client(project).search_model_versions(f"name='{project.spec.project}'")
    except MlflowException:
        return []
    current = champion(project)  # search results do not carry aliases
    out = []
    for mv in found:
        version = _convert(mv)
        if current is not None and version.version == current.version:
            version = dataclasses.replace(version, aliases=current.aliases)
        out.append(version)
    return sorted(out, key=lambda v: -int(v.version))


def champion(project: Project) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client(project).get_model_version_by_alias(project.spec.project, CHAMPION)
    except MlflowException:
        return None
    return _convert(mv)


def required_champion(project: Project) -> ModelVersion:
    """The champion, or the error that says how to get one (scoring needs one)."""
    found = champion(project)
    if found is None:
        raise NotFoundError(
            "no champion model yet: run 'copml train' (a version that meets the declared "
            "minimums becomes champion)"
        )
    return found


def promote(
    project: Project,
    engine: Engine,
    version: str,
    *,
    actor: str,
    reason: str,
    evidence: dict[str, Any] | None = None,
    at: datetime | None = None,
    kind: events.Kind = events.Kind.MODEL_PROMOTED,
) -> None:
    """Move the ``champion`` alias to ``version`` and record who did it and why."""
    previous = champion(project)
    client(project).set_registered_model_alias(project.spec.project, CHAMPION, version)
    with engine.begin() as conn:
        events.record(
            conn,
            kind,
            actor=actor,
            subject=events.model_subject(project.spec.project, version),
            reason=reason,
            evidence={"previous": previous.version if previous else None, **(evidence or {})},
            at=at,
        )


def set_state(project: Project, version: str, state: str) -> None:
    """Record a lifecycle state (design §5) as the version's ``copml.state`` tag."""
    client(project).set_model_version_tag(project.spec.project, version, TAG + "state", state)


def mirror_alias(project: Project, alias: str, version: str | None) -> None:
    """Point ``alias`` (``shadow``, ``canary``) at ``version``, or remove it: the registry's
    view of a rollout whose record is the store's (MLflow's UI shows who runs beside the
    champion). Never raises: the store's record is what servers follow."""
    from mlflow.exceptions import MlflowException

    c = client(project)
    try:
        if version is None:
            c.delete_registered_model_alias(project.spec.project, alias)
        else:
            c.set_registered_model_alias(project.spec.project, alias, version)
    except MlflowException:
        pass


def demote(project: Project) -> None:
    """Remove the ``champion`` alias: nothing is served until a version is promoted."""
    client(project).delete_registered_model_alias(project.spec.project, CHAMPION)


def local_copy(project: Project, mv: ModelVersion) -> Path:
    """A verified local folder of the version's model; downloaded once, checked every time."""
    target = project.models_dir / mv.version
    if not target.exists():
        # A folder of this process's own, renamed into place: server workers starting
        # together may all copy, and the first rename wins.
        project.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}-", dir=project.models_dir))
        try:
            if mv.source.startswith("file:"):
                copied = tmp / "m"
                shutil.copytree(Path(url2pathname(urlparse(mv.source).path)), copied)
            else:
                import mlflow

                # A remote folder (a server's mlflow-artifacts:/…/model) arrives as a
                # folder of its own name inside dst_path: the path returned is the model's.
                copied = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=mv.source,
                        dst_path=str(tmp),
                        tracking_uri=client(project).tracking_uri,
                    )
                )
            with contextlib.suppress(OSError):  # another process renamed its copy first
                copied.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    actual = directory_sha256(target)
    if actual != mv.artifact_sha256:
        raise CopmlError(
            f"model version {mv.version}: artifact sha256 {actual[:12]}… does not match the "
            f"{mv.artifact_sha256[:12]}… recorded at registration; refusing to load it"
        )
    return target


@cache
def _load(path: str, sha256: str, task: str) -> Any:
    from copml.kinds import kind_named

    return kind_named(task).load(Path(path))


def load(project: Project, mv: ModelVersion) -> Any:
    """The fitted estimator of a version (checked against its sha256, cached per process)."""
    return _load(str(local_copy(project, mv)), mv.artifact_sha256, project.spec.model.task)


def load_recorded(project: Project, version: str, sha256: str) -> Any:
    """Like :func:`load`, from the local copy and the sha256 the store recorded at
    registration, with no registry round trip; the registry only when there is no copy."""
    target = project.models_dir / version
    if not target.exists():
        return load(project, get(project, version))
    actual = directory_sha256(target)
    if actual != sha256:
        raise CopmlError(
            f"model version {version}: artifact sha256 {actual[:12]}… does not match the "
            f"{sha256[:12]}… recorded at registration; refusing to load it"
        )
    return _load(str(target), sha256, project.spec.model.task)


def recorded(project: Project, version: str) -> Lineage:
    """Where a version came from: run, snapshot, commit, params, seed, artifact sha256
    (for an imported version: its source URI, source run and flavors instead).

    From the registration event in copml's store (no MLflow round trip: an audit in a fresh
    process stays fast), else from the registry's tags (a store that did not see it).
    """
    engine = open_store(project.db_url)
    event = events.latest(
        engine, events.Kind.MODEL_REGISTERED, events.model_subject(project.spec.project, version)
    )
    evidence = (event or {}).get("evidence") or {}
    if evidence.get("lineage") == IMPORTED or "params" in evidence:
        return Lineage.from_evidence(evidence)
    return get(project, version).tagged_lineage
