"""Fixtures for the dashboard's browser tests: a small demo project, keys for each role,
the real ``copml ui`` server in a subprocess, and Debian's Chromium for Playwright."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard import CHROMIUM, Site, running_ui

try:
    import pytest_playwright  # noqa: F401
except ImportError:  # test_ui.py skips (or fails, under COPML_REQUIRE_BROWSER=1) with why
    pass
else:

    @pytest.fixture(scope="session")
    def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
        """Debian's Chromium, never a browser downloaded by ``playwright install``."""
        return {
            **browser_type_launch_args,
            "executable_path": CHROMIUM,
            "headless": True,
            "args": [
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        }


def _open_reviews(root: Path, n: int = 60) -> None:
    """A review band and a few customers through ``POST /v1/predict`` (the last one unlike
    the training data): the churn demo scores in batch, which opens no human reviews."""
    import pandas as pd
    from fastapi.testclient import TestClient

    from copml import keys
    from copml.project import load_project
    from copml.serve.app import create_app
    from copml.store import open_store

    spec = root / "copml.yaml"
    spec.write_text(
        re.sub(r"serving: \{(.*?)\}", r"serving: {\1, review_band: [0.3, 0.7]}", spec.read_text())
    )
    project = load_project(root)
    key = keys.create(open_store(project.db_url), "service", name="feeder")
    rows = pd.read_csv(sorted((root / "batches").glob("*.csv"))[-1]).head(n)
    rows["TotalCharges"] = pd.to_numeric(rows["TotalCharges"], errors="coerce")
    instances = json.loads(rows.drop(columns=["Churn"], errors="ignore").to_json(orient="records"))
    instances[-1]["MonthlyCharges"] = 10_000.0  # unlike any trained on: out of distribution
    with TestClient(create_app(project, poll_seconds=0, heartbeat_seconds=0)) as client:
        answer = client.post(
            "/v1/predict", json={"instances": instances}, headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 200, answer.text
        assert any(p["review"] for p in answer.json()["predictions"])


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Four simulated months (a shift in the third: a refused retrain, then a promotion),
    open review items, and one key per role."""
    from rich.console import Console

    from copml import keys
    from copml.apps.churn.demo import run_churn_demo
    from copml.project import load_project
    from copml.store import open_store

    for var in ("COPML_HOME", "COPML_DB_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    root = tmp_path_factory.mktemp("ui") / "churn"
    run_churn_demo(root, months=4, shift_month=2, seed=7, console=Console(file=io.StringIO()))
    _open_reviews(root)
    engine = open_store(load_project(root).db_url)
    names = {"viewer": "vera", "scientist": "sam", "operator": "olivia", "auditor": "arjun"}
    made = {role: keys.create(engine, role, name=name) for role, name in names.items()}
    made["service"] = keys.create(engine, "service", name="robot")
    return root, made


@pytest.fixture(scope="session")
def site(
    demo_project: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """``copml ui`` serving the demo project on a free loopback port."""
    root, made = demo_project
    log = tmp_path_factory.mktemp("ui-log") / "stderr.txt"
    with running_ui(root, log) as base:
        yield Site(root, base, "telco-churn", made)
