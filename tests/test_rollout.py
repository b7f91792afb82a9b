"""Safe rollout (issue 15.1–2): a shadow scores live traffic off the answer's path and
answers no one; a canary answers a sticky share of entities. Real server, real store, real
MLflow registry."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from copml import keys, prediction_log, registry, rollout
from copml.errors import CopmlError
from copml.operate import lifecycle
from copml.project import Project
from copml.redaction import keyed_hash
from copml.store import batches, open_store
from store_state import assert_unchanged, capture
from test_serve import REALTIME, Server, _copy, _instances, start


def test_a_canary_takes_its_share_of_entities_and_keeps_each_one() -> None:
    """5,000 entities (keyed hashes under a fresh secret key): the canary's share lands
    within ±3 % of the declared one, and every entity meets the same arm every time."""
    key = secrets.token_bytes(32)
    entities = [keyed_hash(f"customer-{i}", key) for i in range(5000)]
    for share in (0.1, 0.2, 0.5):
        chosen = [rollout.in_canary(e, share) for e in entities]
        assert abs(sum(chosen) / len(entities) - share) <= 0.03, share
        assert chosen == [rollout.in_canary(e, share) for e in entities]  # sticky
    # a larger share keeps everyone a smaller one had (growing a canary moves no one back)
    small = {e for e in entities if rollout.in_canary(e, 0.1)}
    assert small <= {e for e in entities if rollout.in_canary(e, 0.3)}
    assert not any(rollout.in_canary(e, 0.0) for e in entities[:100])
    assert all(rollout.in_canary(e, 1.0) for e in entities[:100])
    # without an entity, each request draws for itself
    assert rollout.in_canary(None, 0.5, draw=lambda: 0.4)
    assert not rollout.in_canary(None, 0.5, draw=lambda: 0.6)


def _challenger(project: Project, gate: bool = True) -> str:
    """Version 2: another regularisation (other scores than v1's), gated when asked."""
    from copml.train import train

    version = train(project, params={"C": 0.05}).version
    if gate:
        report = lifecycle.gate(project, version, actor="user:test")
        assert report.passed, report.reasons
    return version


def test_rollout_changes_need_the_gate_and_are_recorded(churn: Project) -> None:
    engine = open_store(churn.db_url)
    version = _challenger(churn, gate=False)
    before = capture(churn)
    with pytest.raises(CopmlError, match="has not passed the gate"):
        lifecycle.shadow(churn, version, actor="user:test", reason="try it")
    with pytest.raises(CopmlError, match="is the champion"):
        lifecycle.canary(churn, "1", 0.1, actor="user:test", reason="try it")
    with pytest.raises(CopmlError, match="there is no canary"):
        lifecycle.abort(churn, actor="user:test", reason="nothing runs")
    assert_unchanged(before, churn)  # refused changes change nothing

    lifecycle.gate(churn, version, actor="user:test")
    lifecycle.shadow(churn, version, actor="user:ops", reason="watch it on live traffic")
    assert rollout.current(engine, churn.spec.project) == rollout.Rollout(shadow=version)
    with pytest.raises(CopmlError, match="between 0 % and 100 %"):
        lifecycle.canary(churn, version, 1.0, actor="user:ops", reason="all of them")
    lifecycle.canary(churn, version, 0.2, actor="user:ops", reason="a fifth of customers")
    # the shadow moved to canary: it answers its share now, and runs in shadow no more
    assert rollout.current(engine, churn.spec.project) == rollout.Rollout(None, version, 0.2)
    aliases = set(registry.get(churn, version).aliases)
    assert "canary" in aliases and "shadow" not in aliases  # mirrored for MLflow's own UI
    lifecycle.abort(churn, actor="user:ops", reason="worse on the live comparison")
    assert rollout.current(engine, churn.spec.project) == rollout.Rollout()
    lifecycle.shadow(churn, version, actor="user:ops", reason="watch it again")
    lifecycle.promote(churn, version, actor="user:ops", reason="better in shadow")
    assert rollout.current(engine, churn.spec.project) == rollout.Rollout()  # it answers all
    from copml import events

    found = events.history(engine, kind=events.Kind.MODEL_ROLLOUT)
    assert [e["actor"] for e in found][:4] and all(e["reason"] for e in found)
    assert len(found) == 5  # shadow, canary, abort, shadow, promotion's end of the shadow


@pytest.fixture(scope="module")
def served(
    trained_churn: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    """One server and its gated challenger for the tests below (each sets the rollout it
    needs and ends it)."""
    project = _copy(trained_churn, tmp_path_factory.mktemp("rollout"), REALTIME)
    version = _challenger(project)
    server = start(project)
    yield server, version
    server.kill()


def _reload(server: Server) -> dict[str, object]:
    operator = keys.create(open_store(server.project.db_url), "operator")
    auth = {"Authorization": f"Bearer {operator}"}
    r = httpx.post(f"{server.url}/v1/admin/reload", headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    return httpx.get(f"{server.url}/v1/models", headers=server.headers("service")).json()


def _ask(server: Server, instances: list[dict[str, object]]) -> list[dict[str, object]]:
    def one(instance: dict[str, object]) -> dict[str, object]:
        r = httpx.post(
            f"{server.url}/v1/predict",
            json={"instances": [instance]},
            headers=server.headers("service"),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, instances))


def _local_scores(project: Project, version: str, instances: list[dict[str, object]]) -> np.ndarray:
    model = registry.load(project, registry.get(project, version))
    frame = pd.DataFrame(instances)[project.spec.data.features]
    return model.predict_proba(frame)[:, 1]


def test_a_shadow_scores_every_answer_and_answers_none(served: tuple[Server, str]) -> None:
    server, version = served
    project, engine = server.project, open_store(server.project.db_url)
    lifecycle.shadow(project, version, actor="user:ops", reason="watch it")
    assert _reload(server) == {
        "champion": "1",
        "shadow": version,
        "canary": None,
        "canary_share": 0.0,
    }
    instances = _instances(project, 60)
    answers = _ask(server, instances)
    # Every answer is the champion's, exactly as v1 scores it alone.
    assert {a["model_version"] for a in answers} == {"1"}
    mine = np.array([a["predictions"][0]["score"] for a in answers])
    assert np.allclose(mine, _local_scores(project, "1", instances), rtol=0, atol=1e-12)
    theirs = _local_scores(project, version, instances)
    assert not np.allclose(mine, theirs, atol=1e-3)  # v2 would have answered otherwise

    # Each answered batch gets its shadow batch: v2's scores, row for row, logged apart.
    def shadowed() -> list[prediction_log.Batch]:
        b = batches.c
        with engine.connect() as conn:
            rows = conn.execute(select(batches).where(b.arm == "shadow")).all()
        return [prediction_log._batch(r) for r in rows]

    deadline = pd.Timestamp.now() + pd.Timedelta(seconds=120)
    while sum(s.n_rows for s in shadowed()) < len(instances):
        assert pd.Timestamp.now() < deadline, "the shadow did not catch up"
        httpx.get(f"{server.url}/healthz")  # a round trip while the shadow's process works
    by_key = {}
    with engine.connect() as conn:
        for row in conn.execute(select(batches).where(batches.c.arm == "champion")):
            by_key[row.key] = prediction_log._batch(row)
    ids = [a["predictions"][0]["prediction_id"] for a in answers]
    for shadow in shadowed():
        assert shadow.model_version == version and shadow.shadows in by_key
        answered = by_key[shadow.shadows]
        assert shadow.n_rows == answered.n_rows
        mirrored = prediction_log.read(engine, shadow)["score"].to_numpy()
        first = prediction_log.read(engine, answered)
        at = [ids.index(pid) for pid in first["prediction_id"]]
        assert np.allclose(mirrored, theirs[at], rtol=0, atol=1e-12)
    lifecycle.abort(project, actor="user:ops", reason="seen enough", arm=rollout.SHADOW)
    assert _reload(server)["shadow"] is None


def test_a_canary_answers_its_share_sticky_per_entity(served: tuple[Server, str]) -> None:
    server, version = served
    project, engine = server.project, open_store(server.project.db_url)
    lifecycle.canary(project, version, 0.5, actor="user:ops", reason="half of customers")
    assert _reload(server)["canary"] == version
    instances = _instances(project, 300)
    answers = _ask(server, instances)
    again = _ask(server, instances[:100])
    versions = [a["model_version"] for a in answers]
    assert Counter(versions).keys() == {"1", version}
    assert 0.40 <= versions.count(version) / len(versions) <= 0.60  # ±4.9 sd
    assert [a["model_version"] for a in again] == versions[
        :100
    ]  # the same customer, the same model
    for answer, instance in zip(answers[:40], instances[:40], strict=True):
        pid = answer["predictions"][0]["prediction_id"]
        stored = prediction_log.record(engine, pid)
        assert stored is not None and stored["model_version"] == answer["model_version"]
        score = _local_scores(project, answer["model_version"], [instance])[0]
        assert answer["predictions"][0]["score"] == pytest.approx(score, abs=1e-12)
    arms = {}
    answered = select(batches.c.arm, batches.c.model_version).where(batches.c.arm != "shadow")
    with engine.connect() as conn:
        for row in conn.execute(answered):
            arms[row.model_version] = row.arm
    assert arms == {"1": "champion", version: "canary"}

    lifecycle.abort(project, actor="user:ops", reason="back to the champion")
    assert _reload(server)["canary"] is None
    assert {a["model_version"] for a in _ask(server, instances[:50])} == {"1"}


def test_batch_scoring_scores_the_batch_with_the_shadow_too(churn: Project) -> None:
    from batches import month
    from copml.monitor.window import compute
    from copml.score import score

    engine = open_store(churn.db_url)
    version = _challenger(churn)
    lifecycle.shadow(churn, version, actor="user:ops", reason="watch it on a batch")
    source, _ = month(churn.root / "incoming", size=400)
    result = score(churn, source, churn.root / "out.csv")
    found = {
        b.arm: b
        for b in prediction_log.batches_between(engine, None, pd.Timestamp.max.tz_localize("UTC"))
    }
    answered, mirror = found["champion"], found["shadow"]
    assert answered.key == result.prediction_batch and mirror.shadows == answered.key
    assert mirror.model_version == version and mirror.snapshot_id == answered.snapshot_id
    assert mirror.n_rows == answered.n_rows == 400
    inputs = pd.read_csv(source, keep_default_na=False)
    inputs["TotalCharges"] = pd.to_numeric(inputs["TotalCharges"], errors="coerce")
    records = inputs.to_dict(orient="records")
    out = pd.read_csv(churn.root / "out.csv")
    assert np.allclose(out["score"], _local_scores(churn, "1", records), atol=1e-12)
    assert np.allclose(
        prediction_log.read(engine, mirror)["score"],
        _local_scores(churn, version, records),
        atol=1e-12,
    )
    # the window counts what was answered: the shadow's rows are not predictions of it
    assert compute(churn, end=answered.created_at + pd.Timedelta(seconds=1)).n_predictions == 400


def test_kill_9_during_canary_load_loses_no_acknowledged_prediction(churn: Project) -> None:
    """SIGKILL to the server as the 500th of 1,000 requests (16 in flight) is answered, with
    a canary answering half the customers: every acknowledged prediction of either arm is
    stored with the version its answer named."""
    from test_serve import _assert_stored, _load_during

    version = _challenger(churn)
    lifecycle.canary(churn, version, 0.5, actor="user:ops", reason="half of customers")
    server = start(churn)
    try:
        acked, unanswered = asyncio.run(_load_during(server, 1000, 16, server.kill, inline=True))
    finally:
        server.kill()
    assert len(acked) >= 500 and unanswered > 0  # the kill came with requests in flight
    assert {v for _, v in acked} == {"1", version}  # both arms answered before it
    _assert_stored(churn.db_url, acked)


def test_abort_and_promote_under_load_fail_no_request(churn: Project) -> None:
    """A canary aborted, then a challenger promoted, each while 16 requests are in flight:
    no request fails, every answer is stored with its version, and after each change the
    server answers with the versions it names."""
    from test_serve import _assert_stored, _load_during

    version = _challenger(churn)
    lifecycle.canary(churn, version, 0.5, actor="user:ops", reason="half of customers")
    server = start(churn)

    def change(apply: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            apply()
            _reload(server)  # what the server's poll does within its interval

        return run

    try:
        aborted = change(lambda: lifecycle.abort(churn, actor="user:ops", reason="worse"))
        acked, unanswered = asyncio.run(_load_during(server, 600, 16, aborted))
        assert unanswered == 0 and {v for _, v in acked} == {"1", version}
        assert {a["model_version"] for a in _ask(server, _instances(churn, 40))} == {"1"}
        promoted = change(
            lambda: lifecycle.promote(churn, version, actor="user:ops", reason="better")
        )
        again, unanswered = asyncio.run(_load_during(server, 600, 16, promoted))
        assert unanswered == 0 and version in {v for _, v in again}
        assert {a["model_version"] for a in _ask(server, _instances(churn, 40))} == {version}
    finally:
        server.kill()
    _assert_stored(churn.db_url, acked + again)


def test_batch_scoring_lets_a_canary_answer_its_customers(churn: Project, tmp_path: Path) -> None:
    """A canary in ``copml score``: the customers whose keyed hash falls in its share (as a
    server routes them) are answered by it, in a batch over a snapshot of their own; each
    output row names its version and a prediction id whose record is that customer's row;
    the truth by customer lands on the arm that answered, and the window counts each arm."""
    from batches import month
    from copml.feedback import load
    from copml.monitor.window import compute
    from copml.score import score

    engine = open_store(churn.db_url)
    version = _challenger(churn)
    lifecycle.canary(churn, version, 0.3, actor="user:ops", reason="three in ten customers")
    source, outcome = month(tmp_path / "in", size=1200)
    at = pd.Timestamp("2026-03-02T06:00Z").to_pydatetime()
    result = score(churn, source, tmp_path / "out.csv", at=at)
    out = pd.read_csv(tmp_path / "out.csv", dtype={"model_version": str})
    inputs = pd.read_csv(source, keep_default_na=False)
    assert out["customerID"].tolist() == inputs["customerID"].tolist()  # input order kept
    hashed = [keyed_hash(c, churn.pii_key) for c in inputs["customerID"]]
    routed = np.array([rollout.in_canary(h, 0.3) for h in hashed])
    assert 0.2 < routed.mean() < 0.4
    assert out["model_version"].tolist() == np.where(routed, version, "1").tolist()
    inputs["TotalCharges"] = pd.to_numeric(inputs["TotalCharges"], errors="coerce")
    records = inputs.to_dict(orient="records")
    expected = np.where(
        routed, _local_scores(churn, version, records), _local_scores(churn, "1", records)
    )
    assert np.allclose(out["score"], expected, rtol=0, atol=1e-12)
    made = {
        b.arm: b for b in prediction_log.batches_between(engine, None, at + pd.Timedelta(1, "s"))
    }
    assert made["champion"].key == result.prediction_batch
    assert made["canary"].n_rows == routed.sum() and made["champion"].n_rows == (~routed).sum()
    assert made["canary"].snapshot_id != made["champion"].snapshot_id
    for i in [*np.flatnonzero(routed)[:5], *np.flatnonzero(~routed)[:5]]:
        stored = prediction_log.record(engine, out["prediction_id"][i])
        assert stored is not None and stored["model_version"] == out["model_version"][i]
        assert stored["input"]["customerID"] == hashed[i]  # the audit names its customer
        assert stored["score"] == pytest.approx(out["score"][i], abs=1e-12)
    truth = tmp_path / "truth.csv"
    outcome.to_csv(truth, index=False)
    load(churn, truth, at=pd.Timestamp("2026-03-30T00:00Z").to_pydatetime())
    window = compute(churn, end=pd.Timestamp("2026-04-01T00:00Z").to_pydatetime())
    assert window.n_predictions == window.n_labelled == 1200
    assert window.metrics["canary.labelled"] == routed.sum()
    assert window.metrics["champion.labelled"] == (~routed).sum()


def test_which_version_served_when_over_the_api(served: tuple[Server, str]) -> None:
    """``GET /v1/models/history``: every move of the champion and the arms, and which
    versions served at a given time; a bad time is a 422 naming ``at``, and changes nothing."""
    server, version = served
    project = server.project
    lifecycle.canary(project, version, 0.3, actor="user:ops", reason="a third")
    lifecycle.abort(project, actor="user:ops", reason="enough for now")
    engine = open_store(project.db_url)
    auditor = {"Authorization": f"Bearer {keys.create(engine, 'auditor')}"}
    url = f"{server.url}/v1/models/history"
    found = httpx.get(url, headers=auditor, timeout=60).json()
    canary = [c for c in found["changes"] if c["alias"] == "canary"]
    began, ended = canary[-2], canary[-1]
    assert (began["version"], began["share"], began["actor"]) == (version, 0.3, "user:ops")
    assert began["gate"]["passed"] and (ended["version"], ended["previous"]) == (None, version)
    assert found["serving"]["champion"] == "1" and found["serving"]["consistent"] is True
    then = httpx.get(url, params={"at": began["at"]}, headers=auditor, timeout=60).json()
    assert then["serving"]["canary"] == version and then["serving"]["share"] == 0.3
    assert then["changes"][-1] == began  # nothing after the time asked about
    before = capture(project)
    refused = httpx.get(url, params={"at": "last tuesday"}, headers=auditor, timeout=60)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "at"]
    service = httpx.get(url, headers=server.headers("service"), timeout=60)
    assert service.status_code == 403
    assert_unchanged(before, project)


def test_which_version_served_when_from_the_cli(churn: Project) -> None:
    """``copml models history``: the moves with their gate in words, ``--at`` replays a
    past moment, and a time that is not one is refused naming ``--at``."""
    import json
    from datetime import timedelta

    from copml import aliases
    from test_cli import run

    v2 = _challenger(churn)
    lifecycle.canary(churn, v2, 0.25, actor="user:ops", reason="a quarter")
    began = aliases.changes(churn)[-1]
    assert (began.alias, began.version) == ("canary", v2)
    shown = run("models", "history", "--project", str(churn.root), cwd=churn.root).stdout
    assert began.gate_summary.startswith("holdout passed")  # a cell the table may wrap
    assert f"canary v{v2} (25%)" in shown.splitlines()[-1]
    earlier = (began.at - timedelta(seconds=1)).isoformat()
    args = ("models", "history", "--project", str(churn.root), "--json", "--at", earlier)
    then = json.loads(run(*args, cwd=churn.root).stdout)
    assert then["serving"]["champion"] == "1" and then["serving"]["canary"] is None
    assert all(c["at"] <= began.at.isoformat() for c in then["changes"])
    before = capture(churn)
    bad = run("models", "history", "--project", str(churn.root), "--at", "last tuesday",
              cwd=churn.root, check_exit=None)  # fmt: skip
    assert bad.returncode != 0 and "--at" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    assert_unchanged(before, churn)


def test_an_alias_moved_outside_copml_is_reported(churn: Project) -> None:
    """MLflow's UI can move the champion alias without copml: the recorded history and the
    registry then disagree, and the present's answer says so."""
    from copml import aliases

    assert aliases.serving_at(churn).consistent is True
    v2 = _challenger(churn, gate=False)
    registry.client(churn).set_registered_model_alias(churn.spec.project, "champion", v2)
    now = aliases.serving_at(churn)
    assert now.champion == "1" and now.registry == {"champion": v2} and now.consistent is False
