"""The store on both SQLite and a real PostgreSQL server (``COPML_TEST_PG_URL``)."""

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select, text

from copml import events
from copml.store import (
    HEAD_REVISION,
    bind_value,
    bulk_insert,
    metadata,
    open_store,
    predictions,
    snapshots,
)


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
    assert {"snapshots", "predictions", "feedback", "metric_windows", "events"} <= tables
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            HEAD_REVISION
        )


def test_migration_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_open_store_is_idempotent(db_url: str) -> None:
    first = open_store(db_url)
    open_store.cache_clear()
    second = open_store(db_url)  # a second process: schema already at head
    assert inspect(second).has_table("predictions")
    first.dispose()
    second.dispose()


def test_bulk_insert_round_trips_times_in_utc(engine: Engine) -> None:
    _snapshot_row(engine)
    when = datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    stamp = bind_value(engine, predictions.c.created_at, when)
    review = bind_value(engine, predictions.c.review, False)
    rows = [
        (f"p{i}", stamp, "m", "1", f"k{i}", "a" * 64, i, i % 2, 0.1 * i, review, "batch")
        for i in range(1000)
    ]
    cols = (
        "id",
        "created_at",
        "model_name",
        "model_version",
        "entity_key",
        "snapshot_id",
        "row_index",
        "label",
        "score",
        "review",
        "origin",
    )
    with engine.begin() as conn:
        bulk_insert(conn, predictions, cols, rows)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(predictions)).scalar() == 1000
        got = conn.execute(select(predictions.c.created_at).limit(1)).scalar()
        assert got.replace(tzinfo=UTC) == when
        window = conn.execute(
            select(func.count()).where(predictions.c.created_at >= when)
        ).scalar()  # comparisons with aware datetimes work on both backends
        assert window == 1000


def test_a_failed_transaction_leaves_nothing(engine: Engine) -> None:
    _snapshot_row(engine)
    stamp = bind_value(engine, predictions.c.created_at, datetime.now(UTC))
    review = bind_value(engine, predictions.c.review, False)
    cols = (
        "id",
        "created_at",
        "model_name",
        "model_version",
        "snapshot_id",
        "row_index",
        "label",
        "score",
        "review",
        "origin",
    )
    with pytest.raises(RuntimeError), engine.begin() as conn:
        bulk_insert(
            conn, predictions, cols, [("x1", stamp, "m", "1", "a" * 64, 0, 1, 0.9, review, "batch")]
        )
        events.record(conn, "batch.scored", actor="system")
        raise RuntimeError("crash mid-way")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(predictions)).scalar() == 0
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
