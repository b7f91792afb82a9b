"""Where a project keeps its state: ``COPML_HOME``, the store URL and the MLflow tracking URI.

Defaults are embedded (design §3) so a project works with no server at all; environment
variables switch each part to production infrastructure.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from copml.spec import SPEC_FILE, Spec, load_spec


@dataclass(frozen=True)
class Project:
    """A project folder with its validated spec and resolved state locations."""

    root: Path
    spec: Spec

    @property
    def home(self) -> Path:
        home = os.environ.get("COPML_HOME")
        return Path(home).resolve() if home else self.root / ".copml"

    @property
    def db_url(self) -> str:
        return os.environ.get("COPML_DB_URL") or f"sqlite:///{self.home / 'copml.db'}"

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def artifacts_uri(self) -> str:
        return (self.home / "artifacts").as_uri()

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @property
    def models_dir(self) -> Path:
        """Local, verified copies of registered models, so scoring never re-downloads."""
        return self.home / "models"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @cached_property
    def pii_key(self) -> bytes:
        """The secret for keyed hashes of PII; created once, readable by the owner only."""
        path = self.home / "secret.key"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())

    def ensure_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        gitignore = self.home / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text("*\n")


def load_project(root: str | Path = ".") -> Project:
    """Load the project at ``root`` (the folder holding ``copml.yaml``)."""
    root = Path(root).resolve()
    return Project(root=root, spec=load_spec(root / SPEC_FILE))
