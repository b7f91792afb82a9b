"""Continuous operations: policies over stored windows, actions as state machines, the
lifecycle gate, alerts to a real local receiver, recovery after a killed process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import select

from copml import events, registry
from copml.errors import CopmlError
from copml.monitor.window import Window, store
from copml.operate import lifecycle
from copml.operate.reevaluation import acknowledge
from copml.operate.runner import operate_once
from copml.project import Project, load_project
from copml.store import actions, alerts, open_store, policy_evaluations

JAN, FEB, MAR, APR = (datetime(2026, m, 1, tzinfo=UTC) for m in (2, 3, 4, 5))


def _spec(project: Project, policies: str, **extra: str) -> Project:
    """The project with its ``policies`` section (and any top-level keys) replaced."""
    path = project.root / "copml.yaml"
    text = path.read_text()
    start, end = text.index("policies:"), text.index("costs:")
    text = text[:start] + policies.strip() + "\n\n" + text[end:]
    for key, value in extra.items():
        lines = [line for line in text.splitlines() if not line.startswith(f"{key}:")]
        text = "\n".join(lines) + f"\n{key}: {value}\n"
    path.write_text(text)
    return load_project(project.root)


def _window(project: Project, end: datetime, **metrics: float) -> None:
    """A stored metric window with the given figures (others unknown)."""
    start = datetime(end.year, end.month - 1, 1, tzinfo=UTC) if end.month > 1 else end
    store(project, Window(start, end, "1", 100, 100, dict(metrics), {}))


def _actions(project: Project) -> list[dict[str, Any]]:
    with open_store(project.db_url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(actions).order_by(actions.c.id))]


def _kinds(project: Project, kind: str) -> list[dict[str, Any]]:
    return events.history(open_store(project.db_url), kind=kind)


CHAIN = """
policies:
  - name: retrain-on-decay
    when: accuracy < 0.75
    do: [retrain, validate, promote, redeploy]
"""


def test_a_decay_retrains_gates_promotes_and_redeploys(churn: Project) -> None:
    project = _spec(churn, CHAIN)
    _window(project, JAN, accuracy=0.70)
    result = operate_once(project, at=JAN)
    assert [e.outcome for e in result.evaluations] == [True]
    done = {a["kind"]: a for a in _actions(project)}
    assert [a["state"] for a in done.values()] == ["succeeded"] * 4, [
        a["error"] for a in done.values()
    ]
    version = done["retrain"]["result"]["version"]
    assert registry.champion(project).version == version == "2"  # type: ignore[union-attr]
    assert done["validate"]["result"]["passed"] is True
    assert done["retrain"]["evidence"]["values"] == {"accuracy": [0.70]}  # what decided it
    with open_store(project.db_url).connect() as conn:
        evaluated = conn.execute(select(policy_evaluations)).all()
    assert evaluated[0].outcome == "true"
    assert evaluated[0]._mapping["values"] == {"accuracy": [0.70]}
    assert _kinds(project, "model.redeployed")[0]["subject"].endswith("/2")
    # Evaluating the same window again never acts twice.
    operate_once(project, at=JAN)
    assert len(_actions(project)) == 4


def test_a_missing_figure_is_unknown_and_does_not_act(churn: Project) -> None:
    project = _spec(churn, CHAIN)
    _window(project, JAN)  # no accuracy: no labelled data yet
    result = operate_once(project, at=JAN)
    assert [e.outcome for e in result.evaluations] == [None]
    assert _actions(project) == []


def test_a_worse_challenger_is_refused_with_its_evidence(churn: Project) -> None:
    from copml.train import train

    worse = train(churn, params={"C": 1e-5})  # so regularised that it ranks badly
    project = _spec(
        churn,
        """
policies:
  - name: try-challenger
    when: accuracy < 0.75
    do: [validate, promote]
""",
        promotion="{metric: roc_auc, min_gain: 0.0, require_approval: false}",
    )
    _window(project, JAN, accuracy=0.5)
    operate_once(project, at=JAN)
    validate, promote = _actions(project)
    assert validate["state"] == "failed" and "refused by the gate" in validate["error"]
    assert promote["state"] == "failed" and promote["error"] == "skipped: validate failed"
    assert registry.champion(project).version == "1"  # type: ignore[union-attr]
    refused = _kinds(project, "model.refused")[0]
    assert refused["subject"].endswith(f"/{worse.version}")
    evidence = refused["evidence"]
    assert evidence["candidate_metrics"]["roc_auc"] < evidence["champion_metrics"]["roc_auc"]
    assert evidence["rows"] > 0 and evidence["champion"] == "1"
    with pytest.raises(CopmlError, match="has not passed the gate"):
        lifecycle.promote(project, worse.version, actor="user:x", reason="try")


def test_high_impact_needs_a_recorded_approval(churn: Project) -> None:
    project = _spec(
        churn,
        """
policies:
  - name: retrain-on-decay
    when: accuracy < 0.75
    do: [retrain, validate, approve, promote]
""",
        impact="high",  # which needs oversight and approval declared
        oversight="{safe_state: review_all}",
        promotion="{metric: recall, min_gain: 0.0, require_approval: true}",
    )
    _window(project, JAN, accuracy=0.6)
    operate_once(project, at=JAN)
    states = {a["kind"]: a for a in _actions(project)}
    assert states["validate"]["state"] == "succeeded"
    assert states["approve"]["state"] == "failed" and "awaits" in states["approve"]["error"]
    assert states["promote"]["error"] == "skipped: approve failed"
    assert registry.champion(project).version == "1"  # type: ignore[union-attr]
    with pytest.raises(CopmlError, match="needs a recorded approval"):
        lifecycle.promote(project, "2", actor="user:ops", reason="now")
    with pytest.raises(CopmlError, match="human act"):
        lifecycle.approve(project, "2", actor="policy:x", reason="self-approval")
    lifecycle.approve(project, "2", actor="user:lead", reason="reviewed the gate report")
    lifecycle.promote(project, "2", actor="user:ops", reason="approved")
    assert registry.champion(project).version == "2"  # type: ignore[union-attr]
    assert _kinds(project, "alert.opened")[0]["reason"].startswith("v2 awaits approval")


def test_cooldown_keeps_a_policy_from_acting_again_too_soon(churn: Project) -> None:
    project = _spec(
        churn,
        """
policies:
  - name: nag
    when: accuracy < 0.75
    do: [review]
    cooldown: 2 windows
""",
    )
    acted = []
    for end in (JAN, FEB, MAR):
        _window(project, end, accuracy=0.5)
        acted.append(operate_once(project, at=end).evaluations[0].acted)
    assert acted == [True, False, True]
    with open_store(project.db_url).connect() as conn:
        notes = conn.execute(select(policy_evaluations.c.note)).scalars().all()
    assert notes[1].startswith("cooling down until 2026-04-01")


def test_for_n_windows_and_rollback(churn: Project) -> None:
    project = _spec(
        churn,
        """
policies:
  - name: retrain-on-decay
    when: accuracy < 0.75
    do: [retrain, promote]
    cooldown: 3 windows
  - name: undo
    when: accuracy < 0.6 for 2 windows
    do: [rollback]
""",
    )
    _window(project, JAN, accuracy=0.55)
    result = operate_once(project, at=JAN)
    assert [e.outcome for e in result.evaluations] == [True, None]  # one window of two
    assert registry.champion(project).version == "2"  # type: ignore[union-attr]
    _window(project, FEB, accuracy=0.5)
    result = operate_once(project, at=FEB)
    assert [(e.outcome, e.acted) for e in result.evaluations] == [(True, False), (True, True)]
    rollback = [a for a in _actions(project) if a["kind"] == "rollback"]
    assert rollback[0]["state"] == "succeeded" and rollback[0]["result"] == {"version": "1"}
    assert registry.champion(project).version == "1"  # type: ignore[union-attr]
    assert _kinds(project, "model.rolled_back")[0]["evidence"]["from"] == "2"


class _Receiver(BaseHTTPRequestHandler):
    """Fails the first ``failures`` POSTs with 503, then accepts; records what arrived."""

    failures = 2
    received: ClassVar[list[tuple[int, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        code = 503 if len(self.received) < self.failures else 200
        self.received.append((code, dict(self.headers), body))
        self.send_response(code)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Any:
    handler = type("Receiver", (_Receiver,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


ESCALATE = """
policies:
  - name: escalate
    when: accuracy <= 0.70 for 3 windows and churn_rate >= 0.10
    do: [alert, reevaluate]
  - name: retrain-on-decay
    when: accuracy < 0.6
    do: [retrain]
"""


def test_escalation_alerts_a_webhook_that_fails_twice_and_suspends_retraining(
    churn: Project, receiver: Any
) -> None:
    import hashlib
    import hmac

    from copml.operate.alerts import webhook_secret

    server, handler = receiver
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    project = _spec(churn, ESCALATE, alerts=f'{{webhook: "{url}", backoff_seconds: 0}}')
    for end in (JAN, FEB, MAR):
        _window(project, end, accuracy=0.65, churn_rate=0.2)
        result = operate_once(project, at=end)
    assert [e.outcome for e in result.evaluations] == [True, False]
    # The escalation alert after two failures; the re-evaluation alert at once.
    assert [code for code, _, _ in handler.received] == [503, 503, 200, 200]
    _, headers, body = handler.received[2]
    expected = "sha256=" + hmac.new(webhook_secret(project), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Copml-Signature"], expected)
    payload = json.loads(body)
    assert payload["key"] == "policy:escalate"
    assert payload["details"]["values"]["accuracy"] == [0.65, 0.65, 0.65]
    with open_store(project.db_url).connect() as conn:
        opened = conn.execute(select(alerts)).all()
    webhook = next(d for d in opened[0].deliveries if d["channel"] == "webhook")
    assert webhook["ok"] and webhook["attempts"] == 3
    # Re-evaluation flagged: the retrain policy holds but does not act until acknowledged.
    assert _kinds(project, "project.reevaluate")
    _window(project, APR, accuracy=0.55, churn_rate=0.2)
    result = operate_once(project, at=APR)
    retrain = next(e for e in result.evaluations if e.policy == "retrain-on-decay")
    assert retrain.outcome is True and not retrain.acted and "suspended" in retrain.note
    assert len(handler.received) == 4  # still open: not sent again
    acknowledge(project, actor="user:owner", reason="new market: re-scoping the project")
    store(project, Window(APR, datetime(2026, 6, 1, tzinfo=UTC), "1", 1, 1, {"accuracy": 0.55}, {}))
    result = operate_once(project, at=datetime(2026, 6, 1, tzinfo=UTC))
    assert next(e for e in result.evaluations if e.policy == "retrain-on-decay").acted


def test_alert_is_not_repeated_while_its_condition_holds(churn: Project, receiver: Any) -> None:
    server, handler = receiver
    handler.failures = 0
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    project = _spec(
        churn,
        """
policies:
  - name: watch
    when: accuracy < 0.75
    do: [alert]
""",
        alerts=f'{{webhook: "{url}", backoff_seconds: 0}}',
    )
    for end, accuracy in ((JAN, 0.5), (FEB, 0.5), (MAR, 0.9), (APR, 0.5)):
        _window(project, end, accuracy=accuracy)
        operate_once(project, at=end)
    assert len(handler.received) == 2  # opened in January, closed in March, reopened in April
    assert [a["result"].get("deduplicated", False) for a in _actions(project)] == [
        False,
        True,
        False,
    ]


def test_retirement_stops_serving_and_says_what_was_freed(churn: Project, tmp_path: Path) -> None:
    from batches import month
    from copml.score import score

    batch, _ = month(tmp_path / "in")
    score(churn, batch, tmp_path / "out.csv")  # makes a local copy of the model
    done = lifecycle.retire(churn, actor="user:owner", reason="product discontinued")
    assert done.versions == ["1"] and done.freed_bytes > 0
    assert registry.champion(churn) is None
    assert registry.get(churn, "1").tags["copml.state"] == "retired"
    with pytest.raises(CopmlError, match="no champion"):
        score(churn, batch, tmp_path / "again.csv")
    assert lifecycle.is_retired(churn)
    assert operate_once(churn).evaluations == []  # nothing is scheduled any more
    # The audit records stay.
    assert _kinds(churn, "batch.scored")


SLOW_TRAIN = """
import socket
from churn import train as _train, churn_rate  # noqa: F401

def train(data, params, seed):
    with socket.create_connection(("127.0.0.1", {port})) as s:
        s.sendall(b"training")
        s.recv(1)  # blocks: the test kills this process while it waits here
    return _train(data, params, seed)
"""


def test_a_retrain_killed_midway_is_recovered_on_the_next_run(churn: Project) -> None:
    project = _spec(
        churn,
        """
policies:
  - name: retrain-on-decay
    when: accuracy < 0.75
    do: [retrain, promote]
""",
    )
    _window(project, JAN, accuracy=0.6)
    listener = socket.create_server(("127.0.0.1", 0))
    (project.root / "slow.py").write_text(SLOW_TRAIN.format(port=listener.getsockname()[1]))
    spec_path = project.root / "copml.yaml"
    original = spec_path.read_text()
    spec_path.write_text(original.replace("train: churn:train", "train: slow:train"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COPML_", "MLFLOW_"))}
    run = (
        "import sys; from datetime import datetime, UTC; from copml.project import load_project;"
        "from copml.operate.runner import operate_once;"
        "operate_once(load_project(sys.argv[1]), at=datetime(2026, 2, 1, tzinfo=UTC))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", run, str(project.root)],
        env=env,
        start_new_session=True,
        stderr=subprocess.PIPE,
    )
    listener.settimeout(120)
    conn, _ = listener.accept()  # the retrain is inside train() now
    assert conn.recv(8) == b"training"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    conn.close()
    listener.close()
    first = _actions(project)
    assert [(a["kind"], a["state"]) for a in first] == [
        ("retrain", "running"),
        ("promote", "pending"),
    ]
    spec_path.write_text(original)  # the next run has a train() that finishes
    project = load_project(project.root)
    result = operate_once(project, at=JAN)
    assert result.recovered == [first[0]["id"]]
    rows = _actions(project)
    assert rows[0]["state"] == "failed" and rows[0]["error"].startswith("interrupted")
    retry = next(a for a in rows if a["kind"] == "retrain" and a["attempt"] == 2)
    assert retry["state"] == "succeeded", [(r["kind"], r["state"], r["error"]) for r in rows]
    assert next(a for a in rows if a["kind"] == "promote")["state"] == "succeeded"
    client = registry.client(project)
    runs = client.search_runs(
        [client.get_experiment_by_name(project.spec.project).experiment_id],
        filter_string=f"tags.`copml.action` = '{first[0]['id']}'",
    )
    assert [r.info.status for r in runs] == ["FAILED"]  # the killed run is closed, not left


def test_a_retired_model_stops_answering_in_servers(churn: Project) -> None:
    from copml.serve.champion import ChampionSlot

    engine = open_store(churn.db_url)
    slot = ChampionSlot(churn, engine)
    assert slot.refresh().model_version == "1"
    assert slot.refresh().swapped is False  # nothing changed: nothing happens
    lifecycle.retire(churn, actor="user:owner", reason="discontinued")
    assert slot.refresh().model_version is None and slot.current is None
    assert _kinds(churn, "serve.stopped")[0]["reason"] == "the model was retired"


def test_operate_once_runs_the_batch_the_window_and_the_policies(
    churn: Project, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from batches import month
    from copml.cli import app

    batch, _ = month(churn.root / "incoming")
    project = _spec(
        churn,
        """
policies:
  - name: watch-drift
    when: drift > 0.5
    do: [alert]
""",
    )
    spec = project.root / "copml.yaml"
    spec.write_text(
        spec.read_text().replace(
            'serving: {mode: batch, schedule: "0 6 1 * *"}',
            f'serving: {{mode: batch, schedule: "0 6 1 * *", input: incoming/{batch.name}}}',
        )
    )
    summaries = []
    for at in ("2026-03-02", "2026-04-02"):  # a month apart, as the schedule would run
        result = CliRunner().invoke(
            app, ["operate", "--once", "--project", str(project.root), "--at", at, "--json"]
        )
        assert result.exit_code == 0, result.output
        summaries.append(json.loads(result.output))
    assert all(s["steps"][0].startswith("scored 500 rows") for s in summaries)
    # Each run's window is the calendar month it runs in, holding the batch it has just
    # scored, from the same market as the training data (no drift).
    assert [s["steps"][1] for s in summaries] == [
        "window ending 2026-04-01 00:00: 500 predictions",
        "window ending 2026-05-01 00:00: 500 predictions",
    ]
    assert [s["evaluations"][0]["outcome"] for s in summaries] == [False, False]
    assert [s["evaluations"][0]["values"]["drift"] for s in summaries] == [[0.0], [0.0]]
    assert len(list((project.home / "scores").glob("*.csv"))) == 2
