"""One reading of times for every command and field that takes one (issue 12.2): ISO 8601,
a time without a zone is UTC, anything else refused naming the option."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batches import month
from copml.cli import app
from copml.project import Project
from copml.score import score
from store_state import assert_unchanged, capture
from test_cli import run

# Every command with a time option, with the arguments it needs besides the option.
TIMED = {
    "score": ["in.csv", "--output", "out.csv"],
    "feedback": ["truth.csv"],
    "monitor": [],
    "operate": ["--once"],
    "purge": [],
}


def test_parse_reads_iso_8601_and_takes_a_time_without_a_zone_as_utc() -> None:
    from copml import times

    march = datetime(2026, 3, 1, tzinfo=UTC)
    for text in (
        "2026-03-01",
        "2026-03-01T00:00:00",
        "2026-03-01T00:00Z",
        "2026-03-01 01:00+01:00",
    ):
        assert times.parse(text, "--at") == march
    assert times.parse(datetime(2026, 3, 1), "at") == march
    for text in ("yesterday", "", "2026-13-01", "1e9", "0001-01-01T00:00+01:00", "9999-12-31"):
        with pytest.raises(times.TimeError, match=r"^--at: not a time .* without a zone is UTC"):
            times.parse(text, "--at")


@pytest.mark.parametrize("command", sorted(TIMED))
def test_every_time_option_says_a_time_without_a_zone_is_utc(command: str) -> None:
    shown = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output
    line = next(x for x in shown.splitlines() if "--at" in x)
    assert "a time without a zone is UTC" in line, shown


def _files(project: Project, tmp_path: Path) -> None:
    """A batch of customers (``in.csv``) and who churned (``truth.csv``)."""
    batch, outcome = month(tmp_path)
    batch.rename(project.root / "in.csv")
    outcome.to_csv(project.root / "truth.csv", index=False)


def test_feedback_at_a_time_without_a_zone_is_utc(churn: Project, tmp_path: Path) -> None:
    """``copml feedback --at 2026-01-31T00:00:00`` crashed with pandas' naive/aware
    TypeError; it is the same time as ``…Z``."""
    _files(churn, tmp_path)
    january = datetime(2026, 1, 1, 6, tzinfo=UTC)
    score(churn, churn.root / "in.csv", tmp_path / "scored.csv", at=january)
    done = run("feedback", "truth.csv", "--at", "2026-01-31T00:00:00", "--json", cwd=churn.root)
    assert json.loads(done.stdout)["loaded"] == 500
    window = json.loads(run("monitor", "--at", "2026-02-01", "--json", cwd=churn.root).stdout)
    assert window["n_labelled"] == 500  # matched to the January predictions
    assert window["start"].startswith("2026-01-01 00:00:00+00:00")


@pytest.mark.parametrize("command", sorted(TIMED))
def test_an_unreadable_time_is_one_line_naming_the_option(
    churn: Project, tmp_path: Path, command: str
) -> None:
    _files(churn, tmp_path)
    before = capture(churn)
    done = run(command, *TIMED[command], "--at", "next tuesday", cwd=churn.root, check_exit=1)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --at: not a time"), done.stderr
    assert "without a zone is UTC" in lines[0] and "Traceback" not in done.stdout
    assert not (churn.root / "out.csv").exists()
    assert_unchanged(before, churn)
