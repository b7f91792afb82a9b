"""A prediction's score is the same bits alone, in a batch of 37 and in a batch of 1,000, for a
tabular champion and for the x-ray cascade (issue 12.1), so that a replay stays exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest

from batches import month
from copml import audit, registry, snapshots
from copml.evaluation import positive_scores
from copml.project import Project
from copml.score import score

# Where the 37 inputs sit in the batch of 1,000: spread over a chunk, never at their place in
# the batch of 37 (input i at 1 + 27 i: positions 1 … 973).
SPREAD = 1 + 27 * np.arange(37)
Inputs = TypeVar("Inputs", pd.DataFrame, np.ndarray)


def _in_a_thousand(inputs: Inputs, others: Inputs) -> Inputs:
    """A batch of 1,000: the 37 ``inputs`` at SPREAD, the 963 ``others`` around them."""
    order = np.empty(1000, dtype=np.int64)
    order[SPREAD] = np.arange(37)
    order[np.setdiff1d(np.arange(1000), SPREAD)] = 37 + np.arange(963)
    if isinstance(inputs, pd.DataFrame):
        return pd.concat([inputs, others], ignore_index=True).iloc[order].reset_index(drop=True)
    return np.concatenate([inputs, others])[order]


def test_the_rule_calls_the_model_on_chunks_of_one_shape_only() -> None:
    from copml import batch_independence

    seen: list[tuple[int, ...]] = []

    def predict(chunk: np.ndarray) -> np.ndarray:
        seen.append(chunk.shape)
        return chunk.sum(axis=1)

    inputs = np.random.default_rng(0).random((3500, 5))
    out = batch_independence.scores(predict, inputs, rows=1536)
    assert set(seen) == {(1536, 5)} and len(seen) == 3
    assert np.array_equal(out, inputs.sum(axis=1))
    assert batch_independence.scores(predict, inputs[:0], rows=1536).shape == (0,)


def _churn_rows(churn: Project, seed: int, size: int) -> pd.DataFrame:
    batch, _ = month(churn.root / f"rows{seed}", seed=seed, size=size)
    frame = snapshots.validate(snapshots.read_files([batch]), churn.spec.data, require_target=False)
    return frame[churn.spec.data.features].reset_index(drop=True)


def test_a_table_row_scores_the_same_bits_alone_and_in_any_batch(churn: Project) -> None:
    model = registry.load(churn, registry.champion(churn))  # type: ignore[arg-type]
    inputs = _churn_rows(churn, seed=21, size=37)
    thousand = _in_a_thousand(inputs, _churn_rows(churn, seed=22, size=963))
    alone = np.array([positive_scores(model, inputs.iloc[[i]])[0] for i in range(37)])
    together = positive_scores(model, inputs)
    among_many = positive_scores(model, thousand)[SPREAD]
    assert alone.dtype == np.float64
    assert (alone == together).all(), np.flatnonzero(alone != together)
    assert (alone == among_many).all(), np.flatnonzero(alone != among_many)


def test_a_batch_decision_replays_exactly_from_its_row_alone(
    churn: Project, tmp_path: Path
) -> None:
    batch, _ = month(tmp_path / "in", seed=23, size=1000)
    score(churn, batch, tmp_path / "out.csv")
    scored = pd.read_csv(tmp_path / "out.csv")
    for i in SPREAD[::4]:  # replay scores one row; the batch scored 1,000 together
        replayed = audit.replay(churn, scored["prediction_id"].iloc[i])
        assert replayed.identical and replayed.replayed_score == replayed.stored_score


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A small cascade trained on generated x-rays, and the generated files."""
    from copml.apps.xray.vision import cascade as cascades
    from copml.apps.xray.vision.synthetic import generate

    found = generate(
        tmp_path_factory.mktemp("xrays"), {"normal": 40, "bacteria": 30, "virus": 30}, size=64
    )
    trained, _ = cascades.train(found, seed=3, epochs=1, type_epochs=1, size=64)
    return trained, found


def test_an_xray_scores_the_same_bits_alone_and_in_any_batch(cascade: tuple[Any, Any]) -> None:
    from copml.apps.xray.vision.images import load_arrays

    model, found = cascade
    images = load_arrays(found, 64)
    rng = np.random.default_rng(5)
    inputs = images[rng.choice(len(images), 37, replace=False)]
    thousand = _in_a_thousand(inputs, images[rng.integers(0, len(images), 963)])
    columns = ["score", "type_probability"]
    alone = pd.concat([model.predict(inputs[i : i + 1]) for i in range(37)], ignore_index=True)
    together = model.predict(inputs)
    among_many = model.predict(thousand).iloc[SPREAD].reset_index(drop=True)
    for name in columns:
        a, b, c = (f[name].fillna(-1.0).to_numpy(np.float64) for f in (alone, together, among_many))
        assert (a == b).all(), (name, np.flatnonzero(a != b))
        assert (a == c).all(), (name, np.flatnonzero(a != c))
    # The estimator face (training's holdout, the gate, reproduce) gives the same bits too.
    files = pd.DataFrame({"file": [str(f) for f in found.files()]})
    faced = positive_scores(model, files.iloc[:37])
    faced_alone = np.array([positive_scores(model, files.iloc[[i]])[0] for i in range(37)])
    assert (faced == faced_alone).all()
    assert (faced == model.predict(images[:37])["score"].to_numpy()).all()
