"""Two ``copml operate`` processes on one PostgreSQL store (issue 14 item 4): a decay window
is acted on once (one retrain run, one action of each kind), and the work of a leader killed
mid-pass is finished by the other operator's next pass.

The retraining's ``train()`` reports to a socket of the test and waits there, so the test
knows the leader is mid-pass without timing anything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from batches import month
from copml import events, registry, snapshots
from copml.feedback import load
from copml.operate import leadership
from copml.project import Project, load_project
from copml.score import score
from copml.store import metric_windows, open_store
from test_operate import SLOW_TRAIN, _actions, _spec

pytestmark = pytest.mark.cluster

AT = "2026-03-15T12:00:00+00:00"  # inside the March window that holds the decayed batch
DEADLINE = 120.0
DECAY = """
policies:
  - name: retrain-on-decay
    when: accuracy < 0.75
    do: [retrain, validate, promote, redeploy]
    cooldown: 1 window
"""


@pytest.fixture
def decayed(
    trained_churn: Path, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> Project:
    """A churn project on PostgreSQL with a champion and a March whose outcomes all went the
    other way (accuracy far under 0.75); its retraining ``train()`` waits for the test."""
    monkeypatch.setenv("COPML_DB_URL", pg_url)
    shutil.copytree(trained_churn, tmp_path / "churn")  # its champion, in its MLflow store
    # Retraining learns from the source alone, so the new version passes the gate.
    project = _spec(
        load_project(tmp_path / "churn"),
        DECAY,
        retraining="{include_production: false, include_source: true, lookback: 2 month}",
    )
    # The champion's training snapshot, frozen again in the PostgreSQL store (same content,
    # same id).
    engine = open_store(project.db_url)
    snapshots.create(engine, project.spec.data, root=project.root, directory=project.snapshots_dir)
    batch, outcome = month(project.root / "incoming")
    score(project, batch, project.root / "scores.csv", at=datetime(2026, 3, 2, tzinfo=UTC))
    flipped = outcome.assign(Churn=outcome["Churn"].map({"Yes": "No", "No": "Yes"}))
    flipped.to_csv(project.root / "truth.csv", index=False)
    load(project, project.root / "truth.csv", at=datetime(2026, 3, 31, tzinfo=UTC))
    return project


@pytest.fixture
def operators() -> Iterator[list[subprocess.Popen[str]]]:
    """The ``copml operate`` processes a test starts; every one is killed at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def _operate(project: Project) -> list[str]:
    command = ["operate", "--once", "--json", "--project", str(project.root), "--at", AT]
    return [sys.executable, "-m", "copml", *command]


def _start(project: Project, started: list[subprocess.Popen[str]]) -> None:
    for _ in range(2):
        started.append(
            subprocess.Popen(
                _operate(project),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )


def _slow(project: Project) -> tuple[socket.socket, str]:
    """The retraining's ``train()`` becomes one that reports and waits on a test socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(DEADLINE)
    (project.root / "slow.py").write_text(SLOW_TRAIN.format(port=listener.getsockname()[1]))
    spec = project.root / "copml.yaml"
    original = spec.read_text()
    spec.write_text(original.replace("train: churn:train", "train: slow:train"))
    return listener, original


def _first_to_exit(started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """The process that ends first (the other is held inside ``train()``)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for process in started:
            if process.poll() is not None:
                return process
        time.sleep(0.05)
    raise AssertionError("neither operator finished its pass")


def _summary(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, err
    return dict(json.loads(out))


def _states(project: Project) -> list[tuple[str, str, int]]:
    return [(a["kind"], a["state"], a["attempt"]) for a in _actions(project)]


def _runs(project: Project) -> list[Any]:
    client = registry.client(project)
    experiment = client.get_experiment_by_name(project.spec.project)
    return list(client.search_runs([experiment.experiment_id]))


def _tagged(runs: list[Any], action_id: int) -> list[str]:
    return [r.info.status for r in runs if r.data.tags.get("copml.action") == str(action_id)]


def test_two_operators_act_once_on_a_decay_window(
    decayed: Project, operators: list[subprocess.Popen[str]]
) -> None:
    listener, _ = _slow(decayed)
    _start(decayed, operators)
    held, _ = listener.accept()  # one operator is retraining now, in the middle of its pass
    assert held.recv(8) == b"training"
    follower = _first_to_exit(operators)
    skipped = _summary(follower)
    # It stood aside while the other led this pass: it ran no step of the chain.
    assert skipped["actions"] == [], skipped["actions"]
    assert skipped["led"] is False and skipped["evaluations"] == []
    held.sendall(b"go")  # let the leader's train() finish
    leader = next(p for p in operators if p is not follower)
    led = _summary(leader)
    held.close()
    listener.close()
    assert led["led"] is True
    assert [(a["kind"], a["state"]) for a in led["actions"]] == [
        (kind, "succeeded") for kind in ("retrain", "validate", "promote", "redeploy")
    ], led["actions"]
    # Once: one action of each kind, one retrain run, one policy firing, one window.
    project = load_project(decayed.root)
    assert _states(project) == [
        (kind, "succeeded", 1) for kind in ("retrain", "validate", "promote", "redeploy")
    ]
    retrain = _actions(project)[0]
    runs = _runs(project)
    assert len(runs) == 2  # the first champion's training and the one retrain
    assert _tagged(runs, retrain["id"]) == ["FINISHED"]
    assert registry.champion(project).version == retrain["result"]["version"] == "2"  # type: ignore[union-attr]
    engine = open_store(project.db_url)
    assert len(events.history(engine, kind="policy.fired")) == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(metric_windows)).scalar() == 1


def _lead_free(project: Project) -> None:
    """Wait until no process holds the store's operator lock (a killed leader's session
    ends when PostgreSQL sees its connection close)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with leadership.lead(project) as lead:
            if lead is not None:
                return
        time.sleep(0.05)
    raise AssertionError("the killed leader's lock was never released")


def test_a_killed_leaders_pass_is_finished_by_the_other_operator(
    decayed: Project, operators: list[subprocess.Popen[str]]
) -> None:
    listener, original = _slow(decayed)
    _start(decayed, operators)
    held, _ = listener.accept()
    assert held.recv(8) == b"training"
    follower = _first_to_exit(operators)
    skipped = _summary(follower)
    assert skipped["actions"] == [] and skipped["led"] is False, skipped["actions"]
    leader = next(p for p in operators if p is not follower)
    os.killpg(leader.pid, signal.SIGKILL)  # killed in the middle of its retraining
    leader.wait()
    held.close()
    listener.close()
    project = load_project(decayed.root)
    interrupted = _actions(project)
    assert [(a["kind"], a["state"]) for a in interrupted] == [
        ("retrain", "running"),
        ("validate", "pending"),
        ("promote", "pending"),
        ("redeploy", "pending"),
    ]
    assert interrupted[0]["owner"].endswith(f":{leader.pid}")
    (project.root / "copml.yaml").write_text(original)  # the next train() finishes
    _lead_free(project)
    # The other operator's next pass takes the lead and finishes the killed leader's work.
    again = subprocess.Popen(
        _operate(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    operators.append(again)
    taken = _summary(again)
    assert taken["led"] is True and taken["recovered"] == [interrupted[0]["id"]]
    assert [(a["kind"], a["state"]) for a in taken["actions"]] == [
        (kind, "succeeded") for kind in ("retrain", "validate", "promote", "redeploy")
    ], taken["actions"]
    assert _states(project) == [
        ("retrain", "failed", 1),
        ("validate", "succeeded", 1),
        ("promote", "succeeded", 1),
        ("redeploy", "succeeded", 1),
        ("retrain", "succeeded", 2),
    ]
    retry = _actions(project)[-1]
    runs = _runs(project)
    assert _tagged(runs, interrupted[0]["id"]) == ["FAILED"]  # the killed run is closed
    assert _tagged(runs, retry["id"]) == ["FINISHED"]
    assert registry.champion(project).version == retry["result"]["version"]  # type: ignore[union-attr]
    assert len(events.history(open_store(project.db_url), kind="policy.fired")) == 1
