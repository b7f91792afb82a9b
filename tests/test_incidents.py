"""Serious incidents (issue 17.3, EU AI Act Art. 73): the legal deadline per severity, the
50 % and 90 % alerts sent by the operations tick on its own (simulated) clock, once each
and never after the report, the CLI and the HTTP API, refusals that change nothing, and
the incidents in ``copml status`` and in a prediction's audit record."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from copml import audit, events, incidents, keys
from copml.cli import app
from copml.operate.runner import operate_once
from copml.project import Project
from copml.score import score
from copml.store import alerts, open_store
from store_state import assert_unchanged, capture
from test_operate import _Receiver, _spec
from test_serve import REALTIME, _copy, _instances, start

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
TICK = timedelta(microseconds=1)  # the smallest step of the store's clock


def _scored(project: Project, tmp_path: Path, n: int = 5) -> list[str]:
    """``n`` real predictions of the champion, by batch scoring; their ids."""
    source = tmp_path / "batch.csv"
    pd.DataFrame(_instances(project, n)).to_csv(source, index=False)
    score(project, source, tmp_path / "scored.csv")
    return list(pd.read_csv(tmp_path / "scored.csv")["prediction_id"])


@pytest.fixture
def receiver() -> Iterator[tuple[ThreadingHTTPServer, Any]]:
    """A webhook on loopback that answers 200 and keeps every body."""
    handler = type("Receiver", (_Receiver,), {"received": [], "failures": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("severity", "days", "half", "most"),
    [
        ("serious", 15, timedelta(days=7, hours=12), timedelta(days=13, hours=12)),
        ("death", 10, timedelta(days=5), timedelta(days=9)),
        ("widespread", 2, timedelta(days=1), timedelta(hours=43, minutes=12)),
    ],
)
def test_the_deadline_follows_the_severity(
    engine: Engine, severity: str, days: int, half: timedelta, most: timedelta
) -> None:
    found = incidents.open_incident(
        engine, severity=severity, predictions=[], reason="a patient was misrouted",
        actor="user:ops", at=T0,
    )  # fmt: skip
    assert found.deadline == T0 + timedelta(days=days) == incidents.deadline_for(severity, T0)
    assert (found.alert_at(50), found.alert_at(90)) == (T0 + half, T0 + most)
    assert found.state == "open" and found.time_left(T0 + half) == timedelta(days=days) - half
    again = incidents.get(engine, found.id)  # as stored, on either backend
    assert (again.opened_at, again.deadline) == (T0, T0 + timedelta(days=days))
    assert [(n.kind, n.actor) for n in again.history] == [("incident.opened", "user:ops")]


def test_listed_gives_the_incidents_open_during_a_period(engine: Engine) -> None:
    first = incidents.open_incident(
        engine, severity="serious", predictions=[], reason="a", actor="user:ops", at=T0
    )
    incidents.close(engine, first.id, reason="not serious", actor="user:ops", at=T0 + timedelta(3))
    second = incidents.open_incident(
        engine, severity="death", predictions=[], reason="b", actor="user:ops",
        at=T0 + timedelta(10),
    )  # fmt: skip
    ids = lambda found: [i.id for i in found]  # noqa: E731
    assert ids(incidents.listed(engine)) == [first.id, second.id]
    assert ids(incidents.listed(engine, since=T0 + timedelta(5))) == [second.id]
    assert ids(incidents.listed(engine, until=T0 + timedelta(1))) == [first.id]
    assert ids(incidents.listed(engine, since=T0 + timedelta(2), until=T0 + timedelta(11))) == [
        first.id,
        second.id,
    ]
    assert ids(incidents.listed(engine, since=T0 + timedelta(4), until=T0 + timedelta(9))) == []
    assert ids(incidents.in_force(engine)) == [second.id]


def _sent(handler: Any) -> list[tuple[str, str]]:
    """(key, severity) of every alert the webhook received."""
    return [(json.loads(b)["key"], json.loads(b)["severity"]) for _, _, b in handler.received]


def test_deadline_alerts_fire_at_50_and_90_percent_once_each_and_stop_when_reported(
    churn: Project, receiver: tuple[ThreadingHTTPServer, Any]
) -> None:
    server, handler = receiver
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    project = _spec(churn, "policies: []", alerts=f'{{webhook: "{url}", backoff_seconds: 0}}')
    serious = incidents.open_incident(
        project, severity="serious", predictions=[], reason="harm", actor="user:ops", at=T0
    )
    half, most = serious.alert_at(50), serious.alert_at(90)
    ticks = [
        (T0, []),
        (half - TICK, []),  # not a microsecond before
        (half, [(f"incident:{serious.id}:50%", "warning")]),
        (half, []),  # a second tick at the same time does not resend
        (half + timedelta(hours=1), []),
        (most - TICK, []),
        (most, [(f"incident:{serious.id}:90%", "critical")]),
        (most + timedelta(hours=6), []),
        (serious.deadline + timedelta(days=3), []),  # overdue: status says so, no more alerts
    ]
    for at, expected in ticks:
        before = len(handler.received)
        result = operate_once(project, at=at)
        assert [(a["incident"], a["threshold_percent"]) for a in result.incident_alerts] == [
            (serious.id, int(k.split(":")[-1][:-1])) for k, _ in expected
        ], at
        assert _sent(handler)[before:] == expected, at
    payload = json.loads(handler.received[1][2])
    assert payload["details"]["deadline"] == serious.deadline.isoformat()
    assert "report it by" in payload["title"]
    kinds = [n.kind for n in incidents.get(project, serious.id).history]
    assert kinds == ["incident.opened", "incident.alerted", "incident.alerted"]

    # Reported after its 50 % alert: the open alert closes, and 90 % sends nothing.
    death = incidents.open_incident(
        project, severity="death", predictions=[], reason="a death", actor="user:ops", at=T0
    )
    operate_once(project, at=death.alert_at(50))
    assert _sent(handler)[-1] == (f"incident:{death.id}:50%", "warning")
    incidents.report(
        project, death.id, reference="MSA-2026-0042", actor="user:ops",
        at=death.alert_at(50) + timedelta(hours=1),
    )  # fmt: skip
    count = len(handler.received)
    assert operate_once(project, at=death.alert_at(90)).incident_alerts == []
    assert len(handler.received) == count
    with open_store(project.db_url).connect() as conn:
        row = conn.execute(
            select(alerts.c.closed_at).where(alerts.c.key == f"incident:{death.id}:50%")
        ).one()
    assert row.closed_at == death.alert_at(50) + timedelta(hours=1)

    # A tick that comes late, past 90 %, sends the 90 % alert alone; none before 50 %.
    late = incidents.open_incident(
        project, severity="widespread", predictions=[], reason="all of March", actor="user:ops",
        at=T0,
    )  # fmt: skip
    operate_once(project, at=late.alert_at(95))
    operate_once(project, at=late.alert_at(99))
    assert _sent(handler)[count:] == [(f"incident:{late.id}:90%", "critical")]


def test_cli_round_trip_status_and_audit(churn: Project, tmp_path: Path) -> None:
    ids = _scored(churn, tmp_path, 3)
    run = CliRunner().invoke
    root = ["--project", str(churn.root)]
    opened = run(app, ["incident", "open", *root, "--severity", "death", "--prediction", ids[0],
                       "--prediction", ids[1], "--reason", "a patient died", "--json"])  # fmt: skip
    assert opened.exit_code == 0, opened.output
    found = json.loads(opened.output)
    number = str(found["id"])
    assert found["predictions"] == ids[:2] and found["state"] == "open"
    opened_at = datetime.fromisoformat(found["opened_at"])
    assert datetime.fromisoformat(found["deadline"]) == opened_at + timedelta(days=10)

    shown = run(app, ["status", *root, "--json"])
    assert shown.exit_code == 0, shown.output
    (pending,) = json.loads(shown.output)["incidents"]
    assert pending["id"] == found["id"] and pending["severity"] == "death"
    assert 9 * 86400 < pending["seconds_left"] <= 10 * 86400
    text = run(app, ["status", *root])
    assert "incidents not closed" in text.output and "death" in text.output
    assert " 9 d 23 h" in text.output or "10 d 0 h" in text.output  # the time left

    noted = run(app, ["incident", "update", number, *root, "--note", "hospital informed"])
    assert noted.exit_code == 0 and "noted" in noted.output
    reported = run(app, ["incident", "report", number, *root, "--reference", "MSA-7"])
    assert reported.exit_code == 0 and "within its deadline" in reported.output
    twice = run(app, ["incident", "report", number, *root, "--reference", "MSA-8"])
    assert twice.exit_code == 1 and "reported already" in twice.output
    closed = run(app, ["incident", "close", number, *root, "--reason", "corrective action done"])
    assert closed.exit_code == 0, closed.output
    after = run(app, ["incident", "report", number, *root, "--reference", "MSA-9"])
    assert after.exit_code == 1 and "is closed" in after.output

    listed = json.loads(run(app, ["incident", "list", *root, "--json"]).output)["incidents"]
    (done,) = listed
    assert (done["state"], done["reference"]) == ("closed", "MSA-7")
    assert [h["kind"] for h in done["history"]] == [
        "incident.opened", "incident.updated", "incident.reported", "incident.closed",
    ]  # fmt: skip
    assert {h["actor"] for h in done["history"]} == {events.user_actor()}
    assert done["history"][1]["reason"] == "hospital informed"
    assert json.loads(run(app, ["status", *root, "--json"]).output)["incidents"] == []
    table = run(app, ["incident", "list", *root])
    assert "MSA-7" in table.output and "closed" in table.output

    record = audit.record(churn, ids[0], explanation=False)
    assert [i["id"] for i in record["incidents"]] == [found["id"]]
    assert record["incidents"][0]["state"] == "closed"
    assert audit.record(churn, ids[2], explanation=False)["incidents"] == []


def test_refusals_name_the_field_and_change_nothing(churn: Project, tmp_path: Path) -> None:
    ids = _scored(churn, tmp_path, 2)
    never = ids[0][:16] + "ffffffff"  # a real batch, a row it does not have
    state = capture(churn)
    for given, field_name in [
        ({"severity": "bad"}, "severity"),
        ({"predictions": [ids[0], never]}, "predictions"),
        ({"predictions": ["not-an-id"]}, "predictions"),
        ({"reason": "   "}, "reason"),
        ({"reason": "x" * 2001}, "reason"),
    ]:
        kwargs: dict[str, Any] = {"severity": "serious", "predictions": ids, "reason": "r"}
        with pytest.raises(incidents.Refused, match=f"^{field_name}: ") as refused:
            incidents.open_incident(churn, actor="user:ops", **{**kwargs, **given})
        assert refused.value.field == field_name
    with pytest.raises(incidents.Refused) as refused:
        incidents.open_incident(churn, severity="serious", predictions=[ids[0], "<x>", never],
                                reason="r", actor="user:ops")  # fmt: skip
    assert str(refused.value) == (
        f"predictions: no prediction {never}; item 1 is not a prediction id (24 lower-case "
        "hexadecimal characters)"
    )  # the text a client sent is never echoed, only its position
    run = CliRunner().invoke
    root = ["--project", str(churn.root)]
    for args, says in [
        (["--severity", "fatal", "--reason", "r"], "severity: must be one of serious, death"),
        (["--severity", "serious", "--reason", "r", "--prediction", never], f"prediction {never}"),
        (["--severity", "serious", "--reason", " "], "reason: must not be empty"),
    ]:  # fmt: skip
        answer = run(app, ["incident", "open", *root, *args])
        assert answer.exit_code == 1 and says in answer.output, answer.output
    assert_unchanged(state, churn)

    found = incidents.open_incident(
        churn, severity="serious", predictions=ids, reason="r", actor="user:ops"
    )
    incidents.close(churn, found.id, reason="not serious after all", actor="user:ops")
    state = capture(churn)
    refusals = [
        (lambda: incidents.report(churn, found.id, reference="R", actor="u"), incidents.Conflict),
        (lambda: incidents.update(churn, found.id, note="n", actor="u"), incidents.Conflict),
        (lambda: incidents.close(churn, found.id, reason="again", actor="u"), incidents.Conflict),
        (lambda: incidents.report(churn, 99, reference="R", actor="u"), incidents.UnknownIncident),
        (lambda: incidents.report(churn, found.id, reference=" ", actor="u"), incidents.Refused),
    ]
    for call, error in refusals:
        with pytest.raises(error):
            call()
    answer = run(app, ["incident", "report", str(found.id), *root, "--reference", "R"])
    assert answer.exit_code == 1 and f"incident {found.id} is closed" in answer.output
    missing = run(app, ["incident", "close", "99", *root, "--reason", "r"])
    assert missing.exit_code == 1 and "no incident 99" in missing.output
    assert_unchanged(state, churn)


def test_the_http_api_follows_the_roles_and_names_the_field(
    trained_churn: Path, tmp_path: Path
) -> None:
    project = _copy(trained_churn, tmp_path, REALTIME)
    server = start(project)
    try:
        operator = {
            "Authorization": f"Bearer {keys.create(open_store(project.db_url), 'operator')}"
        }
        asked = httpx.post(f"{server.url}/v1/predict", json={"instances": _instances(project, 2)},
                           headers=server.headers("service"), timeout=60)  # fmt: skip
        assert asked.status_code == 200, asked.text
        ids = [p["prediction_id"] for p in asked.json()["predictions"]]
        url = f"{server.url}/v1/incidents"
        body = {"severity": "serious", "predictions": ids, "reason": "wrong triage"}
        state = capture(project)
        assert httpx.post(url, json=body, headers=server.headers("viewer")).status_code == 403
        assert httpx.get(url, headers=server.headers("viewer")).status_code == 403
        assert httpx.post(url, json=body).status_code == 401
        for change, field_name in [
            ({"severity": "minor"}, "severity"),
            ({"predictions": [ids[0][:16] + "ffffffff"]}, "predictions"),
            ({"reason": "  "}, "reason"),
            ({"reason": ""}, "reason"),
        ]:
            refused = httpx.post(url, json={**body, **change}, headers=operator)
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"][0]["loc"] == ["body", field_name]
        assert_unchanged(state, project)

        opened = httpx.post(url, json=body, headers=operator)
        assert opened.status_code == 201, opened.text
        found = opened.json()
        assert found["predictions"] == ids and found["actor"].startswith("key:")
        assert 14 * 86400 < found["seconds_left"] <= 15 * 86400
        one = f"{url}/{found['id']}"
        noted = httpx.post(f"{one}/update", json={"note": "more cases"}, headers=operator)
        assert noted.status_code == 200 and noted.json()["history"][-1]["reason"] == "more cases"
        reported = httpx.post(f"{one}/report", json={"reference": "MSA-1"}, headers=operator)
        assert reported.status_code == 200 and reported.json()["state"] == "reported"
        assert reported.json()["seconds_left"] is None
        viewer = httpx.post(f"{one}/close", json={"reason": "x"}, headers=server.headers("viewer"))
        assert viewer.status_code == 403
        closed = httpx.post(f"{one}/close", json={"reason": "fixed"}, headers=operator)
        assert closed.status_code == 200 and closed.json()["state"] == "closed"
        state = capture(project)
        late = httpx.post(f"{one}/report", json={"reference": "MSA-2"}, headers=operator)
        assert late.status_code == 409 and "closed" in late.json()["detail"]
        gone = httpx.post(f"{url}/999/close", json={"reason": "x"}, headers=operator)
        assert gone.status_code == 404 and "no incident 999" in gone.json()["detail"]
        assert (
            httpx.post(f"{url}/0/close", json={"reason": "x"}, headers=operator).status_code == 422
        )
        assert_unchanged(state, project)

        for who in (operator, server.headers("auditor")):
            listed = httpx.get(url, headers=who)
            assert listed.status_code == 200
            (shown,) = listed.json()["incidents"]
            assert (shown["id"], shown["state"], shown["reference"]) == (
                found["id"],
                "closed",
                "MSA-1",
            )
        bad = httpx.get(url, params={"since": "yesterday"}, headers=operator)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "since"]
        decision = httpx.get(
            f"{server.url}/v1/predictions/{ids[0]}", headers=server.headers("auditor")
        )
        assert [i["id"] for i in decision.json()["incidents"]] == [found["id"]]
    finally:
        server.kill()
    kinds = [
        e["kind"]
        for e in events.history(open_store(project.db_url), subject=f"incident:{found['id']}")
    ]
    assert kinds == ["incident.closed", "incident.reported", "incident.updated", "incident.opened"]
