"""The evidence pack: what an auditor or a notified body asks for under the EU AI Act
(Art. 11 and Annex IV technical documentation, Art. 12 logging, Art. 14 human oversight,
Art. 19 and 26(6) log retention, Art. 72 post-market monitoring, Art. 73 incidents), as
one folder of HTML and JSON that opens offline.

Every figure is read from the live records (copml.yaml, the registry, the store, the event
log, the lineage file) at export, so the pack is as current as the moment it was made and
nothing in it was typed by hand. ``manifest.json`` lists every file with its sha256 and
size, and a digest of that list; :func:`verify` names each file that went missing, was
added or was altered since. The manifest is not signed: whoever receives a pack should
note the manifest's own sha256 (the CLI prints it) where the sender cannot change it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, func, select

from copml import (
    aliases,
    display,
    events,
    lineage,
    model_card,
    oversight,
    registry,
    retention,
    snapshots,
    times,
)
from copml.errors import CopmlError
from copml.monitor import status as requirements_module
from copml.monitor import window as windows_module
from copml.policies import BoolOp, Comparison, Condition
from copml.project import Project
from copml.spec import Duration, Policy, Spec, Threshold
from copml.store import actions as actions_table
from copml.store import alerts as alerts_table
from copml.store import batches as batches_table
from copml.store import events as events_table
from copml.store import open_store
from copml.store import reviews as reviews_table

HTML_TEMPLATE = "evidence.html.j2"
FORMAT = "copml-evidence/1"
MANIFEST = "manifest.json"
INDEX = "index.html"
EVIDENCE_JSON = "evidence.json"
EVENTS_JSON = "events.json"
LINEAGE_JSON = "lineage.json"
CARDS = "model-cards"
_WINDOW_SCAN = 5000
_ARTICLE_19_MONTHS = 6  # Art. 19(1) and 26(6): logs kept at least six months

_OPS = {
    "<": "is below",
    "<=": "is at most",
    ">": "is above",
    ">=": "is at least",
    "==": "equals",
    "!=": "differs from",
}
_ACTIONS = {
    "retrain": "retrain a new version",
    "validate": "put it through the gate",
    "approve": "ask a person to approve it",
    "promote": "promote it to champion",
    "shadow": "run it in shadow beside the champion",
    "canary": "give it a canary share of entities",
    "abort": "end the shadow or canary",
    "redeploy": "redeploy the servers",
    "rollback": "roll back to the previous champion",
    "alert": "alert the owners",
    "review": "ask a person to review",
    "reevaluate": "suspend automated retraining until the owners re-evaluate",
    "retire": "retire the model",
}
_SAFE_STATES = {
    oversight.REVIEW_ALL: "keep answering, but flag every decision for a person and queue it "
    "for review (nothing is cleared automatically)",
    oversight.REFUSE: "refuse to decide: the API answers 503 with Retry-After and batch "
    "scoring scores nothing",
}


# ------------------------------------------------------------------------------ period


@dataclass(frozen=True)
class Period:
    """``[start, end)``: the events, reviews and actions at a time in it, and the windows
    that overlap it; ``start`` None is from the first record."""

    start: datetime | None
    end: datetime

    def holds(self, at: datetime) -> bool:
        at = times.utc(at)
        return (self.start is None or at >= self.start) and at < self.end

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return (self.start is None or times.utc(end) > self.start) and times.utc(start) < self.end

    def words(self) -> str:
        first = (
            "the first record" if self.start is None else display.when(self.start, display.DOCUMENT)
        )
        return f"from {first} to {display.when(self.end, display.DOCUMENT)}"

    def as_dict(self) -> dict[str, str | None]:
        return {"from": self.start.isoformat() if self.start else None, "to": self.end.isoformat()}


def period(
    since: str | datetime | None,
    until: str | datetime | None,
    *,
    now: datetime | None = None,
    names: tuple[str, str] = ("--from", "--to"),
) -> Period:
    """The period the options name (``until`` default now), read as :mod:`copml.times`
    reads every time; a time that is not one, or a start after the end, is refused naming
    the option."""
    start = times.parse_optional(since, names[0])
    end = times.parse_optional(until, names[1]) or times.utc(now or datetime.now(UTC))
    if start is not None and start >= end:
        raise CopmlError(
            f"{names[0]}: {start.isoformat()} is not before {names[1]} {end.isoformat()}; "
            "the period must end after it starts"
        )
    return Period(start, end)


# ------------------------------------------------------------------------------ words


def _redacted_url(url: str) -> str:
    """A URL fit to hand over: a password in it becomes ``***``."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("://", 1)[0] + "://…"
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _host(url: str) -> str:
    """Where a webhook goes, without its path (which often is the secret)."""
    try:
        return urlsplit(url).netloc.rsplit("@", 1)[-1] or "?"
    except ValueError:
        return "?"


def _every(span: Duration) -> str:
    return f"Every {span.unit}" if span.amount == 1 else f"Every {span}"


def _bound(threshold: Threshold) -> str:
    if threshold.min is not None and threshold.max is not None:
        return f"between {threshold.min:g} and {threshold.max:g}"
    if threshold.min is not None:
        return f"at least {threshold.min:g}"
    return f"at most {threshold.max:g}"


def condition_words(condition: Condition) -> str:
    """A policy's condition as a sentence: ``accuracy < 0.75 for 3 windows`` reads
    "accuracy is below 0.75 in each of 3 consecutive windows"."""
    if isinstance(condition, BoolOp):
        left, right = condition_words(condition.left), condition_words(condition.right)
        if condition.op == "or":
            return f"either {left}, or {right}"
        return f"{left} and {right}"
    found: Comparison = condition
    if found.other is None:
        value = f"{found.value:g}"
    elif found.value:
        value = f"{found.other} {'+' if found.value > 0 else '−'} {abs(found.value):g}"
    else:
        value = found.other
    text = f"{found.metric} {_OPS[found.op]} {value}"
    if found.windows > 1:
        text += f" in each of {found.windows} consecutive windows"
    return text


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def policy_words(policy: Policy) -> str:
    """A policy as a sentence: when it holds, what copml does, and how long it waits."""
    text = (
        f"{policy.name}: when {condition_words(policy.condition)} → "
        f"{_listed([_ACTIONS.get(a, a) for a in policy.do])}"
    )
    if policy.cooldown is not None:
        text += f"; after acting it waits {policy.cooldown} before acting again"
    return text + "."


def monitoring_plan(spec: Spec) -> list[str]:
    """The post-market monitoring plan (Art. 72) the spec declares, in plain words."""
    eff = spec.effectiveness
    plan = [
        f"{_every(eff.window)} (a calendar {eff.window.unit}, UTC), copml computes a "
        "monitoring window over the predictions made in it: the effectiveness metrics from "
        "the ground truth loaded for them (estimated from calibrated scores while ground "
        f"truth is missing; a realised figure more than {eff.estimation_tolerance:g} outside "
        "its estimate flags a concept shift), the KPIs, feature drift, human-review "
        "counts and overrides, availability and cost.",
        f"Policies are evaluated on the schedule '{spec.operations.schedule}' (cron, UTC), "
        "each against the stored windows; every evaluation is recorded with the figures "
        "that decided it.",
    ]
    for name, bound in eff.thresholds.items():
        plan.append(f"{_every(eff.window)}, {name} must be {_bound(bound)}.")
    for name, kpi in spec.kpis.items():
        parts = [f"KPI {name} (computed by {kpi.function}, {kpi.better} is better)"]
        if kpi.baseline is not None:
            parts.append(f"baseline {kpi.baseline:g}")
        if kpi.target is not None:
            side = "at most" if kpi.better == "lower" else "at least"
            parts.append(f"target {side} {kpi.target:g}")
        plan.append(", ".join(parts) + ".")
    plan.append(
        f"A feature has drifted when its population stability index against the training "
        f"snapshot exceeds {eff.drift_psi:g}; drift is the share of drifted features."
    )
    if spec.data.sensitive:
        plan.append(
            "Fairness is measured in every window across "
            f"{_listed(list(spec.data.sensitive))} (demographic parity and equalized odds "
            "differences, selection rate and recall per group)."
        )
    if spec.serving.availability is not None:
        plan.append(
            f"Availability must be at least {spec.serving.availability:g} (server heartbeats "
            "and outside probes)."
        )
    if spec.costs.budget_per_window is not None:
        plan.append(f"The cost of a window must be at most {spec.costs.budget_per_window:g}.")
    for policy in spec.policies:
        plan.append(policy_words(policy))
    if not spec.policies:
        plan.append("No policy is declared: windows are computed and shown, nothing acts.")
    channels = []
    if spec.alerts.webhook:
        channels.append(f"a webhook at {_host(spec.alerts.webhook)}")
    if spec.alerts.email:
        channels.append(f"e-mail to {', '.join(spec.alerts.email)}")
    plan.append(
        "Alerts are recorded in the store"
        + (f" and delivered to {_listed(channels)}." if channels else "; no channel is declared.")
    )
    allowed = _listed(sorted(oversight.ALLOWED_WHILE_HALTED))
    plan.append(
        "While a person has halted the project, policies keep evaluating but may only "
        f"{allowed}: they take no automated action."
    )
    return plan


# ------------------------------------------------------------------------------ gathering


@dataclass
class VersionSummary:
    """One version on the pack's first page; its full card is a file of its own."""

    version: str
    state: str
    created: str
    gate: str
    approvals: list[str]
    holdout: list[tuple[str, str, float | None, str]]
    limitations: int
    card_html: str
    card_md: str


@dataclass
class Evidence:
    """Everything the pack shows, read from the live records at ``generated``."""

    project: str
    generated: datetime
    period: Period
    copml_version: str
    purpose: dict[str, Any]
    versions: list[VersionSummary]
    plan: list[str]
    windows: list[dict[str, Any]]
    policies_fired: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    oversight: dict[str, Any]
    alias_moves: list[dict[str, Any]]
    serving: dict[str, Any]
    incidents: list[dict[str, Any]]
    logging: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    cards: list[model_card.ModelCard] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it: times ISO 8601, NaN null, dataclasses as objects."""
    if isinstance(value, datetime):
        return times.utc(value).isoformat()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def _events(engine: Engine, span: Period) -> list[dict[str, Any]]:
    """The period's events, in the order recorded."""
    e = events_table.c
    query = select(events_table).where(e.at < span.end).order_by(e.id)
    if span.start is not None:
        query = query.where(e.at >= span.start)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def _rows(engine: Engine, table: Any, column: Any, span: Period) -> list[dict[str, Any]]:
    query = select(table).where(column < span.end).order_by(column)
    if span.start is not None:
        query = query.where(column >= span.start)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def _purpose(project: Project, cards: list[model_card.ModelCard]) -> dict[str, Any]:
    """Intended purpose (Annex IV 1(a)): what is predicted, why, for whom, at what risk."""
    spec = project.spec
    newest = cards[0] if cards else None
    predicts = newest.predicts if newest else str(spec.data.target)
    return {
        "project": spec.project,
        "objective": " ".join(spec.objective.split()),
        "predicts": predicts,
        "task": spec.model.task,
        "serving": spec.serving.mode,
        "impact": spec.impact,
        "impact_note": newest.impact_note if newest else "",
        "owners": {k: v for k, v in spec.owners.model_dump().items() if v},
        "kpis": [
            {
                "name": name,
                "function": kpi.function,
                "baseline": kpi.baseline,
                "target": kpi.target,
                "better": kpi.better,
            }
            for name, kpi in spec.kpis.items()
        ],
        "features": list(spec.data.features),
        "pii": list(spec.data.pii),
        "sensitive": list(spec.data.sensitive),
    }


def _summary(card: model_card.ModelCard) -> VersionSummary:
    gate = "no gate report"
    if card.gate is not None:
        gate = f"{'passed' if card.gate.passed else 'refused'} ({card.gate.at})"
    approvals = [
        f"{e['at']} by {e['actor']}: {e['reason']}"
        for e in card.history
        if e["kind"] == events.Kind.MODEL_APPROVED
    ]
    name = f"model-card-v{card.version}"
    return VersionSummary(
        card.version,
        card.state,
        card.created,
        gate,
        approvals,
        [(r.metric, r.expected, r.value, r.state) for r in card.holdout],
        len(card.limitations),
        f"{CARDS}/{name}.html",
        f"{CARDS}/{name}.md",
    )


def _windows(project: Project, span: Period) -> list[dict[str, Any]]:
    """The stored windows that overlap the period, with each requirement's state."""
    out = []
    for w in windows_module.history(project, limit=_WINDOW_SCAN):
        if not span.overlaps(w.start, w.end):
            continue
        out.append(
            {
                "start": w.start,
                "end": w.end,
                "model_version": w.model_version,
                "n_predictions": w.n_predictions,
                "n_labelled": w.n_labelled,
                "reviews": None
                if (n := model_card.finite(w.metrics.get("reviews"))) is None
                else int(n),
                "override_rate": model_card.finite(w.metrics.get("override_rate")),
                "requirements": [
                    {
                        "name": r.name,
                        "kind": r.kind,
                        "expected": r.expected,
                        "value": model_card.finite(r.value),
                        "state": r.state,
                    }
                    for r in requirements_module.requirements(project.spec, w)
                ],
                "metrics": {k: model_card.finite(v) for k, v in w.metrics.items()},
            }
        )
    return out


def _reviews(engine: Engine, span: Period) -> dict[str, Any]:
    """The review queue's traffic in the period: opened, resolved, overridden and why."""
    r = reviews_table.c

    def count(*where: Any) -> int:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(*where)).scalar_one())

    def within(column: Any) -> list[Any]:
        found = [column < span.end]
        return found if span.start is None else [*found, column >= span.start]

    opened = count(*within(r.opened_at))
    resolved = count(*within(r.resolved_at))
    overridden = count(*within(r.resolved_at), r.overridden.is_(True))
    still_open = count(
        r.opened_at < span.end, (r.resolved_at.is_(None)) | (r.resolved_at >= span.end)
    )
    query = (
        select(r.resolved_at, r.resolved_by, r.reason)
        .where(*within(r.resolved_at), r.overridden.is_(True))
        .order_by(r.resolved_at)
    )
    with engine.connect() as conn:
        overrides = [
            {"at": row.resolved_at, "by": row.resolved_by, "reason": row.reason or ""}
            for row in conn.execute(query)
        ]
    return {
        "opened": opened,
        "resolved": resolved,
        "overridden": overridden,
        "override_rate": overridden / resolved if resolved else None,
        "open_at_end": still_open,
        "overrides": overrides,
    }


def _oversight(
    project: Project,
    engine: Engine,
    span: Period,
    period_events: list[dict[str, Any]],
    cards: list[model_card.ModelCard],
) -> dict[str, Any]:
    """Human oversight (Art. 14): who can stop it and into what, which decisions a person
    sees, how often people overrode the model, and every halt and resume."""
    declared = oversight.declared(project)
    champion = next((c for c in cards if c.state == registry.CHAMPION), None)
    halts = [
        {
            "at": e["at"],
            "kind": "halt" if e["kind"] == events.Kind.PROJECT_HALTED else "resume",
            "actor": e["actor"],
            "reason": e["reason"] or "",
            "safe_state": (e["evidence"] or {}).get("safe_state"),
        }
        for e in period_events
        if e["kind"] in (events.Kind.PROJECT_HALTED, events.Kind.PROJECT_RESUMED)
    ]
    now = oversight.current(engine, project)
    band = project.spec.serving.review_band
    return {
        "safe_state": declared.safe_state,
        "safe_state_words": _SAFE_STATES.get(declared.safe_state, declared.safe_state),
        "retry_after_seconds": declared.retry_after_seconds,
        "declared_in_spec": project.spec.oversight is not None,
        "review_band": list(band) if band else None,
        "review_rule": champion.review_rule if champion else None,
        "threshold": champion.threshold if champion else None,
        "champion": champion.version if champion else None,
        "reviews": _reviews(engine, span),
        "halts": halts,
        "halted_at_export": (
            None
            if now is None
            else {"at": now.at, "actor": now.actor, "reason": now.reason, "state": now.safe_state}
        ),
    }


def _alias_moves(project: Project, span: Period) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The champion, shadow and canary moves in the period, and what served at its ends."""
    moves = aliases.changes(project, end=span.end)
    inside = [m.as_dict() for m in moves if span.holds(m.at)]
    serving: dict[str, Any] = {}
    if span.start is not None:
        before = [m for m in moves if m.at < span.start]
        serving["start"] = aliases.serving_at(project, span.start, before).as_dict()
    serving["end"] = aliases.serving_at(project, span.end, moves).as_dict()
    return inside, serving


def _incidents(project: Project, span: Period) -> list[dict[str, Any]]:
    """The serious incidents (Art. 73) open at some time in the period, each with its legal
    deadline, the report to the authority and its history of notes."""
    from copml import incidents

    return [
        {**_incident(found), "history": [dataclasses.asdict(n) for n in found.history]}
        for found in incidents.listed(project, since=span.start, until=span.end)
    ]


def _incident(found: Any) -> dict[str, Any]:
    names = (
        "id", "severity", "opened_at", "deadline", "state", "predictions", "reason", "actor",
        "reported_at", "reference", "closed_at",
    )  # fmt: skip
    return {name: getattr(found, name, None) for name in names}


def _months(span: Duration, window: Duration) -> float:
    """A span's length in months (a window count by the monitoring window's)."""
    per = {"minute": 1 / 43830, "hour": 1 / 730.5, "day": 1 / 30.4375, "week": 7 / 30.4375}
    per |= {"month": 1.0, "year": 12.0}
    if span.unit == "window":
        return span.amount * _months(window, window)
    return span.amount * per[span.unit]


def _logging(
    project: Project, engine: Engine, period_events: list[dict[str, Any]]
) -> dict[str, Any]:
    """Logging (Art. 12) and retention (Art. 19, 26(6)): what is recorded, where, how long."""
    spec = project.spec
    keep = spec.retention.predictions
    months = _months(keep, spec.effectiveness.window)
    with engine.connect() as conn:
        oldest = conn.execute(select(func.min(batches_table.c.created_at))).scalar()
        n_batches = int(conn.execute(select(func.count()).select_from(batches_table)).scalar_one())
    if os.environ.get(lineage.URL_ENV, "").strip():
        transport = f"HTTP to {_host(os.environ[lineage.URL_ENV])}"
    elif os.environ.get(lineage.DISABLED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        transport = "disabled"
    else:
        transport = f"file {lineage.events_path(project)}"
    return {
        "predictions_retention": str(keep),
        "predictions_retention_months": round(months, 2),
        "meets_six_months": months >= _ARTICLE_19_MONTHS,
        "oldest_prediction_batch": times.utc(oldest) if oldest is not None else None,
        "prediction_batches": n_batches,
        "on_audit_hold": sorted(retention.held_versions(project), key=int),
        "purges": [
            {
                "at": e["at"],
                "actor": e["actor"],
                "reason": e["reason"] or "",
                **(e["evidence"] or {}),
            }
            for e in period_events
            if e["kind"] == events.Kind.PREDICTIONS_PURGED
        ],
        "what_is_logged": [
            "every prediction, batch or real-time, durably before its answer, with its time, "
            "model version, arm (champion, canary or shadow), label, score and review flag",
            "the input each decision saw (real-time requests per prediction, batches as a "
            "content-addressed snapshot), with PII columns replaced by keyed hashes",
            "ground truth as it is loaded, human reviews with who resolved them and why, "
            "metric windows, policy evaluations, actions, alerts",
            "every state change as an append-only event with actor, reason and evidence",
        ],
        "pii_hashed": list(spec.data.pii),
        "score_precision": spec.serving.score_precision,
        "never_purged": "events, metric windows, policy evaluations and actions are "
        "aggregates or the audit trail: copml purge never deletes them",
        "store_url": _redacted_url(project.db_url),
        "tracking_uri": _redacted_url(project.tracking_uri),
        "lineage_transport": transport,
    }


def _lineage(project: Project, cards: list[model_card.ModelCard]) -> dict[str, Any]:
    """The OpenLineage run events, all of them and grouped by the version they concern
    (its training snapshot, its training run, the batches it scored)."""
    found = lineage.read_events(project)
    name = project.spec.project

    def names(event: dict[str, Any]) -> set[str]:
        return {
            d.get("name", "") for d in (event.get("inputs") or []) + (event.get("outputs") or [])
        }

    by_version = {}
    for card in cards:
        wanted = {f"model/{name}/{card.version}", f"snapshot/{card.snapshot_id}"}
        by_version[card.version] = [e for e in found if names(e) & wanted]
    return {
        "namespace": lineage.job_namespace(project),
        "by_version": by_version,
        "events": found,
    }


def gather(project: Project, span: Period, *, now: datetime | None = None) -> Evidence:
    """Read everything the pack shows from the live records."""
    now = times.utc(now or datetime.now(UTC))
    engine = open_store(project.db_url)
    cards = [
        model_card.build_card(project, mv.version, now=now) for mv in registry.versions(project)
    ]
    period_events = _events(engine, span)
    fired = [
        {
            "at": e["at"],
            "policy": e["actor"].removeprefix("policy:"),
            "condition": e["reason"] or "",
            "do": (e["evidence"] or {}).get("do", []),
            "values": (e["evidence"] or {}).get("values", {}),
        }
        for e in period_events
        if e["kind"] == events.Kind.POLICY_FIRED
    ]
    moves, serving = _alias_moves(project, span)
    try:
        version = metadata.version("copml")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return Evidence(
        project=project.spec.project,
        generated=now,
        period=span,
        copml_version=version,
        purpose=_purpose(project, cards),
        versions=[_summary(c) for c in cards],
        plan=monitoring_plan(project.spec),
        windows=_windows(project, span),
        policies_fired=fired,
        actions=_rows(engine, actions_table, actions_table.c.created_at, span),
        alerts=_rows(engine, alerts_table, alerts_table.c.opened_at, span),
        oversight=_oversight(project, engine, span, period_events, cards),
        alias_moves=moves,
        serving=serving,
        incidents=_incidents(project, span),
        logging=_logging(project, engine, period_events),
        events=period_events,
        cards=cards,
        lineage=_lineage(project, cards),
    )


# ------------------------------------------------------------------------------ rendering


def _when(value: Any) -> str:
    return display.when(value, display.DOCUMENT) if value is not None else display.MISSING


def render_html(found: Evidence) -> str:
    """The pack's first page: inline CSS, no script, nothing fetched, autoescaped."""
    env = model_card.environment(True)
    env.filters["when"] = _when
    return env.get_template(HTML_TEMPLATE).render(e=found, missing=display.MISSING)


def as_json(found: Evidence) -> dict[str, Any]:
    """The pack's facts for machines (cards, events and lineage have files of their own)."""
    skip = {"events", "cards", "lineage"}
    out = {
        f.name: _plain(getattr(found, f.name))
        for f in dataclasses.fields(found)
        if f.name not in skip
    }
    out["period"] = found.period.as_dict()
    out["format"] = FORMAT
    out["files"] = {"events": EVENTS_JSON, "lineage": LINEAGE_JSON, "model_cards": CARDS}
    return out


def _card_json(card: model_card.ModelCard) -> dict[str, Any]:
    found = _plain(card)
    found["explanation"].pop("png_base64", None)  # the picture is in the card's HTML
    return found


def _dump(value: Any) -> str:
    return json.dumps(_plain(value), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


# ------------------------------------------------------------------------------ manifest


def files_digest(files: list[dict[str, Any]]) -> str:
    """The sha256 of the manifest's file list, canonical JSON: editing the list without
    the digest is caught by :func:`verify`."""
    text = json.dumps(files, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _listing(folder: Path) -> list[str]:
    """Every file under ``folder`` but the manifest, as POSIX paths relative to it."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() or path.is_symlink():
            relative = path.relative_to(folder).as_posix()
            if relative != MANIFEST:
                found.append(relative)
    return found


@dataclass(frozen=True)
class Bundle:
    """A written pack: its folder, its manifest and the manifest file's own sha256."""

    folder: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    evidence: Evidence


def export(project: Project, folder: Path, span: Period, *, now: datetime | None = None) -> Bundle:
    """Write the pack into ``folder`` (new or empty). It is written beside it first and
    moved into place whole, so a failed export leaves no half pack behind."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CopmlError(f"{folder} exists and is not an empty folder; export into a new one")
    found = gather(project, span, now=now)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as exc:
        raise CopmlError(f"cannot write into {folder.parent}: {exc.strerror or exc}") from None
    try:
        (work / INDEX).write_text(render_html(found), encoding="utf-8")
        (work / EVIDENCE_JSON).write_text(_dump(as_json(found)), encoding="utf-8")
        (work / EVENTS_JSON).write_text(_dump(found.events), encoding="utf-8")
        (work / LINEAGE_JSON).write_text(_dump(found.lineage), encoding="utf-8")
        for card in found.cards:
            (work / CARDS).mkdir(exist_ok=True)
            name = work / CARDS / f"model-card-v{card.version}"
            name.with_suffix(".html").write_text(model_card.render_html(card), encoding="utf-8")
            name.with_suffix(".md").write_text(model_card.render_markdown(card), encoding="utf-8")
            name.with_suffix(".json").write_text(_dump(_card_json(card)), encoding="utf-8")
        files = [
            {
                "path": p,
                "sha256": snapshots.file_sha256(work / p),
                "size": (work / p).stat().st_size,
            }
            for p in _listing(work)
        ]
        manifest = {
            "format": FORMAT,
            "project": found.project,
            "generated_at": found.generated.isoformat(),
            "period": found.period.as_dict(),
            "copml_version": found.copml_version,
            "files": files,
            "files_sha256": files_digest(files),
        }
        (work / MANIFEST).write_text(_dump(manifest), encoding="utf-8")
        if folder.exists():
            folder.rmdir()  # empty, checked above
        os.replace(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Bundle(folder, manifest, snapshots.file_sha256(folder / MANIFEST), found)


# ------------------------------------------------------------------------------ verify


@dataclass(frozen=True)
class Finding:
    """One file that does not match the manifest: ``missing``, ``extra`` or ``altered``."""

    path: str
    problem: str
    detail: str = ""


@dataclass(frozen=True)
class Verification:
    folder: Path
    checked: int
    findings: list[Finding]
    manifest: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return not self.findings


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "not an object"
    path = entry.get("path")
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        return "no relative path"
    if ".." in path.split("/") or path == MANIFEST:
        return "a path outside the pack"
    if not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("size"), int):
        return "no sha256 or size"
    return None


def verify(folder: Path) -> Verification:
    """Check every file of the pack at ``folder`` against its manifest; each missing,
    extra or altered file is a finding named by its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CopmlError(f"{folder} is not a folder")
    path = folder / MANIFEST
    if not path.is_file():
        return Verification(folder, 0, [Finding(MANIFEST, "missing")], None)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, list):
            raise TypeError("files is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        return Verification(folder, 0, [Finding(MANIFEST, "altered", f"unreadable: {exc}")], None)
    findings = []
    if manifest.get("files_sha256") != files_digest(files):
        findings.append(Finding(MANIFEST, "altered", "its file list does not match its digest"))
    listed: set[str] = set()
    for entry in files:
        if (why := _entry_problem(entry)) is not None:
            name = entry.get("path") if isinstance(entry, dict) else None
            findings.append(Finding(str(name or MANIFEST), "altered", f"manifest entry: {why}"))
            continue
        name = entry["path"]
        listed.add(name)
        target = folder / name
        if not target.is_file():
            findings.append(Finding(name, "missing"))
            continue
        size = target.stat().st_size
        if size != entry["size"]:
            findings.append(
                Finding(name, "altered", f"{size} bytes, manifest says {entry['size']}")
            )
        elif snapshots.file_sha256(target) != entry["sha256"]:
            findings.append(Finding(name, "altered", "sha256 differs from the manifest"))
    for name in _listing(folder):
        if name not in listed:
            findings.append(Finding(name, "extra", "not in the manifest"))
    return Verification(folder, len(listed), findings, manifest)
