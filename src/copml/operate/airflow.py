"""``copml export airflow``: an Apache Airflow DAG that runs the project's CLI steps.

``copml operate`` is the embedded scheduler; production runs the same CLI steps from Apache
Airflow (design §9), so the DAG holds no logic of its own: each task is one ``copml`` command
on the project folder, on the spec's schedule.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from copml.project import Project

DEFAULT_SCHEDULE = "@daily"

_TEMPLATE = '''\
"""Airflow DAG for the copml project {name!r}, written by `copml export airflow`.

It runs the same CLI steps as copml's embedded scheduler on the schedule of copml.yaml.
Regenerate it after changing copml.yaml rather than editing it.
"""

from __future__ import annotations

import shlex
from datetime import datetime, timezone
from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param
from jinja2 import pass_context


@pass_context
def _shell_word(context: Any, value: str) -> str:
    """A param as one shell word, its own templates (such as {{{{ ds }}}}) rendered first."""
    rendered = context.environment.from_string(value).render(context.get_all())
    return shlex.quote(rendered)


with DAG(
    dag_id={dag_id!r},
    schedule={schedule!r},
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["copml"],
    params={{{params}}},
    user_defined_filters={{"shell_word": _shell_word}},
) as dag:
{tasks}
    {chain}
'''

_PARAM = """
        {key!r}: Param({default!r}, type="string", description={description!r}),"""

_TASK = """\
    {task_id} = BashOperator(
        task_id={task_id!r},
        bash_command={command!r},
    )
"""


def dag_id(project: Project) -> str:
    """``copml_<project name>``, with ``-`` made ``_`` so it is also a Python module name."""
    return f"copml_{project.spec.project.replace('-', '_')}"


def default_command() -> str:
    """The ``copml`` script beside this interpreter, or ``python -m copml``, shell-quoted."""
    python = os.path.abspath(sys.executable)
    script = Path(python).parent / "copml"
    if script.is_file():
        return shlex.quote(str(script))
    return shlex.join([python, "-m", "copml"])


def _steps(project: Project) -> list[tuple[str, str]]:
    """(task id, CLI arguments) in the order the embedded scheduler runs them."""
    steps = [("monitor", "monitor"), ("operate", "operate --once")]
    if project.spec.serving.mode == "batch":
        score = "score {{ params.input | shell_word }} --output {{ params.output | shell_word }}"
        steps = [("snapshot", "snapshot"), ("score", score), *steps]
    return steps


def _params(project: Project) -> dict[str, tuple[str, str]]:
    if project.spec.serving.mode != "batch":
        return {}
    source = project.spec.data.source
    if "://" not in source:  # a file or folder, not a SQLAlchemy URL
        source = str(project.root / source)
    output = str(project.root / ".copml" / "scores" / "{{ ds }}.csv")
    return {
        "input": (source, "File or folder to score."),
        "output": (output, "Where the scores go; {{ ds }} is the run's logical date."),
    }


def dag_source(project: Project, *, copml_command: str | None = None) -> str:
    """The text of a DAG file for ``project``.

    ``copml_command`` is a shell fragment that starts the CLI (e.g. ``uv run copml``); by
    default the ``copml`` script of the interpreter that exports the DAG.
    """
    command = copml_command or default_command()
    root = shlex.quote(str(project.root))
    steps = _steps(project)
    tasks = "\n".join(
        _TASK.format(task_id=task_id, command=f"{command} {args} --project {root}")
        for task_id, args in steps
    )
    params = "".join(
        _PARAM.format(key=key, default=default, description=description)
        for key, (default, description) in _params(project).items()
    )
    return _TEMPLATE.format(
        name=project.spec.project,
        dag_id=dag_id(project),
        schedule=project.spec.serving.schedule or DEFAULT_SCHEDULE,
        params=f"{params}\n    " if params else "",
        tasks=tasks,
        chain=" >> ".join(task_id for task_id, _ in steps),
    )


def export(project: Project, folder: Path) -> Path:
    """Write the DAG to ``<folder>/copml_<name>.py`` (creating the folder); return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dag_id(project)}.py"
    path.write_text(dag_source(project), encoding="utf-8")
    return path
