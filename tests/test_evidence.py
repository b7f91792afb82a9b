"""The evidence pack of a real project (trained, scored, halted, reviewed, promoted),
exported and verified through the CLI, and read back from the files it wrote."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from batches import month, month_with_truth
from copml import aliases, evidence, incidents, keys, oversight, registry
from copml.cli import app
from copml.feedback import load
from copml.monitor.window import monitor
from copml.operate import lifecycle
from copml.operate.runner import operate_once
from copml.project import Project, load_project
from copml.score import score
from copml.store import open_store
from copml.train import train
from store_state import assert_unchanged, capture
from test_operate import _spec
from test_serve import REALTIME, _copy, _instances, start

HALTED = datetime(2026, 5, 2, tzinfo=UTC)
MAY = datetime(2026, 5, 3, 6, tzinfo=UTC)
RESUMED = datetime(2026, 5, 4, tzinfo=UTC)
AWARE = datetime(2026, 5, 3, 12, tzinfo=UTC)  # a serious incident: May's first decision
REPORTED = datetime(2026, 5, 10, tzinfo=UTC)
FOREVER = "2100-01-01"  # the period's end for "everything so far", whatever the clock says
OVERRIDE_WHY = "the contract was renewed yesterday"
# Anything the browser would fetch: src/href to a scheme or a protocol-relative address,
# CSS url() and @import.
_EXTERNAL = re.compile(
    r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.\-]*:(?!image/)|//)|url\(|@import""", re.I
)


def _ephemeral_port() -> int:
    """A port the system picks: training seeds ``random``, so test_serve's pick would be
    the same number in every session sharing this machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _export(project: Project, folder: Path, *options: str) -> Any:
    done = _cli("evidence", "export", "--project", str(project.root), "-o", str(folder), *options)
    assert done.exit_code == 0, done.output
    return done


@dataclass(frozen=True)
class Lived:
    project: Project
    flagged: int  # real-time decisions queued for review
    current: str  # the month of the window computed at the fixture's real time


@pytest.fixture(scope="module")
def history(trained_churn: Path, tmp_path_factory: pytest.TempPathFactory) -> Lived:
    """v1 served March and May 2026 (windows computed) and a person halted it in May; it
    served real-time requests whose reviews a person resolved (one overriding the model);
    then v2 was trained and a person promoted it."""
    project = _copy(trained_churn, tmp_path_factory.mktemp("evidence"), REALTIME)
    work = project.root.parent / "work"
    month_with_truth(project, work)  # March
    monitor(project, end=datetime(2026, 4, 1, tzinfo=UTC))
    oversight.halt(project, actor="user:ops", reason="recall alarm drill", at=HALTED)
    batch, outcome = month(work / "may", seed=12, size=200)
    assert score(project, batch, work / "may.csv", at=MAY).reviews == 200  # a person sees all
    cited = str(pd.read_csv(work / "may.csv")["prediction_id"].iat[0])
    opened = incidents.open_incident(
        project, severity="serious", predictions=[cited], reason="a harmful decision",
        actor="user:ops", at=AWARE,
    )  # fmt: skip
    incidents.report(project, opened.id, reference="MSA-2026-0042", actor="user:ops", at=REPORTED)
    truth = work / "may-truth.csv"
    outcome.to_csv(truth, index=False)
    load(project, truth, at=datetime(2026, 5, 31, tzinfo=UTC))
    oversight.resume(project, actor="user:lead", reason="drill over", at=RESUMED)
    monitor(project, end=datetime(2026, 6, 1, tzinfo=UTC))
    server = start(project, port=_ephemeral_port())
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
        agree, overrule = flagged[0], flagged[1]
        other = "No" if overrule["label"] == "Yes" else "Yes"
        for answer, body in (
            (agree, {"label": agree["label"]}),
            (overrule, {"label": other, "reason": OVERRIDE_WHY}),
        ):
            done = httpx.post(
                f"{server.url}/v1/reviews/{answer['prediction_id']}", json=body, headers=operator
            )
            assert done.status_code == 200, done.text
    finally:
        server.kill()
    current = monitor(project)  # the window of now: its override rate
    v2 = train(project)
    lifecycle.promote(
        project, v2.version, actor="user:lead", reason="retrained on the same data", gate_first=True
    )
    return Lived(project, len(flagged), f"{current.start:%Y-%m}")


@pytest.fixture(scope="module")
def lived(history: Lived) -> Project:
    return history.project


@pytest.fixture(scope="module")
def pack(lived: Project, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("packs") / "all"
    done = _export(lived, folder, "--to", FOREVER)
    assert "manifest.json sha256" in done.output and "model versions (cards)" in done.output
    return folder


def _json(folder: Path, name: str) -> Any:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def _text(value: str) -> str:
    return " ".join(value.split())


def test_the_pack_holds_the_live_records(history: Lived, pack: Path) -> None:
    lived = history.project
    spec = lived.spec
    html = (pack / "index.html").read_text(encoding="utf-8")
    found = _json(pack, "evidence.json")

    # Purpose, what is predicted, owners, KPI: from copml.yaml.
    assert _text(spec.objective) in html
    assert found["purpose"]["predicts"] == "Churn = Yes"
    assert spec.owners.ml_ops in html and "churn_rate" in html

    # Each version's card: a file of its own, linked, with that version's own records.
    versions = registry.versions(lived)
    assert [v["version"] for v in found["versions"]] == [v.version for v in versions] == ["2", "1"]
    for mv in versions:
        card = pack / "model-cards" / f"model-card-v{mv.version}.html"
        assert f'href="model-cards/model-card-v{mv.version}.html"' in html
        text = card.read_text(encoding="utf-8")
        assert mv.run_id in text and mv.artifact_sha256 in text
        assert _json(pack, f"model-cards/model-card-v{mv.version}.json")["run_id"] == mv.run_id
    assert found["versions"][0]["state"] == "champion"
    assert found["versions"][0]["gate"].startswith("passed")

    # The monitoring plan in words, from the spec's window, thresholds and policies.
    assert "Every month (a calendar month, UTC)" in html
    assert "Every month, accuracy must be at least 0.75." in html
    assert (
        "retrain-on-decay: when accuracy is below 0.75 → retrain a new version, put it through "
        "the gate, promote it to champion and redeploy the servers; after acting it waits "
        "1 window before acting again." in html
    )
    assert (
        "escalate: when accuracy is at most 0.7 in each of 3 consecutive windows and "
        "churn_rate is at least 0.1 → alert the owners and suspend automated retraining" in html
    )

    # Oversight: the halt and the resume with who and why; the reviews and the override.
    halts = found["oversight"]["halts"]
    assert [(h["kind"], h["actor"], h["reason"]) for h in halts] == [
        ("halt", "user:ops", "recall alarm drill"),
        ("resume", "user:lead", "drill over"),
    ]
    assert halts[0]["safe_state"] == "review_all" and "recall alarm drill" in html
    counted = found["oversight"]["reviews"]
    assert (counted["resolved"], counted["overridden"], counted["override_rate"]) == (2, 1, 0.5)
    flagged = history.flagged
    assert counted["opened"] == flagged and counted["open_at_end"] == flagged - 2
    assert OVERRIDE_WHY in html and found["oversight"]["safe_state"] == "review_all"
    assert found["oversight"]["review_band"] == [0.3, 0.7]

    # Alias history: every move, the person's promotion of v2 with its gate.
    moves = found["alias_moves"]
    assert moves == [c.as_dict() | {"gate": moves[i]["gate"]} for i, c in
                     enumerate(aliases.changes(lived))]  # fmt: skip
    promoted = moves[-1]
    assert (promoted["alias"], promoted["version"], promoted["previous"]) == ("champion", "2", "1")
    assert promoted["actor"] == "user:lead" and promoted["gate"]["passed"] is True
    assert "retrained on the same data" in html

    # Both windows, each requirement's state; May's override rate from the reviews.
    windows = {w["start"][:7]: w for w in found["windows"]}
    now = history.current
    assert windows.keys() == {"2026-03", "2026-05", now}
    assert windows[now]["override_rate"] == 0.5 and windows[now]["reviews"] == flagged
    assert windows["2026-05"]["reviews"] == 200  # every decision while halted
    states = {r["name"]: r["state"] for r in windows["2026-03"]["requirements"]}
    assert set(spec.effectiveness.thresholds) <= states.keys()
    assert set(states.values()) <= {"met", "not met", "unknown"}

    # Logging and retention; incidents (none recorded); lineage of every version.
    assert found["logging"]["predictions_retention"] == "400 days"
    assert found["logging"]["meets_six_months"] is True
    (incident,) = found["incidents"]
    assert (incident["severity"], incident["state"]) == ("serious", "reported")
    assert incident["opened_at"] == AWARE.isoformat() and incident["reference"] == "MSA-2026-0042"
    assert incident["deadline"] == datetime(2026, 5, 18, 12, tzinfo=UTC).isoformat()  # 15 days
    assert len(incident["predictions"]) == 1 and incident["reported_at"] == REPORTED.isoformat()
    assert [n["kind"] for n in incident["history"]] == ["incident.opened", "incident.reported"]
    page = _text((pack / "index.html").read_text(encoding="utf-8"))
    assert "MSA-2026-0042" in page and incident["predictions"][0] in page
    lineage = _json(pack, "lineage.json")
    for v in ("1", "2"):
        jobs = {e["job"]["name"] for e in lineage["by_version"][v]}
        assert "train" in jobs, v
    assert "score" in {e["job"]["name"] for e in lineage["by_version"]["1"]}
    kinds = {e["kind"] for e in _json(pack, "events.json")}
    assert {"project.halted", "project.resumed", "model.promoted", "review.resolved"} <= kinds

    # Self-contained: no page of the pack fetches anything.
    for page in pack.rglob("*.html"):
        assert not _EXTERNAL.search(page.read_text(encoding="utf-8")), page


def test_the_manifest_lists_every_file_with_its_digest(lived: Project, pack: Path) -> None:
    manifest = _json(pack, "manifest.json")
    on_disk = sorted(p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file())
    assert [f["path"] for f in manifest["files"]] == [p for p in on_disk if p != "manifest.json"]
    for entry in manifest["files"]:
        data = (pack / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size"] == len(data)
    assert manifest["files_sha256"] == evidence.files_digest(manifest["files"])
    assert manifest["project"] == lived.spec.project and manifest["copml_version"]
    assert manifest["period"] == {"from": None, "to": "2100-01-01T00:00:00+00:00"}
    assert datetime.fromisoformat(manifest["generated_at"]).tzinfo is not None
    done = _cli("evidence", "verify", str(pack))
    assert done.exit_code == 0 and f"{len(manifest['files'])} files match" in done.output


def test_a_period_holds_only_its_windows_and_events(lived: Project, tmp_path: Path) -> None:
    folder = tmp_path / "may"
    _export(lived, folder, "--from", "2026-04-01", "--to", "2026-07-01")
    found = _json(folder, "evidence.json")
    assert [w["start"][:10] for w in found["windows"]] == ["2026-05-01"]
    assert found["period"] == {
        "from": "2026-04-01T00:00:00+00:00",
        "to": "2026-07-01T00:00:00+00:00",
    }
    start, end = datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC)
    logged = _json(folder, "events.json")
    assert logged and all(start <= datetime.fromisoformat(e["at"]) < end for e in logged)
    assert [h["kind"] for h in found["oversight"]["halts"]] == ["halt", "resume"]
    assert [i["reference"] for i in found["incidents"]] == ["MSA-2026-0042"]
    before = tmp_path / "march"
    _export(lived, before, "--from", "2026-03-01", "--to", "2026-04-01")
    assert _json(before, "evidence.json")["incidents"] == []  # opened in May
    inside = [c.as_dict()["at"] for c in aliases.changes(lived) if start <= c.at < end]
    assert [m["at"] for m in found["alias_moves"]] == inside
    assert found["serving"]["start"]["at"] == start.isoformat()
    # Cards are of every version whatever the period: an auditor needs the models in use.
    assert len(found["versions"]) == 2
    assert evidence.verify(folder).ok


def _altered(pack: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    return copy


@pytest.mark.parametrize(
    ("change", "name", "problem"),
    [
        ("tamper", "model-cards/model-card-v1.md", "altered"),
        ("delete", "lineage.json", "missing"),
        ("add", "notes/extra.txt", "extra"),
        ("relist", "manifest.json", "altered"),
    ],
)
def test_verify_names_each_file_that_does_not_match(
    pack: Path, tmp_path: Path, change: str, name: str, problem: str
) -> None:
    folder = _altered(pack, tmp_path)
    target = folder / name
    if change == "tamper":  # one byte, same size: only the digest tells
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif change == "delete":
        target.unlink()
    elif change == "add":
        target.parent.mkdir()
        target.write_text("added later\n")
    else:  # the list edited to match a changed file, the digest left as it was
        manifest = json.loads(target.read_text())
        manifest["files"][0]["sha256"] = "0" * 64
        target.write_text(json.dumps(manifest))
    done = _cli("evidence", "verify", str(folder), "--json")
    assert done.exit_code == 1, done.output
    report = json.loads(done.output)
    assert report["ok"] is False
    assert {(f["path"], f["problem"]) for f in report["findings"]} >= {(name, problem)}
    if change != "relist":
        assert [f["path"] for f in report["findings"]] == [name]
    shown = _cli("evidence", "verify", str(folder))
    assert shown.exit_code == 1 and name in shown.output and problem in shown.output


def test_verify_without_a_manifest_fails_naming_it(pack: Path, tmp_path: Path) -> None:
    folder = _altered(pack, tmp_path)
    (folder / "manifest.json").unlink()
    done = _cli("evidence", "verify", str(folder))
    assert done.exit_code == 1 and "manifest.json" in done.output and "missing" in done.output


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--from", "last tuesday"], "--from"),
        (["--to", "2026-13-01"], "--to"),
        (["--from", "2026-06-01", "--to", "2026-05-01"], "--from"),
        (["--from", "2026-05-01", "--to", "2026-05-01"], "--to"),
    ],
)
def test_a_bad_period_is_refused_naming_the_option(
    lived: Project, tmp_path: Path, options: list[str], named: str
) -> None:
    state = capture(lived)
    folder = tmp_path / "refused"
    done = _cli("evidence", "export", "--project", str(lived.root), "-o", str(folder), *options)
    assert done.exit_code == 1 and named in done.output, done.output
    assert not folder.exists()
    assert_unchanged(state, lived)


def test_an_export_never_writes_over_files(lived: Project, tmp_path: Path) -> None:
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    done = _cli("evidence", "export", "--project", str(lived.root), "-o", str(folder))
    assert done.exit_code == 1 and "--output" in done.output
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]


def test_a_new_export_includes_new_records(lived: Project, pack: Path, tmp_path: Path) -> None:
    """Exported again after a person halts it and a policy fires, the pack shows both."""
    root = tmp_path / "churn"
    shutil.copytree(lived.root, root)
    halted = _cli("halt", "--project", str(root), "--reason", "second look at the May batch")
    assert halted.exit_code == 0, halted.output
    policy = "policies:\n  - name: tell-people\n    when: recall < 0.99\n    do: [alert]\n"
    project = _spec(load_project(root), policy)
    operate_once(project, at=datetime(2026, 6, 1, tzinfo=UTC))
    _export(project, tmp_path / "again")
    again = _json(tmp_path / "again", "evidence.json")
    assert again["oversight"]["halts"][-1]["reason"] == "second look at the May batch"
    assert again["oversight"]["halted_at_export"]["reason"] == "second look at the May batch"
    html = (tmp_path / "again" / "index.html").read_text()
    assert "second look at the May batch" in html
    (fired,) = again["policies_fired"]
    assert (fired["policy"], fired["condition"], fired["do"]) == (
        "tell-people",
        "recall < 0.99",
        ["alert"],
    )
    assert fired["values"]["recall"] == [pytest.approx(0.8140, abs=5e-5)]  # May's, as stored
    assert [(a["kind"], a["policy"], a["state"]) for a in again["actions"]] == [
        ("alert", "tell-people", "succeeded")
    ]
    assert (
        len(again["alerts"]) == 1
        and "tell-people: when recall is below 0.99 → alert the owners." in html
    )
    before = _json(pack, "evidence.json")
    assert (
        "second look" not in json.dumps(before) and before["oversight"]["halted_at_export"] is None
    )
    assert before["policies_fired"] == [] and before["actions"] == []


def test_a_project_on_postgresql_with_nothing_yet(
    fresh_churn: Project, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new project whose store is PostgreSQL: an empty but complete pack, and the store's
    password never in it."""
    monkeypatch.setenv("COPML_DB_URL", pg_url)
    folder = tmp_path / "pack"
    _export(fresh_churn, folder)
    found = _json(folder, "evidence.json")
    assert found["versions"] == [] and found["windows"] == [] and found["alias_moves"] == []
    assert found["logging"]["store_url"].startswith("postgresql+psycopg://copml:***@127.0.0.1")
    assert sorted(p.name for p in folder.iterdir()) == [
        "events.json", "evidence.json", "index.html", "lineage.json", "manifest.json"
    ]  # fmt: skip
    for page in folder.iterdir():
        assert "copml:copml@" not in page.read_text(encoding="utf-8"), page
    assert "No monitoring window overlaps the period." in (folder / "index.html").read_text()
    assert evidence.verify(folder).ok
