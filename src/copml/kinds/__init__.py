"""The model-kind contract: what copml needs to know about a model to operate it.

A *model kind* (chosen by ``model.task`` in ``copml.yaml``) says how its training data and
requests look, how it predicts and decides, how it is measured (its ``MetricTable``, by
which the gate compares versions), how its artifact is saved, loaded and checked, how a
decision is explained, and what the server publishes. Services call the kind; they never
branch on the task or on the data.

Kinds are found through the ``copml.kinds`` entry-point group, so an application (or a
third party) ships one by declaring, in its ``pyproject.toml``::

    [project.entry-points."copml.kinds"]
    mykind = "mypackage.kind:MyKind"

copml's own kinds are also found without installed metadata (a source checkout), from a
table of their import paths.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from copml.errors import CopmlError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from fastapi import Request
    from sqlalchemy import Engine

    from copml.labels import Target
    from copml.metrics import MetricTable
    from copml.project import Project
    from copml.registry import ModelVersion, TrainingRun
    from copml.snapshots import Snapshot
    from copml.spec import Data, Spec

GROUP = "copml.kinds"
OUT_OF_DISTRIBUTION = "out_of_distribution"  # why a row unlike the training data is reviewed
INPUT_PROFILE = "input_profile.json"  # a version's input profile, inside its model folder
Direction = Literal["higher", "lower"]

# copml's own kinds, for when the package's entry points are not installed.
BUILT_IN = {
    "binary": "copml.kinds.binary:BinaryKind",
    "multiclass": "copml.kinds.multiclass:MulticlassKind",
    "regression": "copml.kinds.regression:RegressionKind",
}


@dataclass(frozen=True)
class PredictApi:
    """A ``/v1/predict`` whose body is not a table of instances (uploads, say): the server
    reads the body with ``read``, charges the rate limit per item, turns items into rows
    with ``prepare`` (off the event loop) and answers with ``respond(batcher result)``."""

    scorer: Any  # the micro-batcher's scorer: ``__call__(group)`` and ``on_scored``
    read: Callable[[Request], Awaitable[list[Any]]]
    prepare: Callable[[list[Any], Any], list[Any]]  # (items, model) -> rows
    respond: Callable[[Any], dict[str, Any]]
    max_body_bytes: int
    openapi: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def review_reason(unlike: tuple[str, ...]) -> str | None:
    """The cause a review is opened with for an input that failed the checks ``unlike``
    (None: it passed them), as the queue, the audit record and ``ood_rate`` read it."""
    return f"{OUT_OF_DISTRIBUTION}: {'; '.join(unlike)}" if unlike else None


@dataclass(frozen=True)
class Decisions:
    """What a kind decides for each row, as the log stores it and the answers say it:
    ``label`` a class code (a binary's positive is 1; 0 for a value), ``score`` the
    positive's or the chosen class's probability or the predicted value, ``review`` whether
    a person must look, ``probabilities`` one column per class where there are classes, and
    ``unlike`` per row the checks of :meth:`ModelKind.screen` it failed (empty: in
    distribution; None: not screened)."""

    label: np.ndarray
    score: np.ndarray
    review: np.ndarray
    probabilities: np.ndarray | None = None
    unlike: list[tuple[str, ...]] | None = None

    def __len__(self) -> int:
        return len(self.score)

    def part(self, rows: slice) -> Decisions:
        """The decisions of ``rows`` only."""
        probabilities = None if self.probabilities is None else self.probabilities[rows]
        unlike = None if self.unlike is None else self.unlike[rows]
        return Decisions(
            self.label[rows], self.score[rows], self.review[rows], probabilities, unlike
        )

    def screened(self, unlike: list[tuple[str, ...]]) -> Decisions:
        """These decisions with each row's failed input checks: a row unlike the training
        data goes to a person whatever its score."""
        import numpy

        review = self.review | numpy.array([bool(u) for u in unlike], dtype=bool)
        return Decisions(self.label, self.score, review, self.probabilities, list(unlike))

    def reason(self, row: int) -> str | None:
        """Why row ``row`` was sent to a person beyond its score, as a review records it."""
        return review_reason(self.unlike[row]) if self.unlike else None


@dataclass(frozen=True)
class Holdout:
    """What training measured a model on, for its kind to save beside it."""

    fit: pd.DataFrame  # the rows it was fitted on: its inputs and the coded target
    features: pd.DataFrame  # the held-out rows' inputs
    actual: np.ndarray  # their truth, coded (:meth:`ModelKind.target`)
    scores: np.ndarray  # the model's output on them (:meth:`ModelKind.scores`)
    metrics: dict[str, float]
    inputs: list[str]
    seed: int
    decisions: Decisions  # :meth:`ModelKind.decide` of ``scores``
    classes: tuple[object, ...] = ()  # the target's classes as the data spells them


@dataclass(frozen=True)
class DecisionRule:
    """How a version turns a score into a decision, as a model card states it."""

    threshold: float
    review: str | None = None


@runtime_checkable
class ModelKind(Protocol):
    """One kind of model copml operates (see the module's docstring)."""

    name: str  # the ``model.task`` that selects it
    data_kind: str  # the ``data.kind`` it reads: "table", "images", …
    metrics: MetricTable  # the kind's metric table: name → better direction, promotion

    def training_frame(self, project: Project, snap: Snapshot) -> pd.DataFrame:
        """The snapshot as ``train()`` gets it: the model's inputs plus the encoded target."""
        ...

    def model_inputs(self, project: Project, frame: pd.DataFrame) -> list[str]:
        """The columns of ``frame`` the model reads."""
        ...

    def target(self, data: Data) -> Target:
        """How the target's classes or values are coded in the log and in ground truth."""
        ...

    def scores(self, model: Any, features: pd.DataFrame) -> np.ndarray:
        """The model's output per row (a score, a value, or one probability per class as a
        row of a 2-D array), each row's independent of the other rows."""
        ...

    def decision_threshold(self, project: Project, model: Any) -> float | None:
        """The score at and above which a row is positive; None without a threshold."""
        ...

    def decide(self, project: Project, model: Any, scores: np.ndarray) -> Decisions:
        """The decision rule over :meth:`scores`' output, the same in batch and API."""
        ...

    def window_metrics(self, project: Project, labelled: pd.DataFrame) -> dict[str, float]:
        """The task's metrics over logged decisions with their ground truth (columns
        ``label``, ``score``, ``actual`` as codes, ``probabilities`` where logged)."""
        ...

    def output_drift(self, project: Project, decided: pd.DataFrame) -> dict[str, pd.Series]:
        """What of the model's own output is watched for drift (its metric table's
        ``drift`` names), from logged decisions (the columns of :meth:`window_metrics`;
        ``actual`` NaN where unknown): a numeric series or one of class names each."""
        ...

    def holdout_metrics(
        self, project: Project, model: Any, features: pd.DataFrame, actual: np.ndarray
    ) -> tuple[np.ndarray, dict[str, float]]:
        """(scores, figures) of ``model`` on held-out rows, as training and the gate see them."""
        ...

    def calibration(self, project: Project, holdout: Holdout) -> dict[str, Any] | None:
        """What turns the model's output into the probability of each outcome, fitted on
        the holdout at training and recorded with the version (JSON), so that a window is
        estimated before its truth lands; None: the kind estimates nothing."""
        ...

    def estimate(
        self,
        project: Project,
        decided: pd.DataFrame,
        calibrations: Mapping[str, dict[str, Any] | None],
    ) -> dict[str, float]:
        """The metric table's ``estimated`` metrics of logged decisions whose truth is not
        needed (the columns of :meth:`window_metrics` and ``model_version``), each row by
        the calibration of its version, with their bands (:func:`copml.estimation.names`);
        NaN where a version has no calibration."""
        ...

    def input_profile(self, project: Project, model: Any, holdout: Holdout) -> dict[str, Any]:
        """What the training inputs looked like (ranges, categories, an image's size and
        intensity, a distance in the model's own embedding thresholded on the holdout at
        ``serving.out_of_distribution.false_alarm_rate``), as JSON: saved in the version's
        model folder (:data:`INPUT_PROFILE`) and checked against every request."""
        ...

    def screen(
        self, project: Project, model: Any, profile: dict[str, Any], columns: dict[str, list[Any]]
    ) -> list[tuple[str, ...]]:
        """Per row (one list per input, as a server holds them), the checks against
        ``profile`` (:meth:`input_profile`) it fails, each a short phrase; () when it is
        like the training data."""
        ...

    def save(
        self,
        model: Any,
        folder: Path,
        holdout: Holdout,
        run: TrainingRun,
        *,
        requirements: list[str],
    ) -> None:
        """Write the model as an MLflow model folder; ``run`` (the training run) also gets
        the kind's evaluation of ``holdout`` (e.g. a confusion matrix) and explanation
        artifacts."""
        ...

    def register_parts(
        self, project: Project, run_id: str, artifact: str, tags: dict[str, str]
    ) -> dict[str, str]:
        """Register a composite model's parts as their own versions; {} for one model."""
        ...

    def load(self, path: Path) -> Any:
        """The fitted model from a local copy of its (already verified) artifact."""
        ...

    def warm(self, model: Any, path: Path, features: list[str]) -> None:
        """Run the model once so that the first request pays no start-up cost."""
        ...

    def served_models(self, version: str, parts: dict[str, str]) -> dict[str, str]:
        """The versions a server names beside its answers ({} for one model)."""
        ...

    def explain(
        self,
        project: Project,
        prediction_id: str,
        *,
        record: dict[str, Any] | None = None,
        inline: bool = False,
    ) -> dict[str, Any]:
        """The local explanation of one stored decision, as JSON; ``inline``: files it
        refers to (a picture) embedded as base64, for an HTTP answer."""
        ...

    def explanation_lines(self, found: dict[str, Any]) -> list[str]:
        """An explanation from :meth:`explain` as a person reads it (Rich markup)."""
        ...

    def audit_entries(
        self, project: Project, record: dict[str, Any], *, explanation: bool
    ) -> dict[str, Any]:
        """What the kind adds to a decision's audit record (its explanation among them)."""
        ...

    def replay_score(self, project: Project, model: Any, record: dict[str, Any]) -> float:
        """The stored input of ``record`` scored again by ``model``."""
        ...

    def monitored_features(self, data: Data) -> list[str]:
        """The features whose drift monitoring watches."""
        ...

    def decision_rule(self, project: Project, mv: ModelVersion) -> DecisionRule:
        """The threshold and review rule of a version, for its model card."""
        ...

    def decide_rows(self, project: Project, model: Any, columns: dict[str, list[Any]]) -> Decisions:
        """The decisions for rows as a server holds them (one list per input), for a shadow
        that scores them again in a process of its own."""
        ...

    def predict_api(
        self,
        project: Project,
        engine: Engine,
        slot: Any,
        clock: Callable[[], datetime] | None,
        arms: Any = None,
        shadow: Any = None,
        halt: Any = None,
    ) -> PredictApi | None:
        """The kind's own ``/v1/predict``; None: instances of the training columns. ``arms``
        (:class:`copml.serve.arms.ArmsSlot`) and ``shadow`` (its scorer) are the challengers
        it answers and shadows with; ``halt`` (:class:`copml.serve.oversight.HaltSlot`)
        says when every decision goes to a person."""
        ...

    def batch_scorer(self) -> Callable[..., Any] | None:
        """The kind's own ``copml score`` (``(project, source, output, *, at, actor)``);
        None: a table file scored by :func:`copml.score.score`."""
        ...

    def declare_data(self, section: dict[str, Any]) -> dict[str, Any]:
        """The spec's ``data`` section for data it reads that is not a table, completed:
        its fixed ``columns``, its ``options`` checked, the ``monitored`` features. A
        ``ValueError`` names what is wrong (only for ``data_kind`` != table)."""
        ...

    def snapshot(
        self, engine: Engine, data: Data, *, root: Path, directory: Path, source: str, actor: str
    ) -> Snapshot:
        """Freeze training data that is not a table file (only for ``data_kind`` != table)."""
        ...

    def retraining_snapshot(
        self, project: Project, labelled: pd.DataFrame, *, actor: str
    ) -> tuple[Snapshot, int, int] | None:
        """(snapshot, source rows, production rows) for a retrain from ``labelled`` (the
        look-back period's predictions with ground truth); None: the table way."""
        ...


def _entry_points() -> dict[str, Any]:
    """Installed kinds by name. Another distribution's kind of a name copml also declares
    wins: that is how a team replaces one of copml's own kinds."""
    found: dict[str, Any] = {}
    for ep in entry_points(group=GROUP):
        ours = ep.dist is not None and ep.dist.name == "copml"
        if ep.name not in found or not ours:
            found[ep.name] = ep
    return found


def names() -> list[str]:
    """Every kind this installation can operate (entry points and copml's own)."""
    return sorted({*BUILT_IN, *_entry_points()})


def _instantiate(found: Any, name: str) -> ModelKind:
    kind = found() if isinstance(found, type) else found
    if not isinstance(kind, ModelKind):
        raise CopmlError(f"model kind {name!r} ({found!r}) does not implement copml's ModelKind")
    return kind


@cache
def kind_named(name: str) -> ModelKind:
    """The kind registered as ``name``: an installed ``copml.kinds`` entry point first,
    then copml's own table."""
    installed = _entry_points()
    if name in installed:
        return _instantiate(installed[name].load(), name)
    if name in BUILT_IN:
        module, _, attribute = BUILT_IN[name].partition(":")
        return _instantiate(getattr(import_module(module), attribute), name)
    raise CopmlError(f"model.task: no model kind {name!r}; available: {', '.join(names())}")


def kind_for(spec: Spec) -> ModelKind:
    """The kind that operates the model of ``spec`` (its ``model.task``)."""
    return kind_named(spec.model.task)


def kind_reading(data_kind: str) -> ModelKind:
    """The kind that freezes data of ``data.kind`` = ``data_kind`` (e.g. images)."""
    for name in names():
        kind = kind_named(name)
        if kind.data_kind == data_kind:
            return kind
    raise CopmlError(f"data.kind: no installed model kind reads {data_kind!r} data")
