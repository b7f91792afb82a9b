"""The store on both SQLite and a real PostgreSQL server (``COPML_TEST_PG_URL``)."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, func, inspect, select, text

from copml import events, prediction_log
from copml.apps.xray.answers import cascade_answers
from copml.store import (
    HEAD_REVISION,
    applications,
    heads,
    metadata,
    open_store,
    predictions,
    snapshots,
)
from copml.store.database import _MIGRATIONS, _engine


def _snapshot_row(engine: Engine, snapshot_id: str = "a" * 64) -> None:
    with engine.begin() as conn:
        conn.execute(
            snapshots.insert().values(
                id=snapshot_id,
                created_at=datetime.now(UTC),
                kind="batch",
                storage="copy",
                source="x.csv",
                path="/nowhere",
                n_rows=2,
                n_bytes=0,
                schema={},
                profile={},
            )
        )


def test_migrations_create_every_table(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert {"snapshots", "batches", "predictions", "feedback", "metric_windows", "events"} <= tables
    assert "cascade_answers" in tables  # the x-ray application's own branch
    with engine.connect() as conn:
        found = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    assert found == set(heads()) == {HEAD_REVISION, "xray_0001"}


def test_migration_matches_the_models(engine: Engine) -> None:
    """The core's and every application's tables, as their migrations made them."""
    every = MetaData()
    for table in [*metadata.tables.values(), *(t for a in applications() for t in a.tables)]:
        table.to_metadata(every)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), every)
    assert diff == []


def test_a_store_from_before_application_branches_keeps_its_rows(db_url: str) -> None:
    """Until now the core's revision 0004 created the x-ray table: such a store, at the
    core's head with that table full, gains the application's branch and loses nothing."""
    old = _engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))  # the core's branch alone
    with old.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, HEAD_REVISION)
        cascade_answers.create(conn)  # what the old revision 0004 made
    _snapshot_row(old)
    _write(old, 3, datetime.now(UTC), "3" * 16)
    with old.begin() as conn:
        conn.execute(
            cascade_answers.insert(),
            [{"seq": s, "image_sha256": "b" * 64, "models": {"m1": "1"}} for s in (1, 2, 3)],
        )
    old.dispose()
    engine = open_store(db_url)
    with engine.connect() as conn:
        found = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        kept = conn.execute(select(func.count()).select_from(cascade_answers)).scalar_one()
    assert found == set(heads()) and kept == 3


def test_open_store_is_idempotent(db_url: str) -> None:
    first = open_store(db_url)
    open_store.cache_clear()
    second = open_store(db_url)  # a second process: schema already at head
    assert inspect(second).has_table("predictions")
    first.dispose()
    second.dispose()


def _write(engine: Engine, n: int, when: datetime, key: str, before_commit=None):
    header = prediction_log.Header(key, when, "m", "1", "a" * 64, "batch")
    label, score = np.arange(n) % 2, np.linspace(0, 1, n)
    return prediction_log.write(engine, header, label, score, np.arange(n) % 10 == 0, before_commit)


def test_prediction_batches_round_trip(engine: Engine) -> None:
    _snapshot_row(engine)
    when = datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    first = _write(engine, 1000, when, "0" * 16)
    second = _write(engine, 10, when.replace(microsecond=1), "1" * 16)
    assert (first.first_seq, second.first_seq) == (1, 1001)  # contiguous ranges
    found = prediction_log.batches_between(engine, when, datetime(2026, 4, 1, tzinfo=UTC))
    assert [b.key for b in found] == ["0" * 16, "1" * 16]
    assert found[0].created_at == when  # aware UTC out, whatever the backend
    assert (
        prediction_log.batches_between(engine, when.replace(microsecond=2), when.replace(second=59))
        == []
    )  # ``>=`` compares times, not text, on SQLite too
    frame = prediction_log.read(engine, found[0])
    assert len(frame) == 1000 and frame["score"].iloc[-1] == 1.0
    assert frame["review"].sum() == 100 and frame["actual"].isna().all()
    ids = [
        frame["prediction_id"].iloc[3],
        second.prediction_ids()[9],
        "1" * 16 + "0000000a",
        "nonsense",
    ]
    assert prediction_log.resolve(engine, ids).tolist() == [4, 1010, pd.NA, pd.NA]


def test_a_failed_batch_leaves_nothing(engine: Engine) -> None:
    _snapshot_row(engine)

    def crash(conn, first) -> None:
        events.record(conn, "batch.scored", actor="system")
        raise RuntimeError("crash mid-way")

    with pytest.raises(RuntimeError, match="crash mid-way"):
        _write(engine, 100, datetime.now(UTC), "2" * 16, crash)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(predictions)).scalar() == 0
    assert prediction_log.batches_between(engine, None, datetime.now(UTC)) == []
    assert events.history(engine) == []


def test_events_are_appended_with_evidence(engine: Engine) -> None:
    with engine.begin() as conn:
        events.record(
            conn,
            "model.promoted",
            actor="user:ana",
            subject="model:x/1",
            reason="first",
            evidence={"auc": 0.9},
        )
        events.record(conn, "model.promoted", actor="policy:p", subject="model:x/2", reason="b")
    found = events.history(engine, kind="model.promoted")
    assert [e["subject"] for e in found] == ["model:x/2", "model:x/1"]
    assert found[1]["evidence"] == {"auc": 0.9} and found[1]["actor"] == "user:ana"
    assert events.history(engine, subject="model:x/1")[0]["reason"] == "first"


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_column_reads_see_every_commit_and_keep_the_wal(tmp_path) -> None:
    """The ADBC driver links its own SQLite: in the store's process, a connection of it,
    closed, took itself for the store's last and deleted the WAL under the store's open
    connections, whose later commits then went unseen (feedback loaded, a window without
    truth). It reads in a child process now: this process's connections are untouched."""
    import pyarrow as pa

    from copml.store.columns import CHILD_ROWS, read
    from copml.store.schema import events as event_rows

    engine = open_store(f"sqlite:///{tmp_path / 'copml.db'}")
    query = select(func.count()).select_from(event_rows)
    counted = pa.schema([("n", pa.int64())])
    with engine.connect() as held:  # a pooled connection stays open, as in a process
        held.execute(text("select 1"))
        for expected in (0, 1, 2):
            found = read(engine, query, counted, CHILD_ROWS)  # large enough for the child
            assert found.column("n").to_pylist() == [expected]
            assert (tmp_path / "copml.db-wal").exists()
            with engine.begin() as conn:
                events.record(conn, events.Kind.FEEDBACK_LOADED, actor="system", subject="x")
