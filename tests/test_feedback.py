from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from batches import month
from copml import prediction_log
from copml.errors import DataValidationError
from copml.feedback import load
from copml.project import Project
from copml.score import score
from copml.store import events, feedback, open_store

SCORED_AT = datetime(2026, 3, 1, 6, tzinfo=UTC)
OBSERVED_AT = datetime(2026, 3, 31, tzinfo=UTC)


def _scored(project: Project) -> tuple[pd.DataFrame, pd.DataFrame]:
    batch, outcome = month(project.root / "in")
    out = project.root / "scores.csv"
    score(project, batch, out, at=SCORED_AT)
    return pd.read_csv(out), outcome


def _stored(project: Project) -> pd.DataFrame:
    """Every logged prediction that has ground truth, with its public id."""
    engine = open_store(project.db_url)
    frames = [
        prediction_log.read(engine, b)
        for b in prediction_log.batches_between(engine, None, datetime(2030, 1, 1, tzinfo=UTC))
    ]
    logged = pd.concat(frames) if frames else pd.DataFrame(columns=["seq", "prediction_id"])
    with engine.connect() as conn:
        truth = pd.DataFrame(
            conn.execute(select(feedback)).mappings().all(),
            columns=[c.name for c in feedback.columns],
        )
    return truth.merge(logged[["seq", "prediction_id"]], left_on="prediction_seq", right_on="seq")


def _events(project: Project) -> int:
    with open_store(project.db_url).connect() as conn:
        return conn.execute(select(func.count()).select_from(events)).scalar()


def test_by_entity_id_and_idempotent(churn: Project, tmp_path: Path) -> None:
    scores, outcome = _scored(churn)
    path = tmp_path / "truth.csv"
    outcome.assign(observed_at=OBSERVED_AT.isoformat()).to_csv(path, index=False)
    first = load(churn, path)
    assert (first.loaded, first.unknown, first.corrected) == (500, 0, 0)
    stored = _stored(churn).merge(scores, on="prediction_id")
    truth = stored.merge(outcome, on="customerID")
    assert (truth["actual"] == truth["Churn"].eq("Yes").astype(int)).all()
    assert (stored["observed_at"] == OBSERVED_AT).all()
    n_events = _events(churn)
    again = load(churn, path)
    assert (again.loaded, again.unchanged, again.corrected) == (0, 500, 0)
    assert len(_stored(churn)) == 500 and _events(churn) == n_events  # nothing changed


def test_by_prediction_id_and_corrections(churn: Project, tmp_path: Path) -> None:
    scores, _ = _scored(churn)
    path = tmp_path / "truth.csv"
    frame = pd.DataFrame({"prediction_id": scores["prediction_id"], "actual": "No"})
    frame.to_csv(path, index=False)
    assert load(churn, path).loaded == 500
    frame.loc[:9, "actual"] = "Yes"
    frame.to_csv(path, index=False)
    result = load(churn, path)
    assert (result.loaded, result.corrected, result.unchanged) == (0, 10, 490)
    assert _stored(churn)["actual"].sum() == 10


def test_unknown_ids_refuse_the_file_unless_skipped(churn: Project, tmp_path: Path) -> None:
    _, outcome = _scored(churn)
    path = tmp_path / "truth.csv"
    extra = pd.DataFrame({"customerID": ["9999-NOONE", "9998-NOONE"], "Churn": ["Yes", "No"]})
    pd.concat([outcome, extra]).to_csv(path, index=False)
    n_events = _events(churn)
    with pytest.raises(DataValidationError, match=r"2 of 502 rows name no known prediction"):
        load(churn, path)
    assert _stored(churn).empty and _events(churn) == n_events
    result = load(churn, path, skip_unknown=True)
    assert (result.loaded, result.unknown) == (500, 2)
    assert set(result.unknown_examples) == {"9999-NOONE", "9998-NOONE"}


def test_outcome_before_the_prediction_matches_nothing(churn: Project, tmp_path: Path) -> None:
    _, outcome = _scored(churn)
    path = tmp_path / "truth.csv"
    outcome.assign(observed_at="2026-01-15T00:00:00Z").to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"500 of 500 rows name no known prediction"):
        load(churn, path)


def test_bad_labels_and_columns(churn: Project, tmp_path: Path) -> None:
    scores, _ = _scored(churn)
    path = tmp_path / "truth.csv"
    pd.DataFrame(
        {"prediction_id": scores["prediction_id"][:3], "actual": ["Yes", "maybe", "No"]}
    ).to_csv(path, index=False)
    refusal = r"1 values are not one of the classes No, Yes \(lines 3"
    with pytest.raises(DataValidationError, match=refusal):
        load(churn, path)
    pd.DataFrame({"who": ["a"], "actual": ["Yes"]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"needs a 'prediction_id' or 'customerID'"):
        load(churn, path)
    assert _stored(churn).empty
