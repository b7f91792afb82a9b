"""A prediction id names one prediction or none (issue 12.14): parsed strictly, its row
checked against its batch, 404 otherwise, never someone else's record and never a 500;
a 404 does not echo the id (12.19). Also the API's time field (12.2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from copml import keys, prediction_log
from copml.store import open_store
from store_state import assert_unchanged, capture
from test_cli import run
from test_serve import REALTIME, Server, _copy, _instances, start


@pytest.fixture(scope="module")
def served(trained_churn: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start(_copy(trained_churn, tmp_path_factory.mktemp("ids"), REALTIME))
    srv.keys["operator"] = keys.create(open_store(srv.project.db_url), "operator")
    yield srv
    srv.kill()


def _batch(server: Server, n: int) -> list[str]:
    """The prediction ids of one request of ``n`` instances (one batch of the log)."""
    r = httpx.post(
        f"{server.url}/v1/predict",
        json={"instances": _instances(server.project, n)},
        headers=server.headers("service"),
    )
    assert r.status_code == 200, r.text
    return [p["prediction_id"] for p in r.json()["predictions"]]


def _malformed(key: str, n: int) -> list[str]:
    """Ids that ``int(x, 16)`` would have taken, and rows outside the batch."""
    return [
        f"{key}-0000001",  # row -1: the previous batch's last prediction
        f"{key}+0000000",
        f"{key}0x000000",
        f"{key}0000_000",
        f"{key} 0000000",
        f"{key}0000000 ",
        f"{key.upper()}00000000",
        f"{key}{n:08x}",  # one past the last row
        f"{key}ffffffff",
    ]


@pytest.fixture(scope="module")
def ids(served: Server) -> dict[str, list[str]]:
    first = _batch(served, 3)
    second = _batch(served, 2)
    return {"first": first, "second": second}


def test_routes_refuse_malformed_ids_with_a_404_that_does_not_echo_them(
    served: Server, ids: dict[str, list[str]]
) -> None:
    auditor, service = served.headers("auditor"), served.headers("service")
    operator = {"Authorization": f"Bearer {served.keys['operator']}"}
    good = ids["second"][0]
    assert httpx.get(f"{served.url}/v1/predictions/{good}", headers=auditor).status_code == 200
    key = good[: prediction_log.KEY_HEX]
    bad = _malformed(key, 2) + _malformed(ids["first"][0][: prediction_log.KEY_HEX], 3)
    bad.append("ffffffffffffffff00000000")  # well formed, no such batch
    before = capture(served.project)
    for pid in bad:
        answers = {
            "record": httpx.get(f"{served.url}/v1/predictions/{pid}", headers=auditor),
            "explanation": httpx.get(
                f"{served.url}/v1/predictions/{pid}/explanation", headers=auditor
            ),
            "feedback": httpx.post(
                f"{served.url}/v1/feedback",
                json={"prediction_id": pid, "actual": "Yes"},
                headers=service,
            ),
            "review": httpx.post(
                f"{served.url}/v1/reviews/{pid}", json={"label": "Yes"}, headers=operator
            ),
        }
        for route, r in answers.items():
            assert r.status_code == 404, (pid, route, r.status_code, r.text)
            assert pid.strip() not in r.text and key not in r.text, (route, r.text)
    assert_unchanged(before, served.project)


def test_commands_refuse_malformed_ids(served: Server, ids: dict[str, list[str]]) -> None:
    project = served.project
    key = ids["second"][0][: prediction_log.KEY_HEX]
    before = capture(project)
    for command in ("audit", "explain"):
        done = run(command, f"{key}-0000001", "--json", cwd=project.root, check_exit=1)
        assert "no prediction" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert done.stdout == ""
    truth = project.root / "truth.csv"
    rows = [f"{pid},Yes" for pid in _malformed(key, 2) if "," not in pid]
    truth.write_text("prediction_id,actual\n" + "\n".join(rows) + "\n")
    done = run("feedback", "truth.csv", cwd=project.root, check_exit=1)
    assert f"{len(rows)} of {len(rows)} rows name no known prediction" in done.stderr, done.stderr
    assert_unchanged(before, project)


def test_the_feedback_time_is_read_as_the_cli_reads_it(
    served: Server, ids: dict[str, list[str]]
) -> None:
    service = served.headers("service")
    pid = ids["first"][1]
    for value in ("tuesday", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", 12):
        before = capture(served.project)
        r = httpx.post(
            f"{served.url}/v1/feedback",
            json={"prediction_id": pid, "actual": "Yes", "observed_at": value},
            headers=service,
        )
        assert r.status_code == 422, (value, r.status_code, r.text)
        (problem,) = r.json()["detail"]
        assert (
            problem["loc"] == ["body", "observed_at"] and "without a zone is UTC" in problem["msg"]
        )
        assert str(value) not in r.text
        assert_unchanged(before, served.project)
    r = httpx.post(
        f"{served.url}/v1/feedback",
        json={"prediction_id": pid, "actual": "Yes", "observed_at": "2026-03-01T00:00:00"},
        headers=service,
    )
    assert r.status_code == 200, r.text
    stored = prediction_log.record(open_store(served.project.db_url), pid)
    assert stored is not None and stored["actual"] == 1
