"""Which projects one dashboard shows, and the names they get in its URLs."""

from pathlib import Path

import pytest

from copml.errors import CopmlError
from copml.scaffold import init
from copml.ui.projects import discover


def test_a_folder_of_projects_is_every_project_in_it_each_with_its_own_slug(
    tmp_path: Path,
) -> None:
    init(tmp_path / "team" / "a", "churn")
    init(tmp_path / "team" / "b", "churn")
    (tmp_path / "team" / "notes").mkdir()  # not a project: passed over
    shown = discover([tmp_path / "team", tmp_path / "team" / "a"])  # "a" is not shown twice
    assert [s.project.root.name for s in shown] == ["a", "b"]
    assert [s.slug for s in shown] == ["telco-churn", "telco-churn-2"]
    assert all((s.project.home / "copml.db").exists() for s in shown)  # one store each


def test_a_folder_without_projects_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(CopmlError, match="neither a project"):
        discover([tmp_path])
    with pytest.raises(CopmlError, match="no such folder"):
        discover([tmp_path / "missing"])
