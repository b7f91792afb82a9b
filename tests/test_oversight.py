"""The stop button (issue 17.1): ``copml halt`` puts a project in its declared safe state
(``review_all``: every answer flagged for a person and queued; ``refuse``: 503 with
``Retry-After``) on running servers, batch scoring and the policies, until ``resume``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from copml import events, keys, oversight
from copml.cli import app
from copml.errors import CopmlError
from copml.operate.runner import operate_once
from copml.project import Project, load_project
from copml.score import score
from copml.store import open_store, reviews
from store_state import assert_unchanged, capture
from test_operate import JAN, _actions, _spec, _window
from test_serve import REALTIME, Server, _copy, _instances, start


def _post(server: Server, path: str, key: str, reason: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}",
        json={"reason": reason},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def _ask(server: Server, instance: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/predict",
        json={"instances": [instance]},
        headers=server.headers("service"),
        timeout=60,
    )


def test_halt_and_resume_are_recorded_and_refused_twice(churn: Project) -> None:
    with pytest.raises(CopmlError, match="reason"):
        oversight.halt(churn, actor="user:ops", reason=" ")
    with pytest.raises(CopmlError, match="not halted"):
        oversight.resume(churn, actor="user:ops", reason="nothing to end")
    found = oversight.halt(churn, actor="user:ops", reason="scanner recall alarm")
    assert (found.safe_state, found.actor) == ("review_all", "user:ops")  # the default
    with pytest.raises(CopmlError, match="already halted by user:ops"):
        oversight.halt(churn, actor="user:lead", reason="again")
    shown = CliRunner().invoke(app, ["status", "--project", str(churn.root), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["halted"]["reason"] == "scanner recall alarm"
    oversight.resume(churn, actor="user:lead", reason="v2 promoted")
    by_cli = CliRunner().invoke(app, ["halt", "--project", str(churn.root), "--reason", "drill"])
    assert by_cli.exit_code == 0 and "halted into review_all" in by_cli.output
    again = CliRunner().invoke(app, ["halt", "--project", str(churn.root), "--reason", "drill"])
    assert again.exit_code == 1 and "already halted" in again.output
    done = CliRunner().invoke(app, ["resume", "--project", str(churn.root), "--reason", "over"])
    assert done.exit_code == 0 and "resumed" in done.output
    engine = open_store(churn.db_url)
    assert oversight.current(engine, churn) is None
    halted = events.history(engine, kind=events.Kind.PROJECT_HALTED)
    resumed = events.history(engine, kind=events.Kind.PROJECT_RESUMED)
    assert [e["reason"] for e in halted] == ["drill", "scanner recall alarm"]  # newest first
    assert halted[1]["actor"] == "user:ops"
    assert [(e["actor"], e["reason"]) for e in resumed][1] == ("user:lead", "v2 promoted")


def test_policies_only_alert_while_halted(churn: Project) -> None:
    project = _spec(
        churn,
        """
policies:
  - name: retrain-on-decay
    when: accuracy < 0.75
    do: [retrain, validate, promote]
  - name: tell-people
    when: accuracy < 0.75
    do: [alert]
""",
    )
    _window(project, JAN, accuracy=0.70)
    oversight.halt(project, actor="user:ops", reason="under investigation")
    result = operate_once(project, at=JAN)
    by_policy = {e.policy: e for e in result.evaluations}
    assert by_policy["tell-people"].acted
    held = by_policy["retrain-on-decay"]
    assert not held.acted and "halted by user:ops" in held.note
    assert {a["kind"] for a in _actions(project)} == {"alert"}


def test_batch_scoring_obeys_the_halt(churn: Project, tmp_path: Path) -> None:
    source = tmp_path / "batch.csv"
    pd.DataFrame(_instances(churn, 20)).to_csv(source, index=False)
    before = score(churn, source, tmp_path / "before.csv")
    oversight.halt(churn, actor="user:ops", reason="look at everything")
    halted = score(churn, source, tmp_path / "halted.csv")
    assert halted.reviews == halted.rows == 20 and before.reviews < 20
    oversight.resume(churn, actor="user:ops", reason="done")
    project = _spec(churn, "policies: []", oversight="{safe_state: refuse}")
    oversight.halt(project, actor="user:ops", reason="stop it")
    state = capture(project)
    with pytest.raises(CopmlError, match="halted by user:ops"):
        score(project, source, tmp_path / "refused.csv")
    assert_unchanged(state, project)
    assert not (tmp_path / "refused.csv").exists()


class _Load:
    """Requests sent one after another from 4 threads until stopped; every answer kept
    with the time its request was sent."""

    def __init__(self, server: Server, instances: list[dict[str, object]]) -> None:
        self.answers: list[tuple[float, float, int, Any]] = []  # sent, answered, status, body
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(server, instances[i::4])) for i in range(4)
        ]
        for t in self._threads:
            t.start()

    def _run(self, server: Server, mine: list[dict[str, object]]) -> None:
        i = 0
        while not self._stop.is_set():
            sent = time.monotonic()
            r = _ask(server, mine[i % len(mine)])
            body = r.json() if r.status_code == 200 else r
            self.answers.append((sent, time.monotonic(), r.status_code, body))
            i += 1

    def stop(self) -> list[tuple[float, float, int, Any]]:
        self._stop.set()
        for t in self._threads:
            t.join()
        return self.answers


@pytest.mark.cluster  # two copml serve processes on one store
def test_halt_under_load_flags_every_answer_and_resume_restores(
    trained_churn: Path, tmp_path: Path
) -> None:
    project = _copy(trained_churn, tmp_path, REALTIME)
    first = start(project)
    second = start(project)  # another replica on the same store: it obeys within a second
    try:
        operator = keys.create(open_store(project.db_url), "operator")
        instances = _instances(project, 40)
        alone = [_ask(first, i).json()["predictions"][0]["review"] for i in instances]
        assert not all(alone)  # the review band alone flags only some
        load = _Load(first, instances)
        assert _post(first, "/v1/admin/halt", operator, "recall alarm").status_code == 200
        halted_at = time.monotonic()
        deadline = halted_at + 2.0
        clear = instances[alone.index(False)]  # one the model alone does not flag
        while True:  # the other replica: flagged within 2 s of the halt
            answer = _ask(second, clear).json()["predictions"][0]
            if answer["review"] or time.monotonic() > deadline:
                break
        assert answer["review"], "the other replica did not obey the halt within 2 s"
        after = [_ask(second, i).json()["predictions"][0]["review"] for i in instances]
        assert all(after)
        resuming = time.monotonic()  # answers after this may be the resumed server's
        assert _post(first, "/v1/admin/resume", operator, "v2 is in").status_code == 200
        answers = load.stop()
        failed = [(s, a.text[:200]) for _, _, s, a in answers if s != 200]
        assert answers and not failed, failed[:3]  # nothing failed
        during = [
            a["predictions"][0]["review"]
            for sent, answered, _, a in answers
            if halted_at < sent and answered < resuming
        ]
        assert during and all(during)  # every answer asked after the halt went to a person
        again = [_ask(first, i).json()["predictions"][0]["review"] for i in instances]
        assert again == alone
        with open_store(project.db_url).connect() as conn:
            queued = conn.execute(select(func.count()).select_from(reviews)).scalar_one()
        assert queued >= len(during)  # every flagged answer waits in the review queue
        assert _post(first, "/v1/admin/resume", operator, "twice").status_code == 409
    finally:
        first.kill()
        second.kill()


def test_halted_into_refuse_answers_503_and_scores_nothing(
    trained_churn: Path, tmp_path: Path
) -> None:
    project = _copy(trained_churn, tmp_path, REALTIME)
    spec = project.root / "copml.yaml"
    refuse = "oversight: {safe_state: refuse, retry_after_seconds: 7}"
    spec.write_text(spec.read_text() + f"\n{refuse}\n")
    project = load_project(project.root)
    server = start(project)
    try:
        operator = keys.create(open_store(project.db_url), "operator")
        instance = _instances(project, 1)[0]
        assert _ask(server, instance).status_code == 200
        viewer = _post(server, "/v1/admin/halt", server.keys["viewer"], "not mine to stop")
        assert viewer.status_code == 403
        assert _post(server, "/v1/admin/halt", operator, "stop").json()["safe_state"] == "refuse"
        state = capture(project)
        refused = [_ask(server, instance) for _ in range(5)]
        assert {r.status_code for r in refused} == {503}
        assert {r.headers["Retry-After"] for r in refused} == {"7"}
        assert "halted by" in refused[0].json()["detail"]
        assert_unchanged(state, project)
        assert _post(server, "/v1/admin/resume", operator, "safe again").status_code == 200
        assert _ask(server, instance).status_code == 200
    finally:
        server.kill()


def test_a_reviewer_overriding_the_model_is_recorded_and_counted(
    trained_churn: Path, tmp_path: Path
) -> None:
    """A person's label that differs from the model's decision is an override: kept with
    who, when and why beside the decision, in its audit record, and as the window's
    ``override_rate``; a reason too long is refused naming the field, changing nothing."""
    from copml import audit
    from copml.monitor.window import monitor

    project = _copy(trained_churn, tmp_path, REALTIME)
    server = start(project)
    try:
        operator = {
            "Authorization": f"Bearer {keys.create(open_store(project.db_url), 'operator')}"
        }
        r = httpx.post(
            f"{server.url}/v1/predict",
            json={"instances": _instances(project, 60)},
            headers=server.headers("service"),
        )
        assert r.status_code == 200, r.text
        flagged = [a for a in r.json()["predictions"] if a["review"]]
        assert len(flagged) >= 2
        agree, overrule = flagged[0], flagged[1]
        url = f"{server.url}/v1/reviews"
        state = capture(project)
        long = httpx.post(
            f"{url}/{agree['prediction_id']}",
            json={"label": agree["label"], "reason": "x" * 2001},
            headers=operator,
        )
        assert long.status_code == 422 and long.json()["detail"][0]["loc"][-1] == "reason"
        assert_unchanged(state, project)
        same = httpx.post(f"{url}/{agree['prediction_id']}", json={"label": agree["label"]},
                          headers=operator)  # fmt: skip
        other = "No" if overrule["label"] == "Yes" else "Yes"
        why = "the contract was renewed yesterday"
        differ = httpx.post(f"{url}/{overrule['prediction_id']}",
                            json={"label": other, "reason": why}, headers=operator)  # fmt: skip
        assert same.status_code == differ.status_code == 200
    finally:
        server.kill()
    kept = audit.record(project, overrule["prediction_id"], explanation=False)["human_review"]
    assert kept["overridden"] is True and kept["reason"] == why
    assert kept["resolved_by"].startswith("key:") and kept["resolved_at"]
    not_overridden = audit.record(project, agree["prediction_id"], explanation=False)
    assert not_overridden["human_review"]["overridden"] is False
    assert audit.record(project, _unreviewed(r.json()), explanation=False)["human_review"] is None
    window = monitor(project)
    assert window.metrics["override_rate"] == 0.5  # one of the two reviewed was overridden


def _unreviewed(answer: dict[str, Any]) -> str:
    return next(a["prediction_id"] for a in answer["predictions"] if not a["review"])
