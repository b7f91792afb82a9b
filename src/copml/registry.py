"""The only module that talks to the MLflow model registry.

A registered model is named after the project. Versions carry their lineage as tags
(snapshot, seed, commit, artifact sha256); the alias ``champion`` marks the version in
production. Models are loaded from a local, sha256-verified copy, once per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
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
TAG = "copml."


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
    def state(self) -> str:
        if CHAMPION in self.aliases:
            return CHAMPION
        return self.tags.get(TAG + "state", "registered")


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@cache
def _quiet_mlflow() -> None:
    import logging
    import warnings

    # copml reports what matters itself; MLflow's INFO chatter and its pickle advice
    # (copml verifies every artifact's sha256 before loading) would bury it.
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?$")


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


@cache
def _opened(uri: str) -> None:
    """Open the tracking store once per process; an unusable one becomes one clear line."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        c.search_experiments(max_results=1)
        c.search_registered_models(max_results=1)
    except (MlflowException, SQLAlchemyError, OSError) as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:120]
        path = _sqlite_path(uri)
        recover = (
            "if it holds no runs you need, move it aside and run the command again"
            if path is not None
            else "check that the server is reachable and its database migrated"
        )
        raise CopmlError(
            f"MLflow tracking store {path or uri} cannot be opened ({reason}); it may have "
            f"been left unfinished by an interrupted command: {recover}"
        ) from None


def client(project: Project) -> MlflowClient:
    """A client on the project's tracking store, also made the default for MLflow's fluent API."""
    import mlflow

    _quiet_mlflow()
    project.ensure_home()
    store = _sqlite_path(project.tracking_uri)
    if store is not None and not store.exists():
        _create_sqlite_store(store, project.artifacts_uri)
    _opened(project.tracking_uri)
    # MLflow's setters also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, which a
    # Project reads as the user's choice: left there, the next project in this process
    # (a test session, the dashboard) would silently use this one's store.
    exported = {name: os.environ.get(name) for name in _URI_VARIABLES}
    mlflow.set_tracking_uri(project.tracking_uri)
    mlflow.set_registry_uri(project.tracking_uri)
    for name, value in exported.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return mlflow.MlflowClient(tracking_uri=project.tracking_uri, registry_uri=project.tracking_uri)


def experiment_id(project: Project) -> str:
    """The project's MLflow experiment, created with artifacts under ``COPML_HOME``."""
    c = client(project)
    found = c.get_experiment_by_name(project.spec.project)
    if found is not None:
        return found.experiment_id
    location = project.artifacts_uri if project.tracking_uri.startswith("sqlite") else None
    return c.create_experiment(project.spec.project, artifact_location=location)


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


def register(
    project: Project, run_id: str, artifact_path: str, tags: dict[str, str]
) -> ModelVersion:
    """Register the run's model folder as a new version with its lineage tags."""
    import mlflow

    client(project)
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints its own confirmation
        mv = mlflow.register_model(
            f"runs:/{run_id}/{artifact_path}", project.spec.project, tags=tags
        )
    return get(project, str(mv.version))


def register_part(
    project: Project, part: str, run_id: str, artifact_path: str, tags: dict[str, str]
) -> str:
    """Register one part of a composite model under ``<project>-<part>``; its version number.

    The composite version is what is promoted and served; the parts are registered too, so
    each has its own version in MLflow and every answer can name them all."""
    from mlflow.exceptions import MlflowException

    c = client(project)
    name = f"{project.spec.project}-{part}"
    with contextlib.suppress(MlflowException):  # registered by an earlier version
        c.create_registered_model(name)
    source = f"{c.get_run(run_id).info.artifact_uri}/{artifact_path}"
    return str(c.create_model_version(name, source, run_id=run_id, tags=tags).version)


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


def promote(
    project: Project,
    engine: Engine,
    version: str,
    *,
    actor: str,
    reason: str,
    evidence: dict[str, Any] | None = None,
    at: datetime | None = None,
    kind: str = "model.promoted",
) -> None:
    """Move the ``champion`` alias to ``version`` and record who did it and why."""
    previous = champion(project)
    client(project).set_registered_model_alias(project.spec.project, CHAMPION, version)
    with engine.begin() as conn:
        events.record(
            conn,
            kind,
            actor=actor,
            subject=f"model:{project.spec.project}/{version}",
            reason=reason,
            evidence={"previous": previous.version if previous else None, **(evidence or {})},
            at=at,
        )


def set_state(project: Project, version: str, state: str) -> None:
    """Record a lifecycle state (design §5) as the version's ``copml.state`` tag."""
    client(project).set_model_version_tag(project.spec.project, version, TAG + "state", state)


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
        tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}-", dir=project.models_dir)) / "m"
        try:
            if mv.source.startswith("file:"):
                shutil.copytree(Path(url2pathname(urlparse(mv.source).path)), tmp)
            else:
                import mlflow

                mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp))
            with contextlib.suppress(OSError):  # another process renamed its copy first
                tmp.rename(target)
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
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


def recorded(project: Project, version: str) -> dict[str, Any]:
    """Where a version came from: run, snapshot, commit, params, seed, artifact sha256.

    From the registration event in copml's store (no MLflow round trip: an audit in a fresh
    process stays fast), else from the registry's tags (a store that did not see it).
    """
    engine = open_store(project.db_url)
    event = events.latest(engine, "model.registered", f"model:{project.spec.project}/{version}")
    evidence = (event or {}).get("evidence") or {}
    if "params" in evidence:
        return {
            "run_id": evidence["run_id"],
            "snapshot_id": evidence["snapshot_id"],
            "git_commit": evidence["git_commit"],
            "git_dirty": bool(evidence["git_dirty"]),
            "params": json.dumps(evidence["params"], sort_keys=True, default=str),
            "seed": str(evidence["seed"]),
            "artifact_sha256": evidence["artifact_sha256"],
        }
    mv = get(project, version)
    return {
        "run_id": mv.run_id,
        "snapshot_id": mv.snapshot_id,
        "git_commit": mv.tags.get(TAG + "git_commit"),
        "git_dirty": mv.tags.get(TAG + "git_dirty") == "true",
        "params": mv.tags.get(TAG + "params"),
        "seed": mv.tags.get(TAG + "seed"),
        "artifact_sha256": mv.artifact_sha256,
    }
