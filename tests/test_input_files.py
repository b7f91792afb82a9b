"""Files a command cannot read, or cannot write, are one clear line and exit 1, and change
nothing (issue 12.18): a binary file, a file with one enormous field, an output folder
that cannot be created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from copml.project import Project
from store_state import assert_unchanged, capture
from test_cli import run

ENORMOUS = 20 << 20  # one field of 20 MiB: enough to pass every limit, small for a test


def _binary(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 64)


def _enormous_header(path: Path) -> None:
    with path.open("w") as fh:
        fh.write("customerID,")
        fh.write("x" * ENORMOUS)
        fh.write("\n1,2\n")


def _enormous_field(path: Path) -> None:
    with path.open("w") as fh:
        fh.write("customerID,Churn\n0001-AAAAA,Yes\n0002-BBBBB,")
        fh.write("y" * ENORMOUS)
        fh.write("\n0003-CCCCC,No\n")


COMMANDS = {
    "snapshot": lambda f: ["snapshot", f],
    "score": lambda f: ["score", f, "--output", "scored.csv"],
    "feedback": lambda f: ["feedback", f],
}
FILES = {"binary": _binary, "enormous-header": _enormous_header, "enormous-field": _enormous_field}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unreadable_file_is_one_line_and_exit_1(churn: Project, command: str) -> None:
    before = capture(churn)
    for name, write in FILES.items():
        path = churn.root / f"{name}.csv"
        write(path)
        done = run(*COMMANDS[command](path.name), cwd=churn.root, check_exit=1)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, done.stderr)
        assert path.name in lines[0], (name, done.stderr)
        assert len(lines[0]) < 300 and "Traceback" not in done.stdout + done.stderr
        path.unlink()
    assert not (churn.root / "scored.csv").exists()
    assert_unchanged(before, churn)


def test_an_output_folder_that_cannot_be_created_is_one_line_and_exit_1(
    churn: Project, tmp_path: Path
) -> None:
    from batches import month

    batch, _ = month(tmp_path)
    blocker = churn.root / "not-a-folder"
    blocker.write_text("a file where the output folder should go\n")
    before = capture(churn)
    out = blocker / "scores" / "out.csv"
    done = run("score", str(batch), "--output", str(out), cwd=churn.root, check_exit=1)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --output: cannot create"), done.stderr
    assert "Traceback" not in done.stdout
    assert_unchanged(before, churn)
    existing = churn.root / "a-folder"
    existing.mkdir()
    done = run("score", str(batch), "--output", str(existing), cwd=churn.root, check_exit=1)
    assert done.stderr.startswith("error: --output:") and "is a folder" in done.stderr
    assert os.listdir(existing) == []
    assert_unchanged(before, churn)
