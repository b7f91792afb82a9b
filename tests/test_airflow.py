"""``copml export airflow``: the DAG text, and the DAG as a real Apache Airflow loads it.

Airflow lives in its own virtualenv (``make airflow-venv``) because its pins clash with
copml's; the load check runs there in a subprocess.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from copml.operate.airflow import dag_source, default_command, export
from copml.project import Project, load_project
from copml.spec import Serving

AIRFLOW_PYTHON = Path(__file__).resolve().parents[1] / ".airflow-venv" / "bin" / "python"

BATCH = 'serving: {mode: batch, schedule: "0 6 1 * *"}'
REALTIME = 'serving: {mode: realtime, schedule: "*/15 * * * *"}'

# Runs inside the Airflow virtualenv: load the folder, render each command for one run date.
CHECK = """
import json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
out = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    context = {"ds": "2026-11-01", "params": {k: dag.params[k] for k in dag.params}}
    env = dag.get_template_env()
    out["dags"][dag_id] = {
        "tasks": [t.task_id for t in dag.topological_sort()],
        "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
        "schedule": dag.timetable.expression,
        "commands": {t.task_id: t.bash_command for t in dag.tasks},
        "rendered": {
            t.task_id: t.render_template(t.bash_command, context, jinja_env=env)
            for t in dag.tasks
        },
    }
with open(sys.argv[2], "w") as fh:
    json.dump(out, fh)
"""


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    """The Airflow virtualenv's interpreter (session-scoped so a skip comes before training)."""
    if not AIRFLOW_PYTHON.exists():
        reason = (
            f"Apache Airflow not installed: {AIRFLOW_PYTHON} is absent; run `make airflow-venv`"
        )
        if os.environ.get("COPML_REQUIRE_AIRFLOW"):
            pytest.fail(f"COPML_REQUIRE_AIRFLOW is set but {reason}")
        pytest.skip(reason)
    return AIRFLOW_PYTHON


def _load_in_airflow(python: Path, folder: Path, tmp_path: Path) -> dict[str, Any]:
    home = tmp_path / "airflow-home"
    home.mkdir()
    result_file = tmp_path / "dagbag.json"
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    proc = subprocess.run(
        [str(python), "-c", CHECK, str(folder), str(result_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(result_file.read_text())


def _only_dag(result: dict[str, Any]) -> dict[str, Any]:
    assert result["import_errors"] == {}
    assert list(result["dags"]) == ["copml_telco_churn"]
    return result["dags"]["copml_telco_churn"]


def _assert_commands(dag: dict[str, Any], project: Project) -> None:
    project_arg = f"--project {shlex.quote(str(project.root))}"
    for task_id, command in dag["commands"].items():
        assert command.startswith(default_command() + " "), task_id
        assert command.endswith(project_arg), task_id


def test_dag_source_compiles_and_carries_the_schedule(fresh_churn: Project) -> None:
    text = dag_source(fresh_churn)
    compile(text, "dag.py", "exec")
    assert "schedule='0 6 1 * *'" in text
    assert "dag_id='copml_telco_churn'" in text
    assert f"--project {shlex.quote(str(fresh_churn.root))}" in text


def test_dag_source_defaults_to_daily_and_quotes_paths(fresh_churn: Project) -> None:
    spec = fresh_churn.spec.model_copy(update={"serving": Serving(mode="realtime")})
    odd = Project(root=Path("/srv/it's here"), spec=spec)
    text = dag_source(odd, copml_command="uv run copml")
    compile(text, "dag.py", "exec")
    assert "schedule='@daily'" in text
    assert repr(f"uv run copml monitor --project {shlex.quote(str(odd.root))}") in text
    assert "snapshot" not in text and "params.input" not in text


def test_batch_dag_loads_in_airflow(
    airflow_python: Path, trained_churn: Path, tmp_path: Path
) -> None:
    project = load_project(trained_churn)
    path = export(project, tmp_path / "dags")
    assert path == tmp_path / "dags" / "copml_telco_churn.py"

    dag = _only_dag(_load_in_airflow(airflow_python, path.parent, tmp_path))

    assert dag["tasks"] == ["snapshot", "score", "monitor", "operate"]
    assert dag["upstream"] == {
        "snapshot": [],
        "score": ["snapshot"],
        "monitor": ["score"],
        "operate": ["monitor"],
    }
    assert dag["schedule"] == project.spec.serving.schedule == "0 6 1 * *"
    _assert_commands(dag, project)
    root = project.root
    assert f" score {root / 'data' / 'customers.csv'} --output " in dag["rendered"]["score"]
    assert f"--output {root / '.copml' / 'scores' / '2026-11-01.csv'} " in dag["rendered"]["score"]
    assert dag["rendered"]["operate"].endswith(f" operate --once --project {root}")


def test_realtime_dag_loads_in_airflow(
    airflow_python: Path, trained_churn: Path, tmp_path: Path
) -> None:
    root = tmp_path / "churn"
    shutil.copytree(trained_churn, root)
    spec_file = root / "copml.yaml"
    text = spec_file.read_text()
    assert BATCH in text
    spec_file.write_text(text.replace(BATCH, REALTIME))
    project = load_project(root)
    assert project.spec.serving.mode == "realtime"

    dag = _only_dag(
        _load_in_airflow(airflow_python, export(project, tmp_path / "dags").parent, tmp_path)
    )

    assert dag["tasks"] == ["monitor", "operate"]
    assert dag["upstream"] == {"monitor": [], "operate": ["monitor"]}
    assert dag["schedule"] == "*/15 * * * *"
    _assert_commands(dag, project)
