"""The column reader behind monitoring (``copml.store.columns``): the same rows as
SQLAlchemy reads, on SQLite (through a child process: ADBC's own copy of SQLite must not
share a process with Python's) and on PostgreSQL (ADBC in process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import Engine, column, select
from sqlalchemy import table as sa_table

from copml import prediction_log
from copml.errors import CopmlError
from copml.store import columns, feedback, predictions


def _log(engine: Engine, n: int, seed: int) -> prediction_log.Batch:
    rng = np.random.default_rng(seed)
    header = prediction_log.Header(
        prediction_log.new_key(),
        pd.Timestamp.now(tz="UTC").to_pydatetime(),
        "p",
        "1",
        None,
        "batch",
    )
    return prediction_log.write(
        engine,
        header,
        rng.integers(0, 2, n),
        rng.random(n),
        rng.random(n) < 0.1,
    )


def _truth(engine: Engine, batch: prediction_log.Batch, every: int) -> None:
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    with engine.begin() as conn:
        conn.execute(
            feedback.insert(),
            [
                {
                    "prediction_seq": batch.first_seq + i,
                    "actual": float(i % 2),
                    "observed_at": now,
                    "loaded_at": now,
                    "source": "test",
                }
                for i in range(0, batch.n_rows, every)
            ],
        )


def _expected(engine: Engine, first: int, last: int) -> pd.DataFrame:
    """The same rows the slow, obvious way: SQLAlchemy, one tuple per row, a join."""
    p, f = predictions.c, feedback.c
    query = (
        select(p.seq, p.label, p.score, p.review, f.actual)
        .select_from(predictions.outerjoin(feedback, f.prediction_seq == p.seq))
        .where(p.seq.between(first, last))
        .order_by(p.seq)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=["seq", "label", "score", "review", "actual"])
    frame["actual"] = frame["actual"].astype("float64")
    frame["review"] = frame["review"].astype(bool)
    frame["label"] = frame["label"].astype("int16")
    return frame


@pytest.mark.parametrize("child_rows", [0, columns.CHILD_ROWS], ids=["columnar", "in-process"])
def test_decisions_read_as_columns_match_row_by_row(
    engine: Engine, child_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both paths (a child process or ADBC for large reads, SQLAlchemy for small ones),
    both databases: the same rows, types and ground truth (NaN where none)."""
    monkeypatch.setattr(columns, "CHILD_ROWS", child_rows)
    first, second = _log(engine, 3000, 1), _log(engine, 2000, 2)
    _truth(engine, first, 3)
    _truth(engine, second, 7)
    got = prediction_log.decisions(engine, first.first_seq + 10, second.first_seq + 1500)
    want = _expected(engine, first.first_seq + 10, second.first_seq + 1500)
    pd.testing.assert_frame_equal(got, want)
    assert got["actual"].notna().sum() == want["actual"].notna().sum() > 1000
    # Rows committed after a read are seen by the next read (two copies of SQLite in one
    # process would miss them: the reason for the child process).
    third = _log(engine, 500, 3)
    got = prediction_log.decisions(engine, first.first_seq, third.first_seq + third.n_rows - 1)
    assert len(got) == 5500 and got["seq"].iloc[-1] == third.first_seq + 499


def test_an_empty_range_reads_as_empty_typed_columns(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(columns, "CHILD_ROWS", 0)
    found = prediction_log.decisions(engine, 10, 20)
    assert len(found) == 0
    assert list(found.dtypes.astype(str)) == ["int64", "int16", "float64", "bool", "float64"]


def test_a_failed_read_in_the_child_is_an_error_that_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from copml.store import open_store

    engine = open_store(f"sqlite:///{tmp_path / 'copml.db'}")
    monkeypatch.setattr(columns, "CHILD_ROWS", 0)
    gone = select(sa_table("no_such_table", column("x")))
    with pytest.raises(CopmlError, match=r"reading the store failed: .*no_such_table"):
        columns.read(engine, gone, pa.schema([("x", pa.int64())]), 10)
