"""The churn reference application end to end on simulated months."""

import io
import json
import math
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import Engine

from copml import aliases, events, evidence, incidents, keys, registry, times
from copml.apps.churn.demo import run_churn_demo
from copml.monitor.window import history
from copml.project import load_project
from copml.store import open_store


def _run(folder: Path, **options: object) -> tuple[Path, str]:
    out = io.StringIO()
    report = run_churn_demo(folder, seed=7, console=Console(file=out, width=160), **options)
    return report, out.getvalue()


def test_decay_is_detected_and_a_gated_retrain_recovers(tmp_path: Path) -> None:
    report, text = _run(tmp_path / "demo", months=9, shift_month=5)
    project = load_project(tmp_path / "demo")
    windows = history(project)
    assert len(windows) == 9
    before, shifted = windows[:5], windows[5:7]
    assert all(w.metrics["accuracy"] >= 0.75 for w in before)
    assert all(w.metrics["accuracy"] < 0.75 for w in shifted)  # decay is visible
    assert all(w.n_labelled == w.n_predictions == 4000 for w in windows)
    assert not any(math.isnan(w.metrics["drift"]) for w in windows)
    assert all(w.metrics["cost"] > 0 for w in windows)  # compute, reviews and the fixed cost
    engine = open_store(project.db_url)
    promoted = [
        e for e in events.history(engine, kind="model.promoted") if e["actor"] != "user:demo"
    ]
    assert promoted and promoted[0]["actor"] == "policy:retrain-on-decay"
    assert events.history(engine, kind="model.validated")  # the promotion went through the gate
    new = registry.champion(project)
    assert new is not None and new.version != "1"
    recovered = [w for w in windows if w.model_version == new.version]
    assert recovered and all(w.metrics["accuracy"] >= 0.74 for w in recovered)
    assert "month by month" in text and "2026-06 *" in text and "retrain→v2" in text
    html = report.read_text()
    assert html.count("<img") >= 5 and "market shift" in html and "promoted" in html


def test_a_retrained_challenger_goes_shadow_then_canary_then_champion(tmp_path: Path) -> None:
    """The canary scenario: after the shift the retrained, gated challenger runs a month in
    shadow, then answers a fifth of customers, and the live comparison promotes it."""
    from copml import rollout

    report, _ = _run(tmp_path / "demo", months=9, shift_month=4, scenario="canary")
    project = load_project(tmp_path / "demo")
    engine = open_store(project.db_url)
    windows = history(project)
    changes = list(reversed(events.history(engine, kind=events.Kind.MODEL_ROLLOUT)))
    states = [rollout.Rollout.from_evidence(e["evidence"]) for e in changes]
    version = states[0].shadow
    assert version is not None and changes[0]["actor"] == "policy:retrain-into-shadow"
    assert states[1] == rollout.Rollout(None, version, 0.2)
    assert changes[1]["actor"] == "policy:canary-after-shadow"
    assert states[-1] == rollout.Rollout()  # the promotion ended the canary
    shadowed = next(w for w in windows if w.metrics.get("shadow.predictions", 0) > 0)
    canaried = next(w for w in windows if w.metrics.get("canary.predictions", 0) > 0)
    assert shadowed.end == canaried.start  # a month in shadow, then the canary
    assert shadowed.metrics["shadow.accuracy"] >= shadowed.metrics["champion.accuracy"]
    assert 0.15 < canaried.metrics["canary.predictions"] / canaried.n_predictions < 0.25
    assert canaried.metrics["canary.accuracy"] >= canaried.metrics["champion.accuracy"] - 0.01
    promoted = events.history(engine, kind="model.promoted")[0]
    assert promoted["actor"] == "policy:promote-on-live" and "live" in promoted["reason"]
    champion = registry.champion(project)
    assert champion is not None and champion.version == version
    assert windows[-1].model_version == version and windows[-1].metrics["accuracy"] >= 0.74
    assert report.read_text().count("<img") >= 5
    # Which version served when: the champion's and the canary's moves, replayable.
    moves = aliases.changes(project)
    champion_moves = [(c.version, c.previous) for c in moves if c.alias == "champion"]
    assert champion_moves == [("1", None), (version, "1")]
    promotion = [c for c in moves if c.alias == "champion"][-1]
    assert promotion.gate is not None and promotion.gate["live"] == "canary"
    assert promotion.actor == "policy:promote-on-live"
    canary = [c for c in moves if c.alias == "canary"]
    assert (canary[0].version, canary[0].share, canary[-1].version) == (version, 0.2, None)
    assert aliases.serving_at(project, promotion.at - timedelta(seconds=1)).champion == "1"
    assert aliases.serving_at(project, canary[0].at).canary == version
    now = aliases.serving_at(project)
    assert now.champion == version and now.canary is None and now.consistent


def test_a_challenger_worse_on_live_traffic_is_aborted_from_shadow(tmp_path: Path) -> None:
    """The canary-blip scenario: the shift lasts two months, the challenger retrained on
    them passes the gate on their holdout, but in shadow the market is back and it answers
    worse than the champion: the policy aborts it and alerts; the champion never changed."""
    from copml import rollout

    report, text = _run(tmp_path / "demo", months=8, shift_month=4, scenario="canary-blip")
    project = load_project(tmp_path / "demo")
    engine = open_store(project.db_url)
    windows = history(project)
    changes = list(reversed(events.history(engine, kind=events.Kind.MODEL_ROLLOUT)))
    states = [rollout.Rollout.from_evidence(e["evidence"]) for e in changes]
    actors = [e["actor"] for e in changes]
    assert actors == ["policy:retrain-into-shadow", "policy:abort-when-worse"]
    version = states[0].shadow
    assert version is not None and version != "1" and states[-1] == rollout.Rollout()
    shadowed = [w for w in windows if w.metrics.get("shadow.predictions", 0) > 0]
    assert len(shadowed) == 1 and shadowed[0].start == windows[6].start  # the market is back
    live = shadowed[0].metrics
    assert live["shadow.accuracy"] < live["champion.accuracy"] - 0.02
    assert all(w.metrics.get("canary.predictions", 0) == 0 for w in windows)
    assert registry.champion(project).version == "1"  # type: ignore[union-attr]
    assert all(w.model_version == "1" for w in windows)
    opened = events.history(engine, kind="alert.opened")
    assert any("abort-when-worse" in e["reason"] for e in opened)
    assert "abort" in text and "market back" in report.read_text()


def test_a_persistent_shift_escalates_to_a_webhook_and_flags_the_project(tmp_path: Path) -> None:
    _, text = _run(tmp_path / "demo", months=8, shift_month=4, scenario="persistent")
    project = load_project(tmp_path / "demo")
    engine = open_store(project.db_url)
    windows = history(project)
    assert all(w.metrics["accuracy"] <= 0.70 for w in windows[4:])
    assert registry.champion(project).version == "1"  # type: ignore[union-attr]
    assert events.history(engine, kind="model.refused")  # retrained challengers were no better
    opened = events.history(engine, kind="alert.opened")
    assert any(e["evidence"]["key"] == "policy:escalate" for e in opened)
    webhook = [d for e in opened for d in e["evidence"]["deliveries"] if d["channel"] == "webhook"]
    assert webhook and all(d["ok"] for d in webhook)  # the local receiver got them
    assert "webhook received 2 alert(s)" in text
    assert "project flagged for re-evaluation" in text
    assert events.history(engine, kind="project.reevaluate")


def _key_actor(engine: Engine, user: str) -> str:
    """How the server's events name a request made with ``user``'s key."""
    (key,) = [k for k in keys.listing(engine) if k.name == user.removeprefix("user:")]
    return f"key:{key.prefix}"


@pytest.mark.slow  # 6 to 9 minutes on 2 cores: make test-cluster (CI) runs it
def test_xray_demo_alerts_on_missed_pneumonia_and_an_approved_retrain_recovers(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch", reason="the x-ray demo needs the vision extra (torch)")
    from copml.apps.xray.demo import ACTOR, OPERATOR, SCIENTIST, run_xray_demo

    out = io.StringIO()
    run_xray_demo(tmp_path / "xray", weeks=5, shift_week=2, console=Console(file=out, width=160))
    project = load_project(tmp_path / "xray")
    windows = history(project)
    assert len(windows) == 5
    assert all(w.n_labelled == w.n_predictions == 96 for w in windows)  # all confirmed
    assert all(w.metrics["recall"] >= 0.9 for w in windows[:2])
    assert all(w.metrics["recall"] < 0.95 for w in windows[2:4])  # the new scanner
    assert all(w.metrics["drift"] > 0 for w in windows[2:])  # darker images are seen
    assert windows[-1].metrics["recall"] >= 0.95  # the retrained cascade recovers
    engine = open_store(project.db_url)
    alerts = events.history(engine, kind="alert.opened")
    assert any("missed-pneumonia" in a["reason"] for a in alerts)
    delivered = [d for a in alerts for d in a["evidence"]["deliveries"]]
    assert delivered and all(d["ok"] for d in delivered if d["channel"] == "webhook")
    # The scanner week's alert, with drifted images, leads the operator to halt: the next
    # week every image goes to a radiologist, and no policy acts; the data scientist
    # retrains by hand, and the operator resumes once v2 is promoted.
    halted = events.history(engine, kind="project.halted")
    resumed = events.history(engine, kind="project.resumed")
    assert len(halted) == len(resumed) == 1
    assert halted[0]["actor"] == resumed[0]["actor"] == _key_actor(engine, OPERATOR)
    assert times.utc(halted[0]["at"]) == windows[2].end
    assert times.utc(resumed[0]["at"]) == windows[3].end
    assert windows[3].metrics["review_rate"] == 1.0  # none cleared by the model
    assert all(w.metrics["review_rate"] < 1.0 for w in windows[:3] + windows[4:])
    retrained = [e for e in events.history(engine, kind="model.registered") if e["actor"] != ACTOR]
    assert [e["actor"] for e in retrained] == [SCIENTIST]
    promoted = times.utc(events.history(engine, kind="model.promoted", limit=1)[0]["at"])
    minute = timedelta(minutes=1)
    assert aliases.serving_at(project, promoted - minute).champion == "1"
    assert aliases.serving_at(project, promoted + minute).champion == "2"
    assert "champion v1; --at" in out.getvalue() and "champion v2" in out.getvalue()
    # The missed pneumonia is a serious incident, reported within its 15 days; the evidence
    # pack of the demo's weeks shows the halt, the incident and the alias moves.
    (incident,) = incidents.listed(project)
    assert (incident.severity, incident.state) == ("serious", "reported")
    assert incident.opened_at == windows[2].end and len(incident.predictions) == 1
    assert incident.deadline == incident.opened_at + timedelta(days=15)
    assert incident.reported_at is not None and incident.reported_at <= incident.deadline
    pack = tmp_path / "xray" / "evidence"
    assert evidence.verify(pack).ok
    assert "copml evidence verify: ok" in " ".join(out.getvalue().split())  # Rich may wrap
    found = json.loads((pack / "evidence.json").read_text(encoding="utf-8"))
    assert [h["kind"] for h in found["oversight"]["halts"]] == ["halt", "resume"]
    assert [i["id"] for i in found["incidents"]] == [incident.id]
    assert [m["version"] for m in found["alias_moves"] if m["alias"] == "champion"] == ["1", "2"]
    new = registry.champion(project)
    assert new is not None and new.version == "2"
    approvals = events.history(engine, kind="model.approved")
    assert {e["subject"].rsplit("/", 1)[1] for e in approvals} == {"1", "2"}
    assert all(e["actor"] == ACTOR for e in approvals)  # a person approved, not a policy
    assert windows[-1].model_version == "2"
    assert "promoted v2" in out.getvalue()  # the week's cell (the table may wrap it)
