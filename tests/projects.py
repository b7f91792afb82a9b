"""Projects in the states tests start from: data frozen, a first version trained."""

from __future__ import annotations

from copml import snapshots
from copml.project import Project
from copml.store import open_store
from copml.train import train


def freeze(project: Project, db_url: str | None = None) -> snapshots.Snapshot:
    """Snapshot the project's declared data into its store (or ``db_url``'s), as
    ``copml snapshot`` does."""
    project.ensure_home()
    return snapshots.create(
        open_store(db_url or project.db_url),
        project.spec.data,
        root=project.root,
        directory=project.snapshots_dir,
    )


def trained(project: Project) -> Project:
    """The project with its data frozen and v1 trained and champion."""
    freeze(project)
    result = train(project)
    assert result.champion, result.failures
    return project
