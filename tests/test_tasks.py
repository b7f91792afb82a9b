"""The multiclass and regression kinds end to end on scikit-learn's real data sets (issue 13,
item 2 and its "must show"): wine (3 cultivars) and digits (10 classes) as multiclass,
diabetes (progression after a year) as regression. Each project goes snapshot → train →
gate → promote → ``copml score`` → ``copml serve`` (a real server) → feedback → monitor →
a policy on a task metric → audit + replay → explain, and every figure copml reports is
checked against scikit-learn's own functions on the same labelled rows.

A quarter of each data set is kept out of the project's training data and arrives later as
new rows to score, serve and label, so holdout figures are those of unseen rows."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_diabetes, load_digits, load_wine
from sklearn.model_selection import train_test_split

from copml import audit, events, feedback, registry
from copml.errors import CopmlError
from copml.monitor.window import Window, monitor
from copml.operate.runner import operate_once
from copml.project import Project, load_project
from copml.store import open_store
from copml.train import train
from projects import trained
from store_state import assert_unchanged, capture
from test_cli import run
from test_serve import Server, start

# The team's code: a scaled linear model on the chosen features (all by default). The
# ColumnTransformer picks columns by name, so the model reads any frame of the features.
TEAM_CODE = """
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

TARGET = "{target}"
TASK = "{task}"


def train(data, params, seed):
    features = data.drop(columns=[TARGET])
    chosen = [c for c in str(params.get("features") or "").split(",") if c]
    prepare = ColumnTransformer([("scaled", StandardScaler(), chosen or list(features.columns))])
    if TASK == "regression":
        model = LinearRegression()
    else:
        model = LogisticRegression(max_iter=5000, random_state=seed)
    return Pipeline([("prepare", prepare), ("model", model)]).fit(features, data[TARGET])
"""

OWNERS = "owners: {data_engineering: de@x.org, data_science: ds@x.org, ml_ops: ops@x.org}\n"
PROBABILITY = "probability."


@dataclass(frozen=True)
class Dataset:
    """A scikit-learn data set as copml reads it: an ``id``, float features, the target
    (class names as text), split into the project's rows and the rows that arrive later."""

    name: str
    target: str
    features: list[str]
    classes: list[str]
    known: pd.DataFrame
    new: pd.DataFrame

    def truth(self, ids: pd.Series) -> pd.Series:
        return self.new.set_index("id").loc[ids, self.target]


def _dataset(name: str, loaded: Any, target: str, classes: bool, text_id: bool) -> Dataset:
    frame = loaded.frame.rename(columns={"target": target}).astype(
        {c: "float64" for c in loaded.feature_names}
    )
    ids = np.arange(1, len(frame) + 1)
    frame.insert(0, "id", [f"{name}-{i:04d}" for i in ids] if text_id else ids)
    names: list[str] = []
    if classes:
        names = [f"class_{i}" for i in range(int(frame[target].max()) + 1)]
        frame[target] = [names[int(i)] for i in frame[target]]
    else:
        frame[target] = frame[target].astype("float64")
    known, new = train_test_split(
        frame, test_size=0.25, random_state=0, stratify=frame[target] if classes else None
    )
    return Dataset(
        name,
        target,
        list(loaded.feature_names),
        names,
        known.reset_index(drop=True),
        new.reset_index(drop=True),
    )


# Digits are numbered (an integer id), wines and patients named (a text id).
WINE = _dataset("wine", load_wine(as_frame=True), "cultivar", classes=True, text_id=True)
DIGITS = _dataset("digits", load_digits(as_frame=True), "digit", classes=True, text_id=False)
DIABETES = _dataset(
    "diabetes", load_diabetes(as_frame=True), "progression", classes=False, text_id=True
)


def spec_text(data: Dataset, task: str, model: str, requirements: str, policies: str = "") -> str:
    """A copml.yaml for ``data``; ``model`` and ``requirements`` are indented YAML lines,
    ``policies`` (last in the file) the items of the policy list."""
    target = (
        f"{{type: category, categories: [{', '.join(data.classes)}]}}"
        if data.classes
        else "{type: float}"
    )
    columns = "".join(f"    {name}: {{type: float}}\n" for name in data.features)
    id_type = "integer" if pd.api.types.is_integer_dtype(data.known["id"]) else "string"
    return (
        f"project: {data.name}-{task}\n"
        f"objective: Tell the {data.target} of a row from its measurements.\n"
        + OWNERS
        + "data:\n  source: data/rows.csv\n  id: id\n"
        + f"  target: {data.target}\n  columns:\n    id: {{type: {id_type}}}\n"
        + columns
        + f"    {data.target}: {target}\n"
        + f"model:\n  train: team:train\n  task: {task}\n  seed: 7\n"
        + model
        + "serving: {mode: realtime, availability: 0.999}\n"
        + "effectiveness:\n  window: 1 month\n"
        + requirements
        + ("policies:\n" + policies if policies else "")
    )


def build(root: Path, data: Dataset, spec: str, code: str = TEAM_CODE) -> Project:
    """A project over ``data.known`` with one snapshot and v1 trained and champion."""
    task = "regression" if not data.classes else "multiclass"
    (root / "data").mkdir(parents=True)
    data.known.to_csv(root / "data" / "rows.csv", index=False)
    (root / "team.py").write_text(code.replace("{target}", data.target).replace("{task}", task))
    (root / "copml.yaml").write_text(spec)
    return trained(load_project(root))


def copied(source: Path, folder: Path) -> Project:
    root = folder / "project"
    shutil.copytree(source, root)
    return load_project(root)


def with_policies(project: Project, policies: str) -> Project:
    """The project with its policy list replaced (policies are last in its spec)."""
    path = project.root / "copml.yaml"
    text = path.read_text()
    text = text[: text.index("policies:")] if "policies:" in text else text
    path.write_text(text + "policies:\n" + policies)
    return load_project(project.root)


def as_json(*args: str, project: Project) -> Any:
    return json.loads(run(*args, "--json", cwd=project.root).stdout)


def scored_file(project: Project, data: Dataset, rows: int | None = None) -> pd.DataFrame:
    """``copml score`` of the new rows (id and features, no target): the output by id."""
    incoming = project.root / "in" / "new.csv"
    incoming.parent.mkdir(exist_ok=True)
    new = data.new if rows is None else data.new.head(rows)
    new[["id", *data.features]].to_csv(incoming, index=False)
    done = as_json("score", str(incoming), "-o", "out/scores.parquet", project=project)
    assert done["rows"] == len(new), done
    return pd.read_parquet(project.root / "out" / "scores.parquet").set_index("id")


def instances(data: Dataset, n: int) -> list[dict[str, Any]]:
    """The first ``n`` new rows as request instances, every float in full (``to_json``
    would keep 10 digits: another input than the file's)."""
    return data.new[["id", *data.features]].head(n).to_dict(orient="records")


def predict(server: Server, rows: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/predict",
        json={"instances": rows},
        headers=server.headers("service"),
        timeout=60,
    )


def refused_instance(server: Server, row: dict[str, Any], field: str, bad: object) -> None:
    """An instance whose ``field`` is not a number: 422 naming it, nothing stored."""
    before = capture(server.project)
    answer = predict(server, [{**row, field: bad}])
    assert answer.status_code == 422, answer.text
    assert any(field in map(str, e["loc"]) for e in answer.json()["detail"]), answer.text
    assert_unchanged(before, server.project)


def send_feedback(server: Server, prediction_id: str, actual: object) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/feedback",
        json={"prediction_id": prediction_id, "actual": actual},
        headers=server.headers("service"),
        timeout=60,
    )


def refused_feedback(server: Server, prediction_id: str, actual: object) -> None:
    before = capture(server.project)
    answer = send_feedback(server, prediction_id, actual)
    assert answer.status_code == 422, answer.text
    assert "actual" in str(answer.json()["detail"]), answer.text
    assert_unchanged(before, server.project)


def load_feedback_file(project: Project, rows: pd.DataFrame, name: str) -> int:
    """Ground truth by prediction id, as a team would send it."""
    path = project.root / name
    rows.to_csv(path, index=False)
    return feedback.load(project, path).loaded


def refused_feedback_file(project: Project, prediction_id: str, actual: object) -> None:
    """A file whose ``actual`` is not one the task knows: refused naming the column."""
    before = capture(project)
    path = project.root / "bad-truth.csv"
    pd.DataFrame({"prediction_id": [prediction_id], "actual": [actual]}).to_csv(path, index=False)
    with pytest.raises(CopmlError, match="actual"):
        feedback.load(project, path)
    path.unlink()
    assert_unchanged(before, project)


def fires(project: Project, metric: str, value: float) -> None:
    """Two alert policies on ``metric``, one just past the window's figure (it fires), one
    just short of it (it holds): ``operate`` acts on the first only."""
    op = ">" if project.spec.metrics.direction(metric) == "lower" else "<"
    past, short = (value - 1e-3, value + 1e-3) if op == ">" else (value + 1e-3, value - 1e-3)
    project = with_policies(
        project,
        f"  - {{name: fires, when: {metric} {op} {past:.6f} for 1 window, do: [alert]}}\n"
        f"  - {{name: holds, when: {metric} {op} {short:.6f}, do: [alert]}}\n",
    )
    result = operate_once(project)
    outcome = {e.policy: (e.outcome, e.acted) for e in result.evaluations}
    assert outcome == {"fires": (True, True), "holds": (False, False)}, outcome
    opened = events.history(open_store(project.db_url), kind="alert.opened")
    assert [e for e in opened if "fires" in json.dumps(e, default=str)], opened


def approx(expected: float) -> Any:
    return pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True)


def window_metrics(window: Window, expected: dict[str, float]) -> None:
    found = {name: window.metrics.get(name) for name in expected}
    assert found == {name: approx(value) for name, value in expected.items()}


def explained(project: Project, prediction_id: str) -> dict[str, Any]:
    """``copml explain --json``: one value per feature, adding up to the output."""
    found = as_json("explain", prediction_id, project=project)
    assert set(found["values"]) == set(project.spec.data.features), found
    total = found["base_value"] + sum(found["values"].values())
    assert total == pytest.approx(found["output"], abs=1e-9)
    return found


def replayed(project: Project, served: str, from_file: str, version: str) -> None:
    """The request's own input (CLI) and a file's row (its input snapshot) replay alike."""
    again = audit.replay(project, from_file)
    assert again.identical and again.model_version == version, again
    audited = as_json("audit", served, "--replay", project=project)
    assert audited["replay"]["identical"], audited["replay"]


def gate_evidence(project: Project, kind: str, version: str) -> dict[str, Any]:
    subject = f"model:{project.spec.project}/{version}"
    found = events.latest(open_store(project.db_url), kind, subject)
    assert found is not None, (kind, subject)
    return found["evidence"]


# ---------------------------------------------------------------------------- multiclass


def _margin(model: Any, row: pd.DataFrame, label: str, classes: list[str]) -> float:
    """The raw decision value of the predicted class (the model may know the classes by
    their names or by their positions)."""
    known = [str(c) for c in model.classes_]
    column = known.index(label) if label in known else classes.index(label)
    return float(model.decision_function(row)[0, column])


def _check_probabilities(found: dict[str, float], label: str, score: float, classes: list) -> None:
    assert list(found) == classes or set(found) == set(classes), found
    assert sum(found.values()) == pytest.approx(1.0, abs=1e-9)
    assert label == max(found, key=found.__getitem__) and score == max(found.values())


def _multiclass_expected(
    actual: list[str], predicted: list[str], proba: np.ndarray, classes: list[str]
) -> dict[str, float]:
    """The window's figures as scikit-learn computes them on the same rows."""
    expected = {
        "accuracy": skm.accuracy_score(actual, predicted),
        "balanced_accuracy": skm.balanced_accuracy_score(actual, predicted),
        "f1_macro": skm.f1_score(actual, predicted, average="macro"),
        "f1_weighted": skm.f1_score(actual, predicted, average="weighted"),
        "log_loss": skm.log_loss(actual, proba, labels=classes),
    }
    recall = skm.recall_score(actual, predicted, labels=classes, average=None, zero_division=np.nan)
    precision = skm.precision_score(
        actual, predicted, labels=classes, average=None, zero_division=np.nan
    )
    for c, r, p in zip(classes, recall, precision, strict=True):
        expected[f"recall.class={c}"], expected[f"precision.class={c}"] = float(r), float(p)
    return {k: float(v) for k, v in expected.items()}


@pytest.fixture(scope="module")
def trained_wine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wine with v1 on two measurements only (flavanoids, proline), champion; a review when
    the top two cultivars are within 0.1."""
    root = tmp_path_factory.mktemp("wine") / "project"
    spec = spec_text(
        WINE,
        "multiclass",
        '  review_margin: 0.1\n  params: {features: "flavanoids,proline"}\n',
        "  accuracy: {min: 0.8}\n  recall.class=class_1: {min: 0.5}\n"
        "promotion: {metric: accuracy}\n",
    )
    build(root, WINE, spec)
    return root


def test_wine_multiclass_end_to_end(trained_wine: Path, tmp_path: Path) -> None:
    """Gate by accuracy → score → serve (per-class probabilities, margin review, 422s) →
    feedback → the window's figures = scikit-learn's → a policy on accuracy fires → audit +
    replay identical → explain adds up to the predicted class's margin."""
    project = copied(trained_wine, tmp_path)
    root, classes = project.root, WINE.classes

    # v2 reads all thirteen measurements: the gate passes it by accuracy (higher is better).
    v2 = train(project, params={"features": ""})
    assert v2.version == "2" and not v2.champion
    run("models", "promote", "2", "--reason", "all thirteen measurements", cwd=root)
    assert registry.champion(project).version == "2"  # type: ignore[union-attr]
    gate = gate_evidence(project, "model.validated", "2")
    assert gate["champion"] == "1" and gate["metric"] == "accuracy"
    mine, theirs = gate["candidate_metrics"], gate["champion_metrics"]
    assert mine["accuracy"] >= theirs["accuracy"], (mine, theirs)
    assert {"balanced_accuracy", "f1_macro", "log_loss", "recall.class=class_1"} <= set(mine)

    by_id = scored_file(project, WINE)
    columns = {"label", "score", "model_version", "prediction_id"}
    assert columns | {f"{PROBABILITY}{c}" for c in classes} <= set(by_id.columns), by_id.columns
    assert set(by_id["model_version"]) == {"2"} and set(by_id["label"]) <= set(classes)
    proba = by_id[[f"{PROBABILITY}{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert list(by_id["label"]) == [classes[i] for i in proba.argmax(axis=1)]
    np.testing.assert_array_equal(by_id["score"].to_numpy(), proba.max(axis=1))
    truth = WINE.truth(by_id.index)
    print(f"wine v2 accuracy on {len(by_id)} unseen rows:", skm.accuracy_score(truth, by_id.label))

    rows = instances(WINE, 4)
    server = start(project)
    try:
        answer = predict(server, rows)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "2"
        predictions = answer.json()["predictions"]
        for row, p in zip(rows, predictions, strict=True):
            assert {"prediction_id", "label", "score", "review", "probabilities"} <= set(p), p
            _check_probabilities(p["probabilities"], p["label"], p["score"], classes)
            # Four rows in a request, 45 in a file: each row's probabilities are its own.
            assert p["probabilities"] == {
                c: by_id.loc[row["id"], f"{PROBABILITY}{c}"] for c in classes
            }
            top, second = sorted(p["probabilities"].values(), reverse=True)[:2]
            # The margin rule, or a measurement outside the range wine was trained on
            # (133 rows: a new one may fall outside), which a person sees as well.
            unlike = p.get("reason") == "out_of_distribution"
            assert p["review"] is (top - second < 0.1 or unlike), p
            assert not unlike or all("outside the trained range" in c for c in p["unlike_training"])
        refused_instance(server, rows[0], "alcohol", "strong")
        first, second = predictions[0], predictions[1]
        actual = str(WINE.truth(pd.Series([rows[0]["id"]])).iloc[0])
        told = send_feedback(server, first["prediction_id"], actual)
        assert told.status_code < 300, told.text
        refused_feedback(server, second["prediction_id"], "class_9")
    finally:
        server.kill()

    # Ground truth for the file's rows; a label that is no class is refused by name.
    refused_feedback_file(project, by_id["prediction_id"].iloc[0], "merlot")
    labelled = pd.DataFrame({"prediction_id": by_id["prediction_id"], "actual": truth.to_numpy()})
    assert load_feedback_file(project, labelled, "truth.csv") == len(by_id)
    window = monitor(project)
    assert window.n_labelled == len(by_id) + 1  # the file's rows and the one sent to the API
    served_proba = np.array([[first["probabilities"][c] for c in classes]])
    expected = _multiclass_expected(
        [*truth, actual],
        [*by_id["label"], first["label"]],
        np.vstack([proba, served_proba]),
        classes,
    )
    window_metrics(window, expected)
    assert (
        math.isfinite(window.metrics["drift.prediction"])
        and window.metrics["drift.prediction"] >= 0
    )
    fires(project, "accuracy", window.metrics["accuracy"])

    replayed(project, first["prediction_id"], by_id["prediction_id"].iloc[-1], "2")
    found = explained(project, first["prediction_id"])
    model = registry.load(project, registry.get(project, "2"))
    row = pd.DataFrame([{f: rows[0][f] for f in WINE.features}])
    margin = _margin(model, row, first["label"], classes)
    assert found["output"] == pytest.approx(margin, abs=1e-9), (found, margin)
    assert found["score"] == first["score"]


def test_digits_ten_classes_serve_and_score(tmp_path: Path) -> None:
    """Ten classes named class_0…class_9, rows numbered by an integer id: the API and the
    file give each row the same ten probabilities, the label their argmax; unseen accuracy
    well above chance; 422 on a pixel that is not a number."""
    spec = spec_text(DIGITS, "multiclass", "", "  accuracy: {min: 0.8}\n")
    project = build(tmp_path / "digits", DIGITS, spec)
    rows = instances(DIGITS, 3)
    server = start(project)
    try:
        answer = predict(server, rows)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        for p in predictions:
            _check_probabilities(p["probabilities"], p["label"], p["score"], DIGITS.classes)
        refused_instance(server, rows[0], "pixel_3_4", "dark")
    finally:
        server.kill()

    by_id = scored_file(project, DIGITS, rows=200)
    proba = by_id[[f"{PROBABILITY}{c}" for c in DIGITS.classes]].to_numpy()
    assert list(by_id["label"]) == [DIGITS.classes[i] for i in proba.argmax(axis=1)]
    accuracy = skm.accuracy_score(DIGITS.truth(by_id.index), by_id["label"])
    assert accuracy > 0.9, f"digits accuracy on {len(by_id)} unseen rows: {accuracy:.3f}"
    for row, p in zip(rows, predictions, strict=True):
        # Three rows in a request, 200 in a file: each row's probabilities are its own.
        assert p["label"] == by_id.loc[row["id"], "label"]
        assert p["probabilities"] == {
            c: by_id.loc[row["id"], f"{PROBABILITY}{c}"] for c in DIGITS.classes
        }


# ---------------------------------------------------------------------------- regression


def _regression_expected(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """The window's figures as scikit-learn computes them (bias: truth minus prediction)."""
    mape = (
        math.nan
        if (actual == 0).any()
        else float(skm.mean_absolute_percentage_error(actual, predicted))
    )
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(actual, predicted))),
        "mae": float(skm.mean_absolute_error(actual, predicted)),
        "mape": mape,
        "r2": float(skm.r2_score(actual, predicted)),
        "bias": float(np.mean(actual - predicted)),
    }


DIABETES_REQUIREMENTS = "  rmse: {max: 70}\n  mae: {max: 60}\npromotion: {metric: rmse}\n"


def regression_end_to_end(project: Project, data: Dataset, tolerance: float) -> None:
    """score → serve (a value, 422s) → feedback → the window's figures = scikit-learn's
    (MAPE NaN once the truth has a zero) → a policy on RMSE fires → audit + replay
    identical → explain adds up to the predicted value (``tolerance``: the model's own
    arithmetic, float32 for XGBoost)."""
    version = registry.champion(project).version  # type: ignore[union-attr]
    by_id = scored_file(project, data)
    assert {"label", "score", "model_version", "prediction_id"} <= set(by_id.columns)
    assert not [c for c in by_id.columns if c.startswith(PROBABILITY)]
    np.testing.assert_array_equal(by_id["label"].astype("float64"), by_id["score"])
    model = registry.load(project, registry.get(project, version))
    np.testing.assert_allclose(
        by_id["score"], model.predict(data.new.set_index("id").loc[by_id.index, data.features])
    )
    # Unseen rows: the model against a mean predictor (the training rows' mean).
    truth = data.truth(by_id.index).to_numpy()
    mine = float(np.sqrt(skm.mean_squared_error(truth, by_id["score"])))
    mean = float(
        np.sqrt(skm.mean_squared_error(truth, np.full(len(truth), data.known[data.target].mean())))
    )
    print(f"{data.name} RMSE on {len(truth)} unseen rows: {mine:.2f}, mean predictor {mean:.2f}")
    assert mine < mean, f"holdout RMSE {mine:.2f} vs mean predictor {mean:.2f}"

    rows = instances(data, 3)
    server = start(project)
    try:
        answer = predict(server, rows)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        for row, p in zip(rows, predictions, strict=True):
            assert {"prediction_id", "label", "score", "review"} <= set(p), p
            assert p["score"] == p["label"] == by_id.loc[row["id"], "score"]
            assert p["review"] is False  # no interval declared
        refused_instance(server, rows[0], "bmi", "heavy")
        first, second = predictions[0], predictions[1]
        actual = float(data.truth(pd.Series([rows[0]["id"]])).iloc[0])
        told = send_feedback(server, first["prediction_id"], actual)
        assert told.status_code < 300, told.text
        refused_feedback(server, second["prediction_id"], "lots")
        # A truth of 0: MAPE has no meaning from here on.
        told = send_feedback(server, second["prediction_id"], 0.0)
        assert told.status_code < 300, told.text
    finally:
        server.kill()

    refused_feedback_file(project, by_id["prediction_id"].iloc[0], "a lot")
    labelled = pd.DataFrame({"prediction_id": by_id["prediction_id"], "actual": truth})
    assert load_feedback_file(project, labelled, "truth.csv") == len(by_id)
    window = monitor(project)
    assert window.n_labelled == len(by_id) + 2
    actual_all = np.concatenate([truth, [actual, 0.0]])
    predicted_all = np.concatenate([by_id["score"], [first["score"], second["score"]]])
    expected = _regression_expected(actual_all, predicted_all)
    assert math.isnan(expected["mape"])
    window_metrics(window, expected)
    for name in ("drift.prediction", "drift.residual"):
        assert math.isfinite(window.metrics[name]) and window.metrics[name] >= 0, name
    fires(project, "rmse", window.metrics["rmse"])

    replayed(project, first["prediction_id"], by_id["prediction_id"].iloc[-1], version)
    found = explained(project, first["prediction_id"])
    assert found["score"] == first["score"]
    assert found["output"] == pytest.approx(first["score"], abs=tolerance)
    row = pd.DataFrame([{f: rows[0][f] for f in data.features}])
    assert found["output"] == pytest.approx(float(model.predict(row)[0]), abs=tolerance)


@pytest.fixture(scope="module")
def trained_diabetes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Diabetes with v1 (linear, all ten measurements) champion."""
    root = tmp_path_factory.mktemp("diabetes") / "project"
    build(root, DIABETES, spec_text(DIABETES, "regression", "", DIABETES_REQUIREMENTS))
    return root


def test_diabetes_regression_end_to_end(trained_diabetes: Path, tmp_path: Path) -> None:
    """A v2 on body-mass index alone is refused by the gate (RMSE, lower is better), then
    the champion goes through score, serve, feedback, monitor, policy, audit and explain."""
    project = copied(trained_diabetes, tmp_path)
    v2 = train(project, params={"features": "bmi"})
    assert v2.version == "2" and not v2.champion
    refused = run("models", "promote", "2", "--reason", "simpler", cwd=project.root, check_exit=1)
    assert "Traceback" not in refused.stdout + refused.stderr
    assert "has not passed the gate" in refused.stderr, refused.stderr
    gate = gate_evidence(project, "model.refused", "2")
    assert gate["metric"] == "rmse" and gate["champion"] == "1"
    mine, theirs = gate["candidate_metrics"], gate["champion_metrics"]
    assert mine["rmse"] > theirs["rmse"], (mine, theirs)
    assert {"mae", "mape", "r2", "bias"} <= set(mine)
    assert registry.champion(project).version == "1"  # type: ignore[union-attr]
    regression_end_to_end(project, DIABETES, tolerance=1e-6)
