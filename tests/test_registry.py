"""The MLflow tracking store as copml creates and opens it (issue 12.21)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from copml.project import Project
from store_state import assert_unchanged, capture

COPML = [sys.executable, "-m", "copml"]


def _env() -> dict[str, str]:
    drop = ("COPML_HOME", "COPML_DB_URL", "MLFLOW_TRACKING_URI")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _tables(path: Path) -> set[str]:
    """The tables a reader sees in a SQLite file that another process may be writing."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.05) as conn:
            return {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    except sqlite3.Error:  # not created far enough yet, or locked by the writer this instant
        return set()


def _store_being_built(home: Path, wanted: int) -> Path | None:
    """The tracking store file (final or temporary) once it holds ``wanted`` tables."""
    for path in home.glob("*mlflow.db*"):
        if path.name.endswith(("-journal", "-wal", "-shm", ".lock")):
            continue
        if len(_tables(path)) >= wanted:
            return path
    return None


def _models_list(root: Path) -> subprocess.CompletedProcess[str]:
    """``copml models list --json`` in its own process: the first command to open MLflow."""
    return subprocess.run(
        [*COPML, "models", "list", "--json"],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_store_killed_while_first_created_leaves_the_project_usable(
    fresh_churn: Project, trained_churn: Path
) -> None:
    # MLflow creates a store by many migrations, each committed on its own: killed about
    # halfway, the store used to keep half of them and no later command could open it.
    complete = len(_tables(trained_churn / ".copml" / "mlflow.db"))
    assert complete > 20
    home = fresh_churn.home
    first = subprocess.Popen(
        [*COPML, "models", "list", "--json"],
        cwd=fresh_churn.root,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    partial = None
    while partial is None and first.poll() is None and time.monotonic() < deadline:
        partial = _store_being_built(home, complete * 11 // 20) if home.exists() else None
        time.sleep(0.002)  # poll interval, not synchronisation: the condition decides
    assert partial is not None, "the store was never seen half built"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert partial.exists()  # killed before the store was finished

    done = _models_list(fresh_churn.root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert len(_tables(home / "mlflow.db")) == complete
    assert not [p.name for p in home.iterdir() if ".tmp" in p.name]  # leftovers removed


def test_a_store_that_cannot_be_opened_is_one_clear_line(churn: Project) -> None:
    store = churn.home / "mlflow.db"
    store.write_bytes(b"not a database, " * 4096)
    before, content = capture(churn), store.read_bytes()
    done = _models_list(churn.root)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"MLflow tracking store {store} cannot be opened (file is not a database)" in lines[0]
    assert "move it aside and run the command again" in lines[0]
    assert store.read_bytes() == content
    assert_unchanged(before, churn)


def test_a_database_tracking_store_keeps_artifacts_under_copml_home(
    fresh_churn: Project, pg_url: str, tmp_path: Path, monkeypatch
) -> None:
    """MLflow on PostgreSQL without a server: the model lands under COPML_HOME, never in an
    ``mlruns`` folder of whatever folder the command ran in."""
    from copml import registry
    from projects import trained

    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    project = trained(fresh_churn)
    champion = registry.champion(project)
    assert champion is not None
    assert champion.source.startswith(project.artifacts_uri), champion.source
    assert not (elsewhere / "mlruns").exists()
    assert (registry.local_copy(project, champion) / "MLmodel").is_file()
