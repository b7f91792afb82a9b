"""The dashboard's page work: several requests at once, each project on its own store."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

from copml import registry
from copml.model_card import build_card, render_html
from copml.project import Project
from copml.ui.projects import discover
from copml.ui.state import Dashboard

_DEADLINE_S = 120  # only a failing run waits this long


def test_two_projects_pages_are_worked_at_once(
    churn: Project, trained_churn: Path, tmp_path: Path
) -> None:
    """One project's page is still in its worker while another project's page is worked
    from start to end: page work is not serialised, and each reads its own MLflow store
    (the second project alone lost its champion)."""
    shutil.copytree(trained_churn, tmp_path / "other")
    board = Dashboard(discover([churn.root, tmp_path / "other"]))
    first, second = (s.project for s in board.shown)
    assert first.tracking_uri != second.tracking_uri
    registry.demote(second)
    started, finished = threading.Event(), threading.Event()

    def first_page() -> tuple[registry.ModelVersion | None, str]:
        registry.client(first)
        started.set()
        if not finished.wait(_DEADLINE_S):
            raise TimeoutError("the second page never ran while the first was in its worker")
        return registry.champion(first), render_html(build_card(first, "1"))

    def second_page() -> tuple[registry.ModelVersion | None, str]:
        if not started.wait(_DEADLINE_S):
            raise TimeoutError("the first page never started")
        found = registry.champion(second), render_html(build_card(second, "1"))
        finished.set()
        return found

    async def both() -> list[tuple[registry.ModelVersion | None, str]]:
        return list(await asyncio.gather(board.work(first_page), board.work(second_page)))

    (champion, card), (none, other_card) = asyncio.run(both())
    assert champion is not None and champion.version == "1"
    assert none is None
    assert "telco-churn" in card and "telco-churn" in other_card
