"""A model card per registered version, as Markdown and as self-contained HTML.

Everything on the card is read from where copml records it (the spec, the registry's
lineage tags, the MLflow run, the snapshot, the event log and the stored metric windows),
never typed by hand, so a reviewer or an auditor reads facts rather than claims. The HTML
inlines its style and pictures, so it opens offline and can be attached to a ticket.
"""

from __future__ import annotations

import base64
import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from copml import display, events, kinds, registry, snapshots, times
from copml.errors import CopmlError
from copml.monitor import window as windows_module
from copml.project import Project
from copml.spec import Spec, Threshold
from copml.store import open_store

_TEMPLATES = Path(__file__).parent / "templates"
HTML_TEMPLATE = "model_card.html.j2"
MARKDOWN_TEMPLATE = "model_card.md.j2"
NOT_MEASURED = "not measured yet"
PRODUCTION_WINDOWS = 6
TOP_FEATURES = 10
_WINDOW_SCAN = 5000  # windows are recomputed often; look back far enough to find a version's
_EVENT_LIMIT = 1000
_IMPORTANCE_PNG = "importance.png"
_IMPORTANCE_JSON = "importance.json"
_EXPLAIN_DIR = "explain"


def fmt(value: Any) -> str:
    """How every figure is written on the card: 4 decimals, a dash for missing or unknown."""
    return display.figure(value, places=4)


def _when(value: datetime | None) -> str:
    return display.when(value, display.DOCUMENT)


def _bound(threshold: Threshold) -> str:
    parts = []
    if threshold.min is not None:
        parts.append(f"≥ {threshold.min:g}")
    if threshold.max is not None:
        parts.append(f"≤ {threshold.max:g}")
    return " and ".join(parts)


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, NaN, infinite, not a number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _state(threshold: Threshold, value: Any) -> str:
    number = finite(value)
    if number is None:
        return "unknown"
    return "met" if threshold.met(number) else "not met"


def _safe_source(source: str) -> str:
    """A source as shown on the card: a database URL loses its password."""
    if "://" not in source:
        return source
    from sqlalchemy.engine import make_url

    try:
        return make_url(source).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: show the scheme only
        return source.split("://", 1)[0] + "://…"


@dataclass
class ThresholdRow:
    """One declared threshold against a measured value."""

    metric: str
    expected: str
    value: float | None
    state: str


@dataclass
class Gate:
    """The latest gate report: the candidate against the minimums and the champion."""

    kind: str
    at: str
    passed: bool
    reasons: list[str]
    metric: str
    better: str | None  # which way the promotion metric is better, from the task's table
    champion: str | None
    rows: int | None
    metrics: list[tuple[str, float | None, float | None]]  # (name, candidate, champion)


@dataclass
class LiveComparison:
    """How the version ran beside the champion on live traffic (design §9b): its rollout
    changes, and the newest window's figures of its arm against the champion's when a
    policy or a person promoted it on them."""

    changes: list[tuple[str, str, str, str]]  # (at, change, actor, reason), oldest first
    arm: str | None = None
    at: str | None = None
    condition: str | None = None
    rows: int | None = None
    champion: str | None = None
    metrics: list[tuple[str, float | None, float | None]] = field(default_factory=list)


@dataclass
class WindowRow:
    """A production window served by this version, with its key figures."""

    start: str
    end: str
    n_predictions: int
    n_labelled: int
    values: dict[str, float | None]


@dataclass
class Fairness:
    """One sensitive column in the latest window of this version."""

    column: str
    measured: bool
    dp: float | None = None
    eo: float | None = None
    groups: list[tuple[str, float | None, float | None]] = field(default_factory=list)


@dataclass
class Explanation:
    """The global SHAP importance logged at training, or why there is none."""

    available: bool
    png_base64: str | None = None
    importance: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def top(self) -> list[tuple[str, float]]:
        return list(self.importance.items())[:TOP_FEATURES]


@dataclass
class Imported:
    """Where an imported version came from: it was trained outside copml, so it has no
    recorded snapshot, code, params or holdout metrics."""

    source_uri: str
    source_run_id: str
    flavors: list[str]


@dataclass
class ModelCard:
    """Everything the card shows, gathered from the real records of one version."""

    project: str
    version: str
    state: str
    created: str
    run_id: str
    artifact_sha256: str
    git_commit: str
    git_dirty: bool
    params: dict[str, Any]
    seed: str
    objective: str
    impact: str
    impact_note: str
    owners: dict[str, str]
    target: str
    predicts: str  # the target and what of it: the positive class, the classes, a value
    threshold: float | None  # None: no threshold (see no_threshold)
    no_threshold: str  # why there is none
    review_band: tuple[float, float] | None
    review_rule: str | None
    snapshot_id: str
    snapshot_found: bool
    source: str
    n_rows: int | None
    positive_rate: float | None
    snapshot_created: str
    features: list[str]
    pii: list[str]
    sensitive: list[str]
    holdout: list[ThresholdRow]
    holdout_other: dict[str, float]
    gate: Gate | None
    live: LiveComparison | None
    window_metrics: list[str]
    windows: list[WindowRow]
    fairness_window: str | None
    fairness: list[Fairness]
    explanation: Explanation
    limitations: list[str]
    history: list[dict[str, str]]
    generated: str
    imported: Imported | None = None


# ------------------------------------------------------------------------------ gathering


def _gate(spec: Spec, history: list[dict[str, Any]]) -> Gate | None:
    """The newest gate report among the version's events (history is newest first), its
    metrics in the order of the task's metric table."""
    gated = (events.Kind.MODEL_VALIDATED, events.Kind.MODEL_REFUSED)
    found = next(
        (e for e in history if e["kind"] in gated and not (e.get("evidence") or {}).get("live")),
        None,
    )
    if found is None:
        return None
    evidence = found.get("evidence") or {}
    mine = evidence.get("candidate_metrics") or {}
    theirs = evidence.get("champion_metrics") or {}
    names = [m for m in spec.metrics.names(spec.classes) if m in mine or m in theirs]
    metric = str(evidence.get("metric", display.MISSING))
    return Gate(
        kind=found["kind"],
        at=_when(found["at"]),
        passed=bool(evidence.get("passed", found["kind"] == events.Kind.MODEL_VALIDATED)),
        reasons=list(evidence.get("reasons") or []),
        metric=metric,
        better=spec.metrics.direction(metric, spec.classes),
        champion=evidence.get("champion"),
        rows=evidence.get("rows"),
        metrics=[(m, finite(mine.get(m)), finite(theirs.get(m))) for m in names],
    )


def _live(spec: Spec, history: list[dict[str, Any]]) -> LiveComparison | None:
    """The version's rollout changes and its newest live comparison; None when it never
    ran beside a champion."""
    changes = []
    for e in reversed(history):  # in the order recorded
        if e["kind"] != events.Kind.MODEL_ROLLOUT:
            continue
        state = e.get("evidence") or {}
        mine = e["subject"].rsplit("/", 1)[1]
        if state.get("canary") == mine:
            change = f"canary, {float(state.get('share') or 0):.0%} of entities"
        elif state.get("shadow") == mine:
            change = "shadow"
        else:
            change = "ended"
        changes.append((_when(e["at"]), change, e["actor"] or "", e["reason"] or ""))
    found = next(
        (
            e
            for e in history
            if e["kind"] == events.Kind.MODEL_VALIDATED and (e.get("evidence") or {}).get("live")
        ),
        None,
    )
    if not changes and found is None:
        return None
    live = LiveComparison(changes)
    if found is not None:
        evidence = found["evidence"]
        mine, theirs = (
            evidence.get("candidate_metrics") or {},
            evidence.get("champion_metrics") or {},
        )
        names = [m for m in spec.metrics.names(spec.classes) if m in mine or m in theirs]
        names += [m for m in ("predictions", "labelled") if m in mine or m in theirs]
        live.arm, live.at = str(evidence["live"]), _when(found["at"])
        live.condition, live.rows = evidence.get("condition"), evidence.get("rows")
        live.champion = evidence.get("champion")
        live.metrics = [(m, finite(mine.get(m)), finite(theirs.get(m))) for m in names]
    return live


def _key_metrics(project: Project) -> list[str]:
    """The window columns: of the task's metrics, in its table's order, the headline (the
    table's first), those that rank models (the task's default promotion metric and the
    project's) and those with a declared threshold; then the KPIs and drift."""
    spec = project.spec
    names = spec.metrics.names(spec.classes)
    key = {*names[:1], spec.metrics.promotion, spec.promotion.metric}
    key |= set(spec.effectiveness.thresholds)
    return [*(name for name in names if name in key), *spec.kpis, "drift"]


def _fairness(project: Project, latest: windows_module.Window | None) -> list[Fairness]:
    out = []
    for column in project.spec.data.sensitive:
        if latest is None:
            out.append(Fairness(column, measured=False))
            continue
        m = latest.metrics
        dp_key = f"demographic_parity_difference.{column}"
        eo_key = f"equalized_odds_difference.{column}"
        groups = sorted(
            {
                key.split("=", 1)[1]
                for key in m
                if key.startswith((f"selection_rate.{column}=", f"recall.{column}="))
            }
        )
        if dp_key not in m and eo_key not in m and not groups:
            out.append(Fairness(column, measured=False))
            continue
        out.append(
            Fairness(
                column,
                measured=True,
                dp=finite(m.get(dp_key)),
                eo=finite(m.get(eo_key)),
                groups=[
                    (
                        g,
                        finite(m.get(f"selection_rate.{column}={g}")),
                        finite(m.get(f"recall.{column}={g}")),
                    )
                    for g in groups
                ],
            )
        )
    return out


def _explanation(project: Project, mv: registry.ModelVersion) -> Explanation:
    """The importance plot and JSON from the run's ``explain/`` artifacts, if it has them."""
    try:
        names = registry.artifact_names(project, mv.run_id, _EXPLAIN_DIR)
    except CopmlError as exc:
        return Explanation(False, note=str(exc))
    why = registry.run_record(project, mv.run_id).tags.get("copml.explanation", "")
    if _IMPORTANCE_PNG not in names and _IMPORTANCE_JSON not in names:
        reason = why if why.startswith("unavailable") else "no importance was logged at training"
        return Explanation(False, note=f"explanation unavailable: {reason}")
    found = Explanation(True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in (_IMPORTANCE_PNG, _IMPORTANCE_JSON):
            if name not in names:
                continue
            path = registry.download_artifact(
                project, mv.run_id, f"{_EXPLAIN_DIR}/{name}", Path(tmp)
            )
            if name == _IMPORTANCE_PNG:
                found.png_base64 = base64.b64encode(path.read_bytes()).decode("ascii")
            else:
                raw = json.loads(path.read_text(encoding="utf-8"))
                ranked = sorted(raw.items(), key=lambda kv: -abs(float(kv[1])))
                found.importance = {str(k): float(v) for k, v in ranked}
    found.note = "mean absolute SHAP value per feature on the holdout, in log-odds"
    return found


def _limitations(
    card: ModelCard,
    project: Project,
    latest: windows_module.Window | None,
    snap_at: datetime | None,
    now: datetime,
) -> list[str]:
    """Facts a reader must weigh before relying on the model, each from a record."""
    spec = project.spec
    out = []
    for row in card.holdout:
        if row.state == "not met":
            out.append(
                f"On the holdout, {row.metric} {fmt(row.value)} does not meet the declared "
                f"{row.expected}."
            )
        elif row.state == "unknown":
            out.append(f"No holdout {row.metric} was logged for the declared {row.expected}.")
    if card.gate is not None and not card.gate.passed:
        reasons = "; ".join(card.gate.reasons) or "no reason recorded"
        out.append(f"The latest gate refused this version: {reasons}.")
    if latest is None:
        out.append("No production window has been computed for this version yet.")
    else:
        if latest.n_labelled == 0:
            out.append(
                f"The window ending {_when(latest.end)} has no ground truth yet: its "
                "effectiveness is unknown."
            )
        for name, bound in spec.effectiveness.thresholds.items():
            value = latest.metrics.get(name)
            if _state(bound, value) == "not met":
                out.append(
                    f"In production (window ending {_when(latest.end)}), {name} {fmt(value)} "
                    f"does not meet the declared {_bound(bound)}."
                )
        for feature, result in sorted((latest.drift or {}).items()):
            if result.drifted:
                out.append(
                    f"Feature {feature} has drifted in the window ending {_when(latest.end)} "
                    f"(PSI {fmt(finite(result.psi))}, above the declared "
                    f"{spec.effectiveness.drift_psi:g})."
                )
    for item in card.fairness:
        if not item.measured:
            out.append(f"Fairness across {item.column} is {NOT_MEASURED} on production data.")
        elif item.dp is None and item.eo is None:
            out.append(
                f"Fairness across {item.column} is unknown: the window's data cannot support "
                "the differences (too few groups or labelled rows)."
            )
        elif item.eo is None:
            out.append(
                f"Equalized odds across {item.column} is unknown: every group needs labelled "
                "positives and negatives in the window."
            )
    if card.git_commit in ("", "none"):
        out.append("No git commit was recorded: the training code cannot be traced.")
    elif card.git_dirty:
        out.append(
            f"Trained from uncommitted changes on top of commit {card.git_commit[:12]}: the "
            "code at that commit is not exactly the code that trained this version."
        )
    if not card.snapshot_found:
        out.append(f"The training snapshot {card.snapshot_id or '(none)'} is not in this store.")
    elif snap_at is not None:
        days = (now - snap_at).days
        out.append(
            f"The training data was frozen on {card.snapshot_created[:10]} ({days} days before "
            "this card): the model knows nothing that happened since."
        )
    if not card.explanation.available:
        mandatory = " (mandatory at high impact)" if spec.impact == "high" else ""
        out.append(f"No global explanation is available{mandatory}.")
    approved = any(e["kind"] == events.Kind.MODEL_APPROVED for e in card.history)
    if spec.impact == "high" and card.state == registry.CHAMPION and not approved:
        out.append("This high-impact version serves without a recorded approval.")
    return out


def build_card(project: Project, version: str, *, now: datetime | None = None) -> ModelCard:
    """Gather the card's facts for ``version`` from the spec, registry, store and run."""
    spec = project.spec
    now = now or datetime.now(UTC)
    engine = open_store(project.db_url)
    mv = registry.get(project, version)
    current = registry.champion(project)
    state = registry.CHAMPION if current and current.version == mv.version else mv.state
    lineage = mv.tagged_lineage
    params = lineage.params
    if params is None:  # not recorded, or a tag edited by hand: show it, never guess
        text = mv.tags.get(registry.TAG + "params", "")
        params = {"(unreadable)": text} if text else {}

    imported = (
        Imported(lineage.source_uri, lineage.source_run_id, list(lineage.flavors))
        if lineage.imported
        else None
    )
    # An imported version's data is the snapshot it was checked on at import.
    snapshot_id = lineage.reference_snapshot_id if imported else mv.snapshot_id
    snap = snapshots.get(engine, snapshot_id, missing_ok=True) if snapshot_id else None
    target_profile = (snap.profile or {}).get("__target__", {}) if snap else {}

    holdout = registry.holdout_metrics(project, mv)
    rows = [
        ThresholdRow(name, _bound(bound), holdout.get(name), _state(bound, holdout.get(name)))
        for name, bound in spec.effectiveness.thresholds.items()
    ]
    other = {
        k: holdout[k]
        for k in spec.metrics.names(spec.classes)
        if k in holdout and k not in spec.effectiveness.thresholds
    }

    subject = events.model_subject(spec.project, mv.version)
    history = events.history(engine, subject=subject, limit=_EVENT_LIMIT)

    served = [
        w
        for w in windows_module.history(project, limit=_WINDOW_SCAN)
        if w.model_version == mv.version
    ]
    latest = served[-1] if served else None
    key = _key_metrics(project)
    window_rows = [
        WindowRow(
            _when(w.start),
            _when(w.end),
            w.n_predictions,
            w.n_labelled,
            {k: finite(w.metrics.get(k)) for k in key},
        )
        for w in served[-PRODUCTION_WINDOWS:]
    ]

    if spec.impact == "high":
        impact_note = (
            "High impact: every promotion needs a recorded approval by a person, and "
            "explanations are mandatory."
        )
    elif spec.promotion.require_approval:
        impact_note = f"{spec.impact.capitalize()} impact; promotions need a recorded approval."
    else:
        impact_note = f"{spec.impact.capitalize()} impact; promotions follow the gate alone."

    threshold: float | None = None
    review_rule: str | None = None
    predicts = str(spec.data.target)
    no_threshold = "none (no model kind for this task is installed)"
    if spec.model.task in kinds.names():
        kind = kinds.kind_for(spec)
        rule = kind.decision_rule(project, mv)
        threshold = None if math.isnan(rule.threshold) else rule.threshold
        review_rule = rule.review
        target = kind.target(spec.data)
        if target.is_value:
            predicts, no_threshold = f"{predicts} (a value)", "none (the predicted value)"
        elif spec.data.positive is not None:
            predicts = f"{predicts} = {spec.data.positive}"
        else:
            predicts = f"{predicts}: one of {', '.join(map(str, target.classes))}"
            no_threshold = "none (the most probable class)"
    card = ModelCard(
        project=spec.project,
        version=mv.version,
        state=state,
        created=_when(datetime.fromtimestamp(mv.created_at_ms / 1000, UTC)),
        run_id=mv.run_id,
        artifact_sha256=mv.artifact_sha256,
        git_commit=lineage.git_commit or "",
        git_dirty=lineage.git_dirty is not False,  # unknown is not clean
        params=params,
        seed="" if lineage.seed is None else str(lineage.seed),
        objective=spec.objective,
        impact=spec.impact,
        impact_note=impact_note,
        owners={k: v for k, v in spec.owners.model_dump().items() if v},
        target=spec.data.target,
        predicts=predicts,
        threshold=threshold,
        no_threshold=no_threshold,
        review_band=spec.serving.review_band,
        review_rule=review_rule,
        snapshot_id=snapshot_id,
        snapshot_found=snap is not None,
        source=_safe_source(snap.source) if snap else display.MISSING,
        n_rows=snap.n_rows if snap else None,
        positive_rate=finite(target_profile.get("positive_rate")),
        snapshot_created=_when(snap.created_at) if snap else display.MISSING,
        features=spec.data.features,
        pii=list(spec.data.pii),
        sensitive=list(spec.data.sensitive),
        holdout=rows,
        holdout_other=other,
        gate=_gate(spec, history),
        live=_live(spec, history),
        window_metrics=key,
        windows=window_rows,
        fairness_window=(f"{_when(latest.start)} to {_when(latest.end)}" if latest else None),
        fairness=_fairness(project, latest),
        explanation=_explanation(project, mv),
        limitations=[],
        history=[
            {
                "at": _when(e["at"]),
                "kind": e["kind"],
                "actor": e["actor"] or "",
                "reason": e["reason"] or "",
            }
            # oldest first, so it reads as a story (ties keep the order of recording)
            for e in sorted(reversed(history), key=lambda e: times.utc(e["at"]))
        ],
        generated=_when(now),
        imported=imported,
    )
    snap_at = times.utc(snap.created_at) if snap and snap.created_at else None
    card.limitations = _limitations(card, project, latest, snap_at, now)
    return card


# ------------------------------------------------------------------------------ rendering


def _md(value: Any) -> str:
    """Text safe inside Markdown (and its table cells): no raw HTML, no cell breaks."""
    text = fmt(value) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def environment(autoescape: bool) -> Any:
    """The Jinja environment of copml's documents (the card, the evidence pack): strict,
    autoescaped for HTML, with the card's figure formats."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    # Always on for HTML: select_autoescape() would leave a ``.html.j2`` name unescaped.
    env = Environment(
        loader=FileSystemLoader(_TEMPLATES),
        autoescape=autoescape,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    env.filters["md"] = _md
    return env


def render_markdown(card: ModelCard) -> str:
    """The card as Markdown (raw HTML in any recorded text is escaped)."""
    template = environment(False).get_template(MARKDOWN_TEMPLATE)
    text = template.render(c=card, not_measured=NOT_MEASURED)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"  # optional blocks leave blanks


def render_html(card: ModelCard) -> str:
    """The card as one HTML file: inline CSS, the plot as a ``data:`` URI, autoescaped."""
    return environment(True).get_template(HTML_TEMPLATE).render(c=card, not_measured=NOT_MEASURED)


def write_card(project: Project, version: str, folder: Path) -> tuple[Path, Path]:
    """Write ``model-card-v<version>.md`` and ``.html`` into ``folder``; return both paths."""
    card = build_card(project, version)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    markdown = folder / f"model-card-v{card.version}.md"
    html = folder / f"model-card-v{card.version}.html"
    markdown.write_text(render_markdown(card), encoding="utf-8")
    html.write_text(render_html(card), encoding="utf-8")
    return markdown, html
