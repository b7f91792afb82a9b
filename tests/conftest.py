"""Shared fixtures: real MLflow stores, real SQLite/PostgreSQL databases, real files.

Expensive things (a trained churn project) are built once per test session and copied
for tests that change state.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from copml.project import Project, load_project
from copml.scaffold import init
from projects import trained

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Two test workers share the 2 cores of CI: every process of a test (and every server and
# command it starts, which inherit this) computes on one thread, so OpenMP threads never
# spin waiting for a busy core, and a torch training's arithmetic is the same everywhere.
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _no_inherited_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each project keeps its own state under its folder unless a test says otherwise."""
    for var in ("COPML_HOME", "COPML_DB_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def trained_churn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A churn project with one snapshot and a champion; copy it before changing it."""
    root = tmp_path_factory.mktemp("trained") / "churn"
    init(root, "churn")
    trained(load_project(root))
    return root


@pytest.fixture
def churn(trained_churn: Path, tmp_path: Path) -> Project:
    """A private copy of the trained churn project."""
    root = tmp_path / "churn"
    shutil.copytree(trained_churn, root)
    return load_project(root)


@pytest.fixture
def fresh_churn(tmp_path: Path) -> Project:
    """A new churn project: spec, code and data, no state yet."""
    root = tmp_path / "fresh"
    init(root, "churn")
    return load_project(root)


def _pg_url() -> str | None:
    url = os.environ.get("COPML_TEST_PG_URL")
    if not url and os.environ.get("COPML_REQUIRE_PG"):
        pytest.fail("COPML_REQUIRE_PG is set but COPML_TEST_PG_URL is not")
    return url


def _pg_schema() -> Iterator[str]:
    """A URL of a fresh schema on the test PostgreSQL server, dropped afterwards."""
    url = _pg_url()
    if not url:
        pytest.skip("PostgreSQL not available: set COPML_TEST_PG_URL (.ci/run does)")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in url else "?"
    yield f"{url}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A real, empty database of each kind: SQLite in a temp folder, a fresh PG schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'copml.db'}"
    else:
        yield from _pg_schema()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A real, empty PostgreSQL schema (skips without a server)."""
    yield from _pg_schema()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    from copml.store import open_store

    engine = open_store(db_url)
    yield engine
    engine.dispose()


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (see shared/data READMEs)")
    return path
