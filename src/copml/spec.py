"""``copml.yaml``: the project's requirements as pydantic models, the single source of truth.

Everything copml does is driven by a validated :class:`Spec`. Loading maps every pydantic
error back to the field path and the line of the YAML file, so a wrong spec is a one-line fix.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from copml import estimation, kinds, metrics, policies, rollout
from copml.errors import CopmlError, SpecError
from copml.metrics import MetricTable

SPEC_FILE = "copml.yaml"

OPERATIONAL_METRICS = (
    "drift",
    "availability",
    "latency_p99_ms",
    "cost",
    "reviews",
    "override_rate",
    "ood_rate",
)
ACTIONS = (
    "retrain",
    "validate",
    "approve",
    "promote",
    "shadow",
    "canary",
    "abort",
    "redeploy",
    "rollback",
    "alert",
    "review",
    "reevaluate",
    "retire",
)

KIND_GROUP = kinds.GROUP
"""The entry-point group through which an application or a third party ships a model kind;
its object carries the kind's :class:`~copml.metrics.MetricTable` as ``metrics``."""
BUILT_IN_TASKS = tuple(metrics.TABLES)

_DURATION = re.compile(r"^\s*(\d+)\s*(minute|hour|day|week|month|year|window)s?\s*$", re.I)
_DOTTED = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Duration(_Model):
    """A span such as ``1 month`` or ``400 days``; ``window`` counts monitoring windows."""

    amount: int = Field(ge=1)
    unit: Literal["minute", "hour", "day", "week", "month", "year", "window"]

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            m = _DURATION.match(value)
            if not m:
                raise ValueError(
                    f"expected a duration such as '1 month' or '30 days', got {value!r}"
                )
            return {"amount": int(m.group(1)), "unit": m.group(2).lower()}
        return value

    def __str__(self) -> str:
        return f"{self.amount} {self.unit}{'s' if self.amount > 1 else ''}"

    @classmethod
    def __get_pydantic_json_schema__(cls, _core: Any, _handler: Any) -> dict[str, Any]:
        # Written as text in copml.yaml, so that is what editors should expect.
        return {"type": "string", "pattern": _DURATION.pattern, "examples": ["1 month", "400 days"]}

    def offset(self) -> Any:
        """A pandas DateOffset for calendar arithmetic (months have no fixed length)."""
        import pandas as pd

        if self.unit == "window":
            raise ValueError("a window count has no calendar length")
        return pd.DateOffset(**{f"{self.unit}s": self.amount})


def _dotted(value: str) -> str:
    if not _DOTTED.match(value):
        raise ValueError(f"expected 'module:function' (e.g. churn:train), got {value!r}")
    return value


DottedPath = Annotated[str, AfterValidator(_dotted)]


class Owners(_Model):
    data_engineering: str
    data_science: str
    ml_ops: str
    business: str | None = None


ColumnType = Literal["string", "integer", "float", "boolean", "category", "datetime"]
Scalar = str | int | float | bool


class Column(_Model):
    """One declared column: its type and what values are allowed."""

    type: ColumnType
    categories: list[Scalar] | None = None
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    na_values: list[str] = Field(
        default_factory=list, description="strings read as missing, e.g. [' '] for blanks"
    )

    @model_validator(mode="after")
    def _check(self) -> Column:
        if self.categories is not None and self.type not in ("category", "string", "integer"):
            raise ValueError(f"'categories' is not allowed for a {self.type} column")
        if self.type == "category" and not self.categories:
            raise ValueError("a category column needs its list of 'categories'")
        if (self.min is not None or self.max is not None) and self.type not in (
            "integer",
            "float",
        ):
            raise ValueError("'min' and 'max' apply to integer and float columns only")
        return self


class Data(_Model):
    """Where the training data comes from and what it must look like."""

    kind: str = Field(
        "table",
        description="'table', or data that an installed model kind reads and declares "
        "itself (the x-ray application's image folders)",
    )
    source: str
    query: str | None = Field(None, description="SQL query when source is a SQLAlchemy URL")
    id: str = "path"
    target: str = "label"
    positive: Scalar | None = Field(
        None, description="the target value a binary model predicts (binary tasks only)"
    )
    columns: dict[str, Column] = Field(default_factory=dict)
    pii: list[str] = Field(default_factory=list)
    sensitive: list[str] = Field(default_factory=list)
    options: dict[str, Any] | None = Field(
        None, description="set by the model kind that reads this data: its own settings"
    )
    monitored: list[str] | None = Field(
        None, description="set by the model kind that reads this data: the drift features"
    )

    @model_validator(mode="before")
    @classmethod
    def _declared_by_its_kind(cls, value: Any) -> Any:
        """Data that is not a table (the x-ray application's folders, say) has the fixed
        columns and settings of the model kind that reads it: the kind completes them."""
        if isinstance(value, dict) and value.get("kind", "table") != "table":
            try:
                reader = kinds.kind_reading(str(value["kind"]))
            except CopmlError as exc:
                raise ValueError(str(exc).removeprefix("data.kind: ")) from None
            return reader.declare_data(dict(value))
        if isinstance(value, dict) and ({"options", "monitored"} & set(value)):
            raise ValueError("'options' and 'monitored' are set by a data kind, not for tables")
        return value

    @model_validator(mode="after")
    def _names_exist(self) -> Data:
        if not self.columns:
            raise ValueError("declare the data's 'columns' (name: {type: ...})")
        declared = set(self.columns)
        for field in ("id", "target"):
            name = getattr(self, field)
            if name not in declared:
                raise ValueError(f"{field} {name!r} is not one of the declared columns")
        for field in ("pii", "sensitive"):
            missing = [c for c in getattr(self, field) if c not in declared]
            if missing:
                raise ValueError(f"{field} names undeclared columns: {', '.join(missing)}")
        if self.query and "://" not in self.source:
            raise ValueError("'query' needs 'source' to be a SQLAlchemy URL")
        return self

    @property
    def features(self) -> list[str]:
        """Columns the model sees: everything declared except the id, the target and PII;
        for data a kind declares, what it monitors for drift (an image model sees pixels)."""
        if self.monitored is not None:
            return list(self.monitored)
        return [c for c in self.columns if c not in (self.id, self.target, *self.pii)]


class ModelConfig(_Model):
    train: DottedPath = Field(description="'module:function' of def train(data, params, seed)")
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int = 42
    task: str = Field(
        "binary",
        description="binary, multiclass, regression or the name of a registered model kind "
        f"(entry-point group {KIND_GROUP!r})",
        examples=list(BUILT_IN_TASKS),
    )
    threshold: float = Field(0.5, gt=0, lt=1, description="binary tasks only")
    review_margin: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="multiclass only: a decision whose top two class probabilities are "
        "closer than this goes to human review",
    )
    review_interval: float | None = Field(
        None,
        gt=0,
        description="regression only: a prediction whose 95% interval is wider than this "
        "goes to human review (the model's predict() must take return_std=True)",
    )
    holdout: float = Field(0.2, gt=0, lt=0.9, description="share of rows held out")

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if task_metrics(value) is None:
            raise ValueError(f"unknown task {value!r}; expected one of {', '.join(known_tasks())}")
        return value


class RateLimit(_Model):
    """Per-API-key rate of ``copml serve`` in instances a second (a request of 100
    instances counts 100), for predictions and feedback apart: a token bucket shared by
    all the workers of one server."""

    per_second: float = Field(1000.0, gt=0)
    burst: int = Field(2000, ge=1)


def _valid_cron(value: str) -> str:
    from croniter import croniter

    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(f"expected a cron expression with 5 fields, got {value!r}")
    return value


class OutOfDistribution(_Model):
    """How requests unlike the training data are found (``serving.out_of_distribution``):
    such a request is answered with ``review: true`` and queued for a person."""

    check: bool = Field(True, description="check every request against the training profile")
    false_alarm_rate: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="share of the holdout a distance check may flag (its threshold's quantile)",
    )
    range_margin: float = Field(
        0.0, ge=0, description="a numeric range widened by this share of its span each side"
    )


class Serving(_Model):
    mode: Literal["batch", "realtime"] = "batch"
    schedule: str | None = Field(None, description="cron expression for batch scoring")
    input: str | None = Field(
        None, description="what the scheduled batch run scores: a file or folder of files"
    )
    availability: float | None = Field(None, gt=0, le=1)
    review_band: tuple[float, float] | None = None
    score_precision: int | None = Field(
        None, ge=1, le=12, description="decimals of returned scores (against model extraction)"
    )
    rate_limit: RateLimit = RateLimit()
    out_of_distribution: OutOfDistribution = OutOfDistribution()
    engine: Literal["local", "spark", "ray"] = Field(
        "local", description="where `copml score` runs by default (`--engine` overrides)"
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else _valid_cron(value)

    @field_validator("review_band")
    @classmethod
    def _band(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] < value[1] <= 1:
            raise ValueError("review_band must be [low, high] with 0 <= low < high <= 1")
        return value


class Kpi(_Model):
    function: DottedPath = Field(
        description="'module:function' of def kpi(window: DataFrame) -> float"
    )
    baseline: float | None = None
    target: float | None = None
    better: Literal["lower", "higher"] = "higher"


class Threshold(_Model):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        return self

    def met(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


def _metric_keys_schema(schema: dict[str, Any]) -> None:
    # In YAML the thresholds sit beside ``window`` (``accuracy: {min: 0.75}``): every metric
    # of every known task, per-class ones by pattern; the task's own table is checked later.
    threshold = schema["properties"]["thresholds"]["additionalProperties"]
    families: set[str] = set()
    for task in known_tasks():
        try:
            table = task_metrics(task)
        except ValueError:  # a broken kind: its spec is refused at model.task anyway
            continue
        for name in table.metrics if table else ():
            schema["properties"][name] = threshold
        families |= set(table.per_class if table else ())
    if families:
        pattern = f"^({'|'.join(sorted(families))}){re.escape(metrics.CLASS_SEP)}.+$"
        schema["patternProperties"] = {pattern: threshold}


class Effectiveness(_Model):
    """The monitoring window and the bounds to keep, e.g. ``accuracy: {min: 0.75}`` or
    ``rmse: {max: 60}``; which metrics exist, and on which side, is the task's
    (checked by :class:`Spec`, which knows the task)."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_metric_keys_schema)

    window: Duration = Duration(amount=1, unit="month")
    drift_psi: float = Field(0.2, gt=0, description="PSI above which a feature has drifted")
    estimation_tolerance: float = Field(
        0.04,
        ge=0,
        lt=1,
        description="how far a realised metric may fall outside its estimate's confidence "
        "band (the calibration's own error) before the window flags a concept shift",
    )
    thresholds: dict[str, Threshold] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        known = {"window", "drift_psi", "estimation_tolerance", "thresholds"}
        out = {k: v for k, v in value.items() if k in known}
        thresholds = dict(out.get("thresholds") or {})
        for key, item in value.items():
            if key not in known:
                thresholds[key] = item
        out["thresholds"] = thresholds
        return out

    @field_validator("window")
    @classmethod
    def _calendar(cls, value: Duration) -> Duration:
        if value.unit == "window":
            raise ValueError("the window must be a calendar span such as '1 month'")
        return value


class Promotion(_Model):
    metric: str = Field(
        "roc_auc", description="a metric of the task with a better side; default the task's"
    )
    min_gain: float = Field(0.0, description="improvement required, in the better direction")
    require_approval: bool = False
    canary_share: float = Field(
        0.1, gt=0, lt=1, description="share of entities a policy's canary answers: 20% or 0.2"
    )

    @field_validator("canary_share", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        return rollout.share(value) if isinstance(value, str) else value


class Policy(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][\w\-]*$")
    when: str
    do: list[Literal[ACTIONS]] = Field(min_length=1)  # type: ignore[valid-type]
    cooldown: Duration | None = None

    @field_validator("when")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            policies.parse(value)
        except policies.PolicySyntaxError as exc:
            raise ValueError(f"cannot parse condition {value!r}: {exc}") from None
        return value

    @property
    def condition(self) -> policies.Condition:
        return policies.parse(self.when)


class Operations(_Model):
    schedule: str = Field(
        "0 * * * *", description="cron expression for monitoring and policy evaluation"
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _valid_cron(value)


class Retraining(_Model):
    """What ``retrain`` learns from: the declared source plus labelled production data."""

    include_production: bool = Field(
        True, description="add predictions joined with their feedback to the training data"
    )
    include_source: bool = Field(
        True, description="keep the declared source (false: learn from recent production only)"
    )
    lookback: Duration = Duration(amount=3, unit="month")


class Costs(_Model):
    cpu_hour: float = Field(0.0, ge=0)
    review: float = Field(0.0, ge=0)
    monthly_fixed: float = Field(0.0, ge=0)
    budget_per_window: float | None = Field(None, ge=0)


class Smtp(_Model):
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    sender: str = "copml@localhost"


class Alerts(_Model):
    webhook: str | None = Field(None, pattern=r"^https?://")
    email: list[str] = Field(default_factory=list)
    smtp: Smtp = Smtp()
    retries: int = Field(5, ge=0, le=20, description="webhook attempts after the first")
    backoff_seconds: float = Field(1.0, ge=0, description="first retry delay; doubles each time")


class Oversight(_Model):
    """What the people overseeing the system can do to it (EU AI Act Art. 14): ``copml
    halt`` puts it in ``safe_state`` until ``copml resume``."""

    safe_state: Literal["review_all", "refuse"] = Field(
        "review_all",
        description="review_all: keep answering, every decision queued for a person and "
        "flagged for review; refuse: answer 503 with Retry-After, score nothing",
    )
    retry_after_seconds: int = Field(60, ge=1, le=86400)


class Retention(_Model):
    predictions: Duration = Duration(amount=400, unit="day")


class Spec(_Model):
    """The whole ``copml.yaml``."""

    project: str = Field(pattern=r"^[a-z0-9][a-z0-9\-_]*$", max_length=64)
    objective: str = Field(min_length=10)
    owners: Owners
    impact: Literal["low", "medium", "high"] = "low"
    data: Data
    model: ModelConfig
    serving: Serving = Serving()
    kpis: dict[str, Kpi] = Field(default_factory=dict)
    effectiveness: Effectiveness = Effectiveness()
    promotion: Promotion = Promotion()
    policies: list[Policy] = Field(default_factory=list)
    retraining: Retraining = Retraining()
    operations: Operations = Operations()
    costs: Costs = Costs()
    alerts: Alerts = Alerts()
    retention: Retention = Retention()
    oversight: Oversight | None = None

    @model_validator(mode="before")
    @classmethod
    def _task_promotion_default(cls, value: Any) -> Any:
        # roc_auc means nothing to a regression: an unnamed promotion metric is the task's.
        if not isinstance(value, dict) or not isinstance(value.get("model", {}), dict):
            return value
        promotion = value.get("promotion", {})
        task = value.get("model", {}).get("task", "binary")
        if isinstance(promotion, dict) and "metric" not in promotion and isinstance(task, str):
            with contextlib.suppress(ValueError):  # a broken kind is reported at model.task
                table = task_metrics(task)
                if table is not None:
                    value = {**value, "promotion": {**promotion, "metric": table.promotion}}
        return value

    @model_validator(mode="after")
    def _task_rules(self) -> Spec:
        problems = [
            *self._target_problems(),
            *self._threshold_problems(),
            *self._promotion_problems(),
            *self._policy_problems(),
            *self._impact_problems(),
        ]
        if problems:
            raise _SpecProblems(problems)
        names = [p.name for p in self.policies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"policy names must be unique: {', '.join(dupes)}")
        return self

    @property
    def metrics(self) -> MetricTable:
        """The task's metric table: which metrics exist and which way each is better."""
        table = task_metrics(self.model.task)
        assert table is not None  # the task was checked when the spec was read
        return table

    @property
    def reviews(self) -> bool:
        """Whether a rule sends decisions to human review: a binary's ``review_band``, a
        multiclass ``review_margin``, a regression's ``review_interval``."""
        rules = (self.serving.review_band, self.model.review_margin, self.model.review_interval)
        return any(rule is not None for rule in rules)

    @property
    def classes(self) -> list[Scalar]:
        """A multiclass target's classes, in their declared order; empty for other tasks."""
        if self.model.task != "multiclass":
            return []
        return list(self.data.columns[self.data.target].categories or [])

    def metric_names(self) -> set[str]:
        """Every metric a policy may read: the task's, the drift of its output
        (``drift.prediction``, a regression's ``drift.residual``), operational, the declared
        KPIs, for a decision with a positive class, the fairness differences of the
        ``sensitive`` columns and, where the task estimates its metrics before the truth
        lands, the estimates, their bands and errors and ``concept_shift``; and each of
        the task's metrics and estimates per arm of a rollout (``canary.recall``)."""
        fairness = {
            f"{name}.{column}"
            for name in ("demographic_parity_difference", "equalized_odds_difference")
            for column in self.data.sensitive
            if self.model.task not in ("multiclass", "regression")
        }
        task = set(self.metrics.names(self.classes))
        output = {f"drift.{name}" for name in self.metrics.drift}
        estimated = set(estimation.names(self.metrics.estimated))
        arms = rollout.arm_metric_names(task | estimated)
        return (
            task | output | set(OPERATIONAL_METRICS) | set(self.kpis) | fairness | estimated | arms
        )

    def _impact_problems(self) -> list[tuple[_Loc, str]]:
        """What a high-impact system must declare (EU AI Act Art. 14, 19 and 26(6)): people
        able to halt it, six months of logs at least, a person's approval before promotion."""
        if self.impact != "high":
            return []
        problems: list[tuple[_Loc, str]] = []
        if self.oversight is None:
            problems.append(
                (
                    ("impact",),
                    "impact: high needs an 'oversight' section (safe_state: review_all or "
                    "refuse): the people overseeing it must be able to halt it",
                )
            )
        kept = self.retention.predictions
        days = {"day": 1, "week": 7, "month": 30.44, "year": 365.25}.get(kept.unit, 0)
        if kept.amount * days < 182:
            problems.append(
                (
                    ("retention", "predictions"),
                    f"impact: high keeps its logs at least 6 months; {kept} is less",
                )
            )
        if not self.promotion.require_approval:
            problems.append(
                (
                    ("promotion", "require_approval"),
                    "impact: high needs a person's approval before promotion (true)",
                )
            )
        return problems

    def _target_problems(self) -> list[tuple[_Loc, str]]:
        task, data = self.model.task, self.data
        target = data.columns[data.target]
        where: _Loc = ("data", "columns", data.target, "type")
        problems: list[tuple[_Loc, str]] = []
        if task in ("multiclass", "regression"):
            if data.positive is not None:
                problems.append(
                    (("data", "positive"), f"'positive' belongs to binary tasks, not {task}")
                )
            if "threshold" in self.model.model_fields_set:
                problems.append(
                    (("model", "threshold"), f"'threshold' belongs to binary tasks, not {task}")
                )
        if task != "multiclass" and self.model.review_margin is not None:
            problems.append(
                (("model", "review_margin"), f"'review_margin' belongs to multiclass, not {task}")
            )
        if task != "regression" and self.model.review_interval is not None:
            problems.append(
                (
                    ("model", "review_interval"),
                    f"'review_interval' belongs to regression, not {task}",
                )
            )
        if task == "binary" and data.positive is None:  # a plug-in kind checks its own
            problems.append((("data", "positive"), "a binary task needs the positive class"))
        if task == "multiclass" and (target.type != "category" or len(target.categories or []) < 2):
            problems.append(
                (
                    where,
                    f"a multiclass target is a category with its classes as 'categories' "
                    f"(at least two); {data.target!r} is declared {target.type}",
                )
            )
        if task == "regression" and target.type != "float":
            problems.append(
                (
                    where,
                    f"a regression target is a float; {data.target!r} is declared {target.type}",
                )
            )
        return problems

    def _threshold_problems(self) -> list[tuple[_Loc, str]]:
        problems: list[tuple[_Loc, str]] = []
        for name, bound in self.effectiveness.thresholds.items():
            direction = self.metrics.direction(name, self.classes)
            if direction is None:
                problems.append(
                    (
                        ("effectiveness", name),
                        f"unknown effectiveness metric {name!r} "
                        f"for a {self.model.task} task; expected one of {self._listed()}",
                    )
                )
            elif direction == "higher" and bound.max is not None:
                problems.append(
                    (("effectiveness", name, "max"), f"{name} is better higher: give a 'min'")
                )
            elif direction == "lower" and bound.min is not None:
                problems.append(
                    (("effectiveness", name, "min"), f"{name} is better lower: give a 'max'")
                )
        return problems

    def _promotion_problems(self) -> list[tuple[_Loc, str]]:
        metric = self.promotion.metric
        direction = self.metrics.direction(metric, self.classes)
        where: _Loc = ("promotion", "metric")
        if direction is None:
            return [
                (
                    where,
                    f"unknown metric {metric!r} for a {self.model.task} task; "
                    f"expected one of {self._listed()}",
                )
            ]
        if direction == "band":
            return [(where, f"{metric} has no better side, so it cannot rank two versions")]
        return []

    def _policy_problems(self) -> list[tuple[_Loc, str]]:
        known = self.metric_names()
        task = set(self.metrics.names(self.classes))
        # An arm's metrics are listed once, as <arm>.<metric>.
        others = sorted(m for m in known - task if m.split(".")[0] not in rollout.ARMS)
        problems: list[tuple[_Loc, str]] = []
        for i, policy in enumerate(self.policies):
            for metric in policies.metrics_of(policy.condition):
                if metric not in known and not (
                    metric.startswith("drift.") and metric[6:] in self.data.features
                ):
                    problems.append(
                        (
                            ("policies", i, "when"),
                            f"unknown metric {metric!r} for a {self.model.task} task; "
                            "expected one of "
                            + self._listed(*others, "drift.<feature>", "<arm>.<metric>"),
                        )
                    )
        return problems

    def _listed(self, *others: str) -> str:
        """The task's metrics for a message: per-class ones once, with the classes."""
        table = self.metrics
        names = [*table.metrics, *(f"{f}{metrics.CLASS_SEP}<class>" for f in table.per_class)]
        text = ", ".join([*names, *others]) or "(none)"
        if table.per_class and self.classes:
            text += f" (classes: {', '.join(str(c) for c in self.classes)})"
        return text


_Loc = tuple[str | int, ...]


class _SpecProblems(ValueError):
    """Rules across sections (the task decides which metrics exist), each reported at its
    own field and line rather than at the top of the file."""

    def __init__(self, problems: list[tuple[_Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


@functools.cache
def task_metrics(task: str) -> MetricTable | None:
    """The metric table of a built-in task or of a registered kind; None if there is none."""
    if task in metrics.TABLES:
        return metrics.TABLES[task]
    found = entry_points(group=KIND_GROUP, name=task)
    try:
        if found:  # another distribution's kind replaces copml's own (as copml.kinds does)
            ours = lambda ep: ep.dist is not None and ep.dist.name == "copml"  # noqa: E731
            kind = min(found, key=ours).load()
        elif task in kinds.BUILT_IN:  # copml's own, without installed metadata
            module, _, name = kinds.BUILT_IN[task].partition(":")
            kind = getattr(import_module(module), name)
        else:
            return None
    except Exception as exc:  # a third party's broken package must not crash validation
        raise ValueError(f"the model kind {task!r} failed to load: {exc!r}") from None
    table = kind if isinstance(kind, MetricTable) else getattr(kind, "metrics", None)
    if not isinstance(table, MetricTable):
        raise ValueError(f"the model kind {task!r} has no metric table ('metrics')")
    return table


def known_tasks() -> list[str]:
    """The built-in tasks, then every registered kind."""
    registered = {ep.name for ep in entry_points(group=KIND_GROUP)} | set(kinds.BUILT_IN)
    return [*BUILT_IN_TASKS, *sorted(registered - set(BUILT_IN_TASKS))]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``copml.yaml``, exported from the models (for editors and CI)."""
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "copml.yaml"
    return schema


# ---------------------------------------------------------------- loading with line numbers


# A copml.yaml is a few hundred values; aliases that expand past this are a bomb.
_MAX_EXPANDED_NODES = 100_000


def _refuse_alias_bombs(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past the budget, counted without expanding
    them (an alias is the very node object it names, so each node is sized once)."""
    sizes: dict[int, int] = {}
    pending: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in pending:
            raise SpecError(f"line {node.start_mark.line + 1}: an alias refers to itself")
        pending.add(id(node))
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        else:
            total = 1
        pending.discard(id(node))
        sizes[id(node)] = total
        if total > _MAX_EXPANDED_NODES:
            raise SpecError(
                f"line {node.start_mark.line + 1}: YAML aliases expand to more than "
                f"{_MAX_EXPANDED_NODES:,} values; write the values out instead"
            )
        return total

    size(root)


def _line_index(root: yaml.Node) -> dict[tuple[str | int, ...], int]:
    """Map every YAML node path (keys and list indexes) to its 1-based line.

    A node reached again through an alias is not walked again: a field inside it is
    reported at the line of the alias that brought it in."""
    lines: dict[tuple[str | int, ...], int] = {}
    walked: set[int] = set()

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        lines[path] = node.start_mark.line + 1
        if id(node) in walked:
            return
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                walk(value, sub)
                lines[sub] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    walk(root, ())
    return lines


def _load_yaml(text: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    """The document and its line index, from one parse; aliases are sized before use."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        _refuse_alias_bombs(root)
        return loader.construct_document(root), _line_index(root)
    finally:
        loader.dispose()


def _line_of(lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    # pydantic adds union/validator names (e.g. 'function-after[...]'); keep only real keys.
    return tuple(p for p in loc if isinstance(p, int) or not str(p).endswith("]"))


def _detail(lines: dict[tuple[str | int, ...], int], loc: _Loc, msg: str) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    path = path.lstrip(".") or "(top level)"
    line = _line_of(lines, loc)
    return f"{path} (line {line}): {msg}" if line else f"{path}: {msg}"


def parse_spec(text: str, filename: str = SPEC_FILE) -> Spec:
    """Validate spec text; raise :class:`SpecError` naming every bad field with its line."""
    try:
        raw, lines = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        raise SpecError(f"{filename}: not valid YAML ({where}): {exc}") from None
    except SpecError as exc:
        raise SpecError(f"{filename}: {exc.message}") from None
    except RecursionError:
        raise SpecError(f"{filename}: nested too deeply to be a copml.yaml") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{filename}: expected a mapping of settings at the top level")
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        details = []
        for err in exc.errors():
            loc = _clean_loc(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, _SpecProblems):
                details += [_detail(lines, where, what) for where, what in cause.problems]
                continue
            if err["type"] == "extra_forbidden":
                msg = "unknown key (not part of copml.yaml)"
            elif err["type"] == "missing":
                msg = "required field is missing"
            elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
                msg += f" (got {json.dumps(err['input'], default=str)[:60]})"
            details.append(_detail(lines, loc, msg))
        raise SpecError(f"{filename} is invalid:", details) from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate ``copml.yaml`` from a file or a project folder."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    if not path.exists():
        raise SpecError(f"{path}: not found; run 'copml init DIR --example churn' to start one")
    return parse_spec(path.read_text(encoding="utf-8"), str(path))
