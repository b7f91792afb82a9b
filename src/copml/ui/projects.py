"""The projects one dashboard shows: found from ``--project`` folders, named in URLs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from copml import keys
from copml.errors import CopmlError
from copml.project import Project, load_project
from copml.spec import SPEC_FILE
from copml.store import open_store


@dataclass(frozen=True)
class Shown:
    """A project as the dashboard holds it: its URL name, store and key verifier."""

    slug: str
    project: Project
    engine: Engine
    verifier: keys.Verifier

    @property
    def name(self) -> str:
        return self.project.spec.project


def _roots(path: Path) -> list[Path]:
    """``path`` itself when it is a project, else the projects directly inside it."""
    if (path / SPEC_FILE).is_file():
        return [path]
    if not path.is_dir():
        raise CopmlError(f"{path}: no such folder")
    found = sorted(p for p in path.iterdir() if (p / SPEC_FILE).is_file())
    if not found:
        raise CopmlError(f"{path}: neither a project ({SPEC_FILE}) nor a folder of projects")
    return found


def discover(paths: list[Path]) -> list[Shown]:
    """Load every project named or contained in ``paths``; each gets a unique slug."""
    roots: list[Path] = []
    for path in paths:
        for root in _roots(path.resolve()):
            if root not in roots:
                roots.append(root)
    shown: list[Shown] = []
    taken: set[str] = set()
    for root in roots:
        project = load_project(root)
        project.ensure_home()
        base = re.sub(r"[^a-z0-9-]+", "-", project.spec.project.lower()).strip("-") or "project"
        slug, n = base, 1
        while slug in taken:
            n += 1
            slug = f"{base}-{n}"
        taken.add(slug)
        engine = open_store(project.db_url)
        shown.append(Shown(slug, project, engine, keys.Verifier(engine)))
    return shown
