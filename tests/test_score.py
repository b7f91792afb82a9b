from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from batches import month
from copml import registry, snapshots
from copml.errors import CopmlError, DataValidationError, NotFoundError
from copml.project import Project
from copml.score import score
from copml.store import events, open_store, predictions
from copml.store import snapshots as snapshots_table


def _count(project: Project, table) -> int:
    with open_store(project.db_url).connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_every_row_scored_and_logged(churn: Project) -> None:
    batch, _ = month(churn.root / "in")
    out = churn.root / "out" / "scores.csv"
    result = score(churn, batch, out, at=datetime(2026, 2, 1, tzinfo=UTC))
    written = pd.read_csv(out)
    source = pd.read_csv(batch)
    assert list(written.columns) == [
        "customerID",
        "label",
        "score",
        "model_version",
        "prediction_id",
    ]
    assert len(written) == len(source) == result.rows == 500
    assert (written["customerID"] == source["customerID"]).all()
    assert set(written["label"]) <= {"Yes", "No"} and written["score"].between(0, 1).all()
    assert (written["label"].eq("Yes") == written["score"].ge(0.5)).all()
    assert written["prediction_id"].is_unique and (written["model_version"] == 1).all()
    with open_store(churn.db_url).connect() as conn:
        stored = pd.DataFrame(conn.execute(select(predictions)).mappings().all())
    assert set(stored["id"]) == set(written["prediction_id"])
    assert (stored["model_version"] == "1").all() and (
        stored["snapshot_id"] == result.snapshot_id
    ).all()
    merged = written.merge(stored, left_on="prediction_id", right_on="id")
    assert (merged["score_x"] - merged["score_y"]).abs().max() < 1e-12
    assert (merged["row_index"] == merged.index).all() or merged["row_index"].is_unique
    assert merged["created_at"].iloc[0] == datetime(2026, 2, 1, tzinfo=UTC)


def test_scores_match_the_registered_model(churn: Project) -> None:
    batch, _ = month(churn.root / "in")
    out = churn.root / "out.parquet"
    score(churn, batch, out)
    model = registry.load(churn, registry.champion(churn))  # type: ignore[arg-type]
    features = snapshots.read_files([batch])
    frame = snapshots.validate(features, churn.spec.data, require_target=False)
    expected = model.predict_proba(frame[churn.spec.data.features])[:, 1]
    assert (pq.read_table(out).to_pandas()["score"].to_numpy() == expected).all()


def test_pii_is_never_stored_in_clear(churn: Project) -> None:
    batch, _ = month(churn.root / "in")
    result = score(churn, batch, churn.root / "out.csv")
    ids = set(pd.read_csv(batch)["customerID"])
    with open_store(churn.db_url).connect() as conn:
        keys = {r[0] for r in conn.execute(select(predictions.c.entity_key))}
    assert keys and not keys & ids
    frozen = pq.read_table(snapshots.get(open_store(churn.db_url), result.snapshot_id).path)
    assert not set(frozen.column("customerID").to_pylist()) & ids
    raw = (churn.home / "copml.db").read_bytes()
    assert not any(i.encode() in raw for i in list(ids)[:50])
    assert (churn.home / "secret.key").stat().st_mode & 0o077 == 0


def test_score_before_any_model(fresh_churn: Project) -> None:
    batch, _ = month(fresh_churn.root / "in")
    with pytest.raises(NotFoundError, match=r"no champion model yet"):
        score(fresh_churn, batch, fresh_churn.root / "out.csv")
    assert not (fresh_churn.root / "out.csv").exists()
    assert _count(fresh_churn, predictions) == 0 and _count(fresh_churn, events) == 0


def test_bad_batch_changes_nothing(churn: Project) -> None:
    batch, _ = month(churn.root / "in")
    frame = pd.read_csv(batch, dtype=str, keep_default_na=False)
    frame.loc[7, "InternetService"] = "Satellite"
    frame.to_csv(batch, index=False)
    before = (_count(churn, predictions), _count(churn, snapshots_table), _count(churn, events))
    with pytest.raises(DataValidationError, match=r"InternetService.*'Satellite'.*line 9"):
        score(churn, batch, churn.root / "out.csv")
    after = (_count(churn, predictions), _count(churn, snapshots_table), _count(churn, events))
    assert before == after and not (churn.root / "out.csv").exists()


def test_tampered_artifact_is_refused(churn: Project) -> None:
    mv = registry.champion(churn)
    assert mv is not None
    pkl = registry.local_copy(churn, mv) / "model.pkl"
    pkl.write_bytes(pkl.read_bytes() + b"\0")
    registry._load.cache_clear()
    batch, _ = month(churn.root / "in")
    with pytest.raises(CopmlError, match=r"does not match .* recorded at registration"):
        score(churn, batch, churn.root / "out.csv")
    assert _count(churn, predictions) == 0


def test_output_is_written_only_after_commit(churn: Project, tmp_path: Path) -> None:
    batch, _ = month(churn.root / "in")
    out = tmp_path / "scores.csv"
    score(churn, batch, out)
    assert out.exists() and not list(tmp_path.glob(".*staged*"))
