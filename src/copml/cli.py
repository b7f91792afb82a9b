"""The ``copml`` command: a thin skin that parses arguments, calls a service and renders.

Heavy libraries (pandas, scikit-learn, MLflow) are imported inside the commands, so
``copml --help`` answers at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from copml import times
from copml.display import figure, time_left

if TYPE_CHECKING:
    from copml.project import Project

app = typer.Typer(
    name="copml",
    help="Continuous Operations for Production ML: from copml.yaml to a model that keeps "
    "earning its keep.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="The model registry: versions, lineage, champion.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="API keys for copml serve (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
incident_app = typer.Typer(
    help="Serious incidents (EU AI Act Art. 73): open, note, report to the authority by the "
    "legal deadline, close.",
    no_args_is_help=True,
)
app.add_typer(incident_app, name="incident")

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
AtOpt = Annotated[
    str | None,
    typer.Option(
        "--at",
        help=f"Treat this time as now, for backfills and simulations ({times.HELP}).",
        show_default=False,
    ),
]
F = TypeVar("F", bound=Callable[..., Any])


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # a log or a pipe: tables keep their columns instead of "2026…"
    return console


def _fails_cleanly(func: F) -> F:
    """Turn copml's own errors into a readable message and exit code 1, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from copml.errors import CopmlError

        try:
            return func(*args, **kwargs)
        except CopmlError as exc:
            from rich.markup import escape

            # soft_wrap: one message stays one line in a log, however narrow the console
            _console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _project(path: Path) -> Project:
    from copml.project import load_project

    return load_project(path)


def _print_json(value: Any) -> None:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if dataclasses.is_dataclass(v) and not isinstance(v, type):  # a window's drift
            v = dataclasses.asdict(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    sys.stdout.write(json.dumps(clean(value), indent=2, default=str) + "\n")


@app.command()
@_fails_cleanly
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")],
    example: Annotated[str, typer.Option(help="Reference application: churn or xray.")] = "churn",
) -> None:
    """Scaffold a project from a reference application."""
    from copml.scaffold import init as scaffold

    written = scaffold(directory, example)
    console = _console()
    for path in written:
        console.print(f"  created {path}")
    console.print(
        f"[green]ready:[/] cd {directory} && copml validate && copml snapshot && copml train"
    )


@app.command()
@_fails_cleanly
def validate(
    project: ProjectOpt = Path("."),
    schema: Annotated[bool, typer.Option("--schema", help="Print the JSON Schema.")] = False,
) -> None:
    """Check copml.yaml; exit 1 naming the field and line of every problem."""
    if schema:
        from copml.spec import json_schema

        _print_json(json_schema())
        return
    p = _project(project)
    _console().print(
        f"[green]valid:[/] {p.spec.project} — {len(p.spec.data.columns)} columns, "
        f"{len(p.spec.kpis)} KPIs, {len(p.spec.policies)} policies"
    )


@app.command()
@_fails_cleanly
def snapshot(
    source: Annotated[str | None, typer.Argument(help="File, folder or SQLAlchemy URL.")] = None,
    project: ProjectOpt = Path("."),
    query: Annotated[str | None, typer.Option(help="SQL query for a SQLAlchemy URL.")] = None,
    by_reference: Annotated[
        bool, typer.Option(help="Record a manifest of file hashes instead of copying the data.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Validate data against copml.yaml and freeze it; prints the snapshot id."""
    from copml import snapshots
    from copml.events import user_actor
    from copml.store import open_store

    p = _project(project)
    p.ensure_home()
    began = time.perf_counter()
    # A spinner on a terminal (a table is read whole; images show their own bar).
    with _console(stderr=True).status("reading, validating and freezing…"):
        snap = snapshots.create(
            open_store(p.db_url),
            p.spec.data,
            root=p.root,
            directory=p.snapshots_dir,
            source=source,
            query=query,
            by_reference=by_reference,
            actor=user_actor(),
        )
    took = time.perf_counter() - began
    from copml import lineage

    lineage.emit(
        p,
        "snapshot",
        run_id=snap.id,
        inputs=[lineage.file_dataset(source or p.spec.data.source)],
        outputs=[lineage.snapshot_dataset(p, snap)],
    )
    if as_json:
        _print_json({"id": snap.id, "rows": snap.n_rows, "new": snap.created, "path": snap.path})
        return
    state = "frozen" if snap.created else "unchanged (same content as before)"
    rate = f"{snap.n_rows / took:,.0f} rows/s" if took > 0 else "—"
    _console().print(
        f"snapshot [bold]{snap.id}[/] — {snap.n_rows:,} rows, {state} in {took:.1f} s ({rate})"
    )


def _parse_params(items: list[str]) -> dict[str, Any]:
    import yaml

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint="--param")
        params[key] = yaml.safe_load(value)
    return params


@app.command()
@_fails_cleanly
def train(
    project: ProjectOpt = Path("."),
    snapshot_id: Annotated[str | None, typer.Option("--snapshot", help="Snapshot id.")] = None,
    param: Annotated[list[str], typer.Option(help="Override a parameter: key=value.")] = [],  # noqa: B006
    seed: Annotated[int | None, typer.Option(help="Override the spec's seed.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run train() as a tracked MLflow run; prints run id and registered version."""
    from copml.events import user_actor
    from copml.train import train as run_training

    params = _parse_params(param)
    p = _project(project)
    with _console(stderr=True).status("training…"):
        result = run_training(
            p, snapshot_id=snapshot_id, params=params, seed=seed, actor=user_actor()
        )
    if as_json:
        _print_json(result.__dict__)
        return
    console = _console()
    console.print(f"run [bold]{result.run_id}[/] → model version [bold]{result.version}[/]")
    shown = [k for k in p.spec.metrics.metrics if k in result.metrics]  # the task's, in order
    console.print("holdout: " + ", ".join(f"{k} {figure(result.metrics[k])}" for k in shown))
    if result.failures:
        console.print("[yellow]misses the declared minimums:[/] " + "; ".join(result.failures))
    if result.champion:
        console.print(f"[green]version {result.version} is now champion[/]")


@models_app.command("list")
@_fails_cleanly
def models_list(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Registered versions with their state and lineage."""
    from copml import registry

    p = _project(project)
    found = [(v, v.tagged_lineage) for v in registry.versions(p)]
    if as_json:
        _print_json(
            [
                {
                    "version": v.version,
                    "state": v.state,
                    "run_id": v.run_id,
                    "snapshot_id": lineage.snapshot_id,
                    "lineage": lineage.origin,
                    "artifact_sha256": lineage.artifact_sha256,
                    **(
                        {
                            "source_uri": lineage.source_uri,
                            "source_run_id": lineage.source_run_id,
                            "flavors": list(lineage.flavors),
                            "signature": lineage.signature,
                        }
                        if lineage.imported
                        else {}
                    ),
                }
                for v, lineage in found
            ]
        )
        return
    from rich.table import Table

    table = Table("version", "state", "run", "snapshot", "commit", "lineage")
    for v, lineage in found:
        table.add_row(
            v.version,
            v.state,
            v.run_id[:12],
            lineage.snapshot_id[:12],
            (lineage.git_commit or "")[:10],
            f"imported from {lineage.source_uri}" if lineage.imported else lineage.origin,
        )
    _console().print(table)


@models_app.command("import")
@_fails_cleanly
def models_import(
    uri: Annotated[
        str, typer.Argument(help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH.")
    ],
    tracking_uri: Annotated[
        str | None, typer.Option(help="The MLflow store that holds it (default: the project's).")
    ] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Register a model your team already has in MLflow as a new version (lineage: imported);
    it is then gated and promoted like a trained one."""
    from copml.events import user_actor
    from copml.model_import import import_model

    result = import_model(_project(project), uri, tracking_uri=tracking_uri, actor=user_actor())
    if as_json:
        _print_json(result.__dict__)
        return
    console = _console()
    console.print(
        f"imported {uri} (run {result.source_run_id}, flavors {', '.join(result.flavors)}) "
        f"→ model version [bold]{result.version}[/], sha256 {result.artifact_sha256[:12]}…"
    )
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"next: copml models validate {result.version}")


@models_app.command("show")
@_fails_cleanly
def models_show(
    version: str,
    project: ProjectOpt = Path("."),
    card: Annotated[
        bool, typer.Option("--card", help="Write the model card (Markdown and HTML).")
    ] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the card.")] = Path(
        "."
    ),
    as_json: JsonOpt = False,
) -> None:
    """One version: lineage tags and holdout metrics; --card writes its model card."""
    from copml import registry

    p = _project(project)
    mv = registry.get(p, version)
    if card:
        from copml.model_card import write_card

        markdown, html = write_card(p, version, output)
        _console().print(f"model card: {markdown} and {html}")
        return
    info = {
        "version": mv.version,
        "state": mv.state,
        "run_id": mv.run_id,
        "source": mv.source,
        "tags": mv.tags,
        "metrics": registry.run_record(p, mv.run_id).metrics,
    }
    if as_json:
        _print_json(info)
        return
    console = _console()
    for key, value in info.items():
        if isinstance(value, dict):
            console.print(f"[bold]{key}[/]")
            for k, v in sorted(value.items()):
                console.print(f"  {k}: {figure(v)}")
        else:
            console.print(f"[bold]{key}[/]: {value}")


@models_app.command("promote")
@_fails_cleanly
def models_promote(
    version: str,
    reason: Annotated[str, typer.Option(help="Why: recorded with the promotion.")],
    project: ProjectOpt = Path("."),
) -> None:
    """Make VERSION the champion: it goes through the gate, and needs an approval first
    where the spec says so (serving processes follow within their poll interval)."""
    from copml.events import user_actor
    from copml.operate import lifecycle

    p = _project(project)
    lifecycle.promote(p, version, actor=user_actor(), reason=reason, gate_first=True)
    _console().print(f"version {version} is now champion")


@models_app.command("validate")
@_fails_cleanly
def models_validate(
    version: str, project: ProjectOpt = Path("."), as_json: JsonOpt = False
) -> None:
    """Gate VERSION: the declared minimums, and the champion on the same evaluation rows."""
    from copml.events import user_actor
    from copml.operate import lifecycle

    report = lifecycle.gate(_project(project), version, actor=user_actor())
    if as_json:
        _print_json(report.evidence())
    else:
        console = _console()
        verdict = "[green]passes[/]" if report.passed else "[red]refused[/]"
        console.print(f"v{version} {verdict} the gate on {report.rows} rows")
        for name, value in report.candidate_metrics.items():
            theirs = report.champion_metrics.get(name)
            other = (
                f"  (champion v{report.champion}: {figure(theirs)})" if theirs is not None else ""
            )
            console.print(f"  {name:<14} {figure(value)}{other}")
        for reason in report.reasons:
            console.print(f"  [red]✗[/] {reason}")
    if not report.passed:
        raise typer.Exit(1)


@models_app.command("approve")
@_fails_cleanly
def models_approve(
    version: str,
    reason: Annotated[str, typer.Option(help="Why: recorded with the approval.")],
    project: ProjectOpt = Path("."),
) -> None:
    """Record your approval of VERSION for promotion (required when impact is high)."""
    from copml.events import user_actor
    from copml.operate import lifecycle

    lifecycle.approve(_project(project), version, actor=user_actor(), reason=reason)
    _console().print(f"approval of version {version} recorded")


@models_app.command("rollback")
@_fails_cleanly
def models_rollback(
    reason: Annotated[str, typer.Option(help="Why: recorded with the roll-back.")],
    project: ProjectOpt = Path("."),
) -> None:
    """Move the champion back to the version it replaced."""
    from copml.events import user_actor
    from copml.operate import lifecycle

    version = lifecycle.rollback(_project(project), actor=user_actor(), reason=reason)
    _console().print(f"rolled back: version {version} is champion again")


def _share(text: str) -> float:
    """``10%`` or ``0.1``: a share of entities."""
    from copml.rollout import share

    try:
        return share(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@models_app.command("shadow")
@_fails_cleanly
def models_shadow(
    version: str,
    reason: Annotated[str, typer.Option(help="Why: recorded with the change.")],
    project: ProjectOpt = Path("."),
) -> None:
    """Run VERSION in shadow: it scores every request and batch beside the champion, logged
    under its own version, and answers no one (servers follow within their poll interval)."""
    from copml.events import user_actor
    from copml.operate import lifecycle

    lifecycle.shadow(_project(project), version, actor=user_actor(), reason=reason)
    _console().print(f"version {version} runs in shadow")


@models_app.command("canary")
@_fails_cleanly
def models_canary(
    version: str,
    share: Annotated[str, typer.Option(help="Share of entities it answers: 10% or 0.1.")],
    reason: Annotated[str, typer.Option(help="Why: recorded with the change.")],
    project: ProjectOpt = Path("."),
) -> None:
    """Let VERSION answer a share of entities (sticky: by the keyed hash of each entity's
    id), the champion the rest; each prediction is logged with its version and arm."""
    from copml.events import user_actor
    from copml.operate import lifecycle

    found = lifecycle.canary(
        _project(project), version, _share(share), actor=user_actor(), reason=reason
    )
    _console().print(f"version {version} answers {found.share:.0%} of entities")


@models_app.command("abort")
@_fails_cleanly
def models_abort(
    reason: Annotated[str, typer.Option(help="Why: recorded with the change.")],
    shadow: Annotated[bool, typer.Option("--shadow", help="End the shadow instead.")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """End the canary (the champion answers everyone again), or with --shadow the shadow."""
    from copml import rollout
    from copml.events import user_actor
    from copml.operate import lifecycle

    arm = rollout.SHADOW if shadow else rollout.CANARY
    lifecycle.abort(_project(project), actor=user_actor(), reason=reason, arm=arm)
    _console().print(f"the {arm} has ended")


@models_app.command("history")
@_fails_cleanly
def models_history(
    at: Annotated[
        str | None,
        typer.Option(help=f"Which versions served at this time ({times.HELP}); default now."),
    ] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Every change of the champion and of the shadow and canary, with time, actor, reason
    and gate evidence, and which versions served at --at (from the events; the present is
    cross-checked with the registry)."""
    from copml import aliases

    p = _project(project)
    when = times.parse_optional(at, "--at")
    found = aliases.changes(p, end=when)
    serving = aliases.serving_at(p, when, found)
    if as_json:
        _print_json({"changes": [c.as_dict() for c in found], "serving": serving.as_dict()})
        return
    from rich.table import Table

    table = Table("at", "alias", "version", "was", "by", "reason", "gate")
    for c in found:
        share = f" ({c.share:.0%})" if c.share else ""
        table.add_row(
            f"{c.at:%Y-%m-%d %H:%M}",
            c.alias,
            (c.version or "-") + share,
            c.previous or "-",
            c.actor,
            c.reason,
            c.gate_summary,
        )
    console = _console()
    console.print(table)
    line = f"at {serving.at:%Y-%m-%d %H:%M} UTC: champion v{serving.champion or '-'}"
    if serving.shadow:
        line += f", shadow v{serving.shadow}"
    if serving.canary:
        line += f", canary v{serving.canary} ({serving.share:.0%})"
    console.print(line)
    if serving.consistent is False:
        console.print(
            f"[bold red]the registry's champion alias names v{serving.registry['champion']}"
            ", not the recorded one[/] (moved outside copml?)"
        )


@models_app.command("retire")
@_fails_cleanly
def models_retire(
    version: Annotated[str | None, typer.Argument(help="One version; all when omitted.")] = None,
    reason: Annotated[str, typer.Option(help="Why: recorded with the retirement.")] = "",
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Retire a version, or the model: stop serving and scheduling, archive, free copies."""
    from copml.errors import CopmlError
    from copml.events import user_actor
    from copml.operate import lifecycle

    if not reason.strip():
        raise CopmlError("say why: --reason TEXT")
    done = lifecycle.retire(_project(project), version, actor=user_actor(), reason=reason)
    if as_json:
        _print_json(done.__dict__)
        return
    _console().print(
        f"retired version(s) {', '.join(done.versions) or 'none'}; freed "
        f"{done.freed_bytes / 1e6:.1f} MB of local model copies; {done.kept}"
    )


def _writable_file(path: Path, option: str) -> Path:
    """``path`` as a file that can be written: its folder made now, so that a folder that
    cannot be created refuses the command before any work is done or logged."""
    from copml.errors import CopmlError

    if path.is_dir():
        raise CopmlError(f"{option}: {path} is a folder; name the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CopmlError(
            f"{option}: cannot create the folder {path.parent}: {exc.strerror or exc}"
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise CopmlError(f"{option}: the folder {path.parent} is not writable")
    return path


@app.command()
@_fails_cleanly
def score(
    input_path: Annotated[
        str,
        typer.Argument(
            metavar="INPUT", help="CSV or Parquet file, or the folder a model kind reads."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="CSV or Parquet to write (spark, ray: a folder of Parquet parts).",
        ),
    ],
    project: ProjectOpt = Path("."),
    engine: Annotated[
        str | None,
        typer.Option(help="local | spark | ray (default: serving.engine in copml.yaml, or local)."),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(help="spark://host:port or a Ray address; without it a local cluster."),
    ] = None,
    partition_rows: Annotated[
        int,
        typer.Option(min=1, help="spark, ray: about this many rows per partition."),
    ] = 500_000,
    at: AtOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a batch with the champion; every prediction is logged."""
    from copml.events import user_actor

    when = times.parse_optional(at, "--at")
    p = _project(project)
    from copml.engines import ENGINES

    if engine is not None and engine not in ENGINES:
        raise typer.BadParameter(
            f"one of {', '.join(ENGINES)}, not {engine!r}", param_hint="--engine"
        )
    from copml.partitioned import engine_for

    chosen = engine_for(p, engine)
    if chosen == "local":
        if cluster is not None:
            raise typer.BadParameter(
                "--cluster needs --engine spark or ray", param_hint="--cluster"
            )
        output = _writable_file(output, "--output")
        from copml.score import score as run_scoring

        result = run_scoring(
            p, input_path, output, at=when, actor=user_actor(), progress=not as_json
        )
    else:
        from copml.partitioned import score as run_partitioned

        result = run_partitioned(
            p,
            input_path,
            output,
            engine=chosen,
            cluster=cluster,
            partition_rows=partition_rows,
            at=when,
            actor=user_actor(),
        )
    if as_json:
        _print_json(result.__dict__)
        return
    positives = "" if result.positives is None else f" ({result.positives} positive)"
    _console().print(
        f"scored {result.rows} rows with model version {result.model_version}"
        f"{positives} → {result.output}"
    )


@app.command()
@_fails_cleanly
def feedback(
    file: Annotated[Path, typer.Argument(help="CSV or Parquet: id or prediction_id, actual.")],
    project: ProjectOpt = Path("."),
    skip_unknown: Annotated[
        bool, typer.Option(help="Load the known rows even if some ids are unknown.")
    ] = False,
    at: AtOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Load ground truth; loading the same file twice changes nothing."""
    from copml.events import user_actor
    from copml.feedback import load

    when = times.parse_optional(at, "--at")
    p = _project(project)
    result = load(p, file, at=when, skip_unknown=skip_unknown, actor=user_actor())
    if as_json:
        _print_json(result.__dict__)
        return
    message = (
        f"{result.rows} rows: {result.loaded} loaded, {result.corrected} corrected, "
        f"{result.unchanged} unchanged, {result.unknown} unknown"
    )
    if result.unknown:
        message += f" (e.g. {', '.join(result.unknown_examples)})"
    _console().print(message)


def _window_table(window: Any) -> Any:
    from rich.table import Table

    table = Table(
        "metric", "value", title=f"window {window.start:%Y-%m-%d} → {window.end:%Y-%m-%d}"
    )
    for key, value in window.metrics.items():
        if not key.startswith("drift."):
            table.add_row(key, figure(value))
    return table


@app.command()
@_fails_cleanly
def monitor(project: ProjectOpt = Path("."), at: AtOpt = None, as_json: JsonOpt = False) -> None:
    """Compute and store the current metric window; print it."""
    from copml.monitor.window import monitor as run_monitor

    when = times.parse_optional(at, "--at")
    p = _project(project)
    window = run_monitor(p, end=when)
    if as_json:
        _print_json(window.__dict__)
        return
    console = _console()
    console.print(_window_table(window))
    drifted = [f for f, d in window.drift.items() if d.drifted]
    if drifted:
        console.print(f"[yellow]drifted features:[/] {', '.join(drifted)}")


@app.command()
@_fails_cleanly
def status(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Each declared requirement: met / not met / unknown, with its figure."""
    from datetime import UTC, datetime

    from copml import incidents, oversight, registry, rollout
    from copml.monitor.replicas import replicas
    from copml.monitor.status import requirements
    from copml.monitor.window import history
    from copml.store import open_store

    p = _project(project)
    windows = history(p, limit=1)
    latest = windows[-1] if windows else None
    found = requirements(p.spec, latest)
    champion = registry.champion(p)
    engine = open_store(p.db_url)
    serving = replicas(engine)
    running = rollout.current(engine, p.spec.project)
    halted = oversight.current(engine, p)
    now = datetime.now(UTC)
    pending = incidents.in_force(engine)
    # The latest window's figures per arm, for the declared metrics and their estimates.
    names = [*p.spec.effectiveness.thresholds, "predictions", "labelled"]
    names += [f"estimated_{n}" for n in p.spec.effectiveness.thresholds]
    figures = latest.metrics if latest else {}
    arms = {
        arm: {n: figures[f"{arm}.{n}"] for n in names if f"{arm}.{n}" in figures}
        for arm in rollout.ARMS
        if figures.get(f"{arm}.predictions")
    }
    if as_json:
        _print_json(
            {
                "project": p.spec.project,
                "champion": champion.version if champion else None,
                "window_end": latest.end if latest else None,
                "requirements": [r.__dict__ for r in found],
                "replicas": [r.__dict__ for r in serving],
                "rollout": running.evidence(),
                "arms": arms,
                "halted": None
                if halted is None
                else {**halted.__dict__, "at": halted.at.isoformat()},
                "incidents": [i.as_dict(now) for i in pending],
            }
        )
        return
    from rich.table import Table

    colour = {"met": "green", "not met": "red", "unknown": "yellow"}
    title = f"{p.spec.project}: champion {champion.version if champion else 'none'}"
    if latest:
        title += f", window ending {latest.end:%Y-%m-%d}"
    table = Table("requirement", "kind", "expected", "value", "state", title=title)
    for r in found:
        table.add_row(
            r.name, r.kind, r.expected, figure(r.value), f"[{colour[r.state]}]{r.state}[/]"
        )
    console = _console()
    console.print(table)
    if halted is not None:
        console.print(
            f"[bold red]halted[/] into {halted.safe_state} by {halted.actor} at "
            f"{halted.at:%Y-%m-%d %H:%M} UTC: {halted.reason} (copml resume --reason ...)"
        )
    if pending:
        console.print(_incident_table(pending, now, "incidents not closed"))
    if serving:
        seen = Table("replica", "pid", "version", "last heartbeat", "state", title="serving")
        for r in serving:
            state = ("live" if r.ok else "live, no model") if r.live else "[yellow]silent[/]"
            beat = f"{r.last_beat:%Y-%m-%d %H:%M:%S} UTC"
            seen.add_row(r.replica, str(r.pid or ""), r.model_version or "—", beat, state)
        console.print(seen)
    if running.shadow or running.canary:
        parts = [f"v{running.shadow} in shadow"] if running.shadow else []
        if running.canary:
            parts.append(f"v{running.canary} answers {running.share:.0%} of entities")
        console.print("rollout: " + "; ".join(parts))
    if len(arms) > 1:
        shown = [n for n in names if any(n in a for a in arms.values())]
        table = Table("metric", *arms, title="the latest window per arm")
        for n in shown:
            table.add_row(n, *(figure(arms[a].get(n, math.nan)) for a in arms))
        console.print(table)


@app.command()
@_fails_cleanly
def demo(
    example: Annotated[str, typer.Argument(help="Reference application: churn or xray.")] = "churn",
    months: Annotated[int, typer.Option(min=2, max=60, help="churn: months to simulate.")] = 12,
    weeks: Annotated[int, typer.Option(min=2, max=52, help="xray: weeks to simulate.")] = 6,
    directory: Annotated[Path | None, typer.Option("--dir", help="Project folder to use.")] = None,
    shift_month: Annotated[
        int, typer.Option(help="churn: month of the market shift (0: none).")
    ] = 7,
    shift_week: Annotated[
        int, typer.Option(help="xray: week of the scanner change (0: none).")
    ] = 3,
    data: Annotated[
        Path | None,
        typer.Option(help="xray: a real image folder (e.g. ../shared/data/chest-xray)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = 7,
    scenario: Annotated[
        str,
        typer.Option(
            help="recoverable: retraining fixes the shift; persistent: it cannot; canary: "
            "the retrained model runs in shadow, then as a canary, before its promotion; "
            "canary-blip: the shift lasts two months, and the worse challenger is aborted."
        ),
    ] = "recoverable",
) -> None:
    """The whole lifecycle on simulated time; ends with a table and an HTML report."""
    if example == "xray":
        from copml.apps.xray.demo import run_xray_demo

        run_xray_demo(
            directory,
            weeks=weeks,
            shift_week=shift_week or None,
            data=data,
            seed=seed,
            console=_console(),
        )
        return
    if example != "churn":
        from copml.errors import CopmlError

        raise CopmlError(f"no demo {example!r}; available: churn, xray")
    from copml.apps.churn.demo import run_churn_demo

    run_churn_demo(
        directory,
        months=months,
        shift_month=shift_month or None,
        seed=seed,
        scenario=scenario,
        console=_console(),
    )


@app.command()
@_fails_cleanly
def operate(
    project: ProjectOpt = Path("."),
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    at: AtOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the spec's schedule and evaluate the policies; execute their actions."""
    from copml.operate import runner, schedule

    when = times.parse_optional(at, "--at")
    p = _project(project)
    if not once:
        if when is not None:
            from copml.errors import CopmlError

            raise CopmlError("--at needs --once: the scheduler runs on the real clock")
        schedule.run_forever(p, console=_console())
        return
    result = schedule.run_once(p, at=when)
    if as_json:
        _print_json(runner.summary(result))
        return
    console = _console()
    for step in result.steps:
        console.print(f"step {step}")
    for action_id in result.recovered:
        console.print(f"[yellow]recovered[/] interrupted action {action_id}")
    for sent in result.incident_alerts:
        console.print(
            f"[red]incident {sent['incident']}[/]: {sent['threshold_percent']} % of the time to "
            "its reporting deadline is gone; alerted"
        )
    for e in result.evaluations:
        outcome = {True: "[red]holds[/]", False: "[green]does not hold[/]", None: "unknown"}
        console.print(
            f"policy {e.policy}: {outcome[e.outcome]}"
            + (" → acting" if e.acted else f" ({e.note})" if e.note else "")
        )
    for a in result.actions:
        colour = "green" if a["state"] == "succeeded" else "red"
        console.print(
            f"  action {a['id']} {a['kind']}: [{colour}]{a['state']}[/]"
            + (f" — {a['error']}" if a.get("error") else "")
        )


@app.command()
@_fails_cleanly
def acknowledge(
    reason: Annotated[str, typer.Option(help="What the owners decided.")],
    project: ProjectOpt = Path("."),
) -> None:
    """Acknowledge the re-evaluation flag as an owner: automated retraining resumes."""
    from copml.events import user_actor
    from copml.operate import reevaluation

    reevaluation.acknowledge(_project(project), actor=user_actor(), reason=reason)
    _console().print("acknowledged: automated retraining may resume")


@app.command()
@_fails_cleanly
def halt(
    reason: Annotated[str, typer.Option(help="Why: recorded with the halt.")],
    project: ProjectOpt = Path("."),
) -> None:
    """Stop the project into the safe state its spec declares (oversight.safe_state):
    review_all (every decision queued for a person) or refuse (503); servers obey within
    a second, batch scoring and policies at once, until copml resume."""
    from copml import oversight
    from copml.events import user_actor

    found = oversight.halt(_project(project), actor=user_actor(), reason=reason)
    _console().print(f"halted into {found.safe_state} by {found.actor}: {found.reason}")


@app.command()
@_fails_cleanly
def resume(
    reason: Annotated[str, typer.Option(help="Why it may run again: recorded.")],
    project: ProjectOpt = Path("."),
) -> None:
    """End the halt: servers answer as before, automation runs again."""
    from copml import oversight
    from copml.events import user_actor

    ended = oversight.resume(_project(project), actor=user_actor(), reason=reason)
    _console().print(f"resumed (halted since {ended.at} by {ended.actor})")


def _time_left(incident: Any, now: Any) -> str:
    """The time left to the deadline (overdue in red); when it was reported, once it was."""
    if not incident.awaits_report:
        return f"reported {incident.reported_at:%Y-%m-%d}" if incident.reported_at else "—"
    left = time_left(incident.time_left(now))
    return f"[bold red]{left}[/]" if left.startswith("overdue") else left


def _incident_table(found: list[Any], now: Any, title: str) -> Any:
    from rich.table import Table

    table = Table(
        "id", "severity", "state", "opened", "deadline", "time left", "predictions", "reason",
        title=title,
    )  # fmt: skip
    for i in found:
        cited = ", ".join(i.predictions[:3]) + (" …" if len(i.predictions) > 3 else "")
        table.add_row(
            str(i.id),
            i.severity,
            i.state + (f" ({i.reference})" if i.reference else ""),
            f"{i.opened_at:%Y-%m-%d %H:%M}",
            f"{i.deadline:%Y-%m-%d %H:%M}",
            _time_left(i, now) if i.state != "closed" else "—",
            cited,
            i.reason,
        )
    return table


def _shown_incident(found: Any, what: str) -> None:
    _console().print(
        f"incident {found.id} {what}: {found.severity}, {found.state}, report due by "
        f"{found.deadline:%Y-%m-%d %H:%M} UTC"
    )


@incident_app.command("open")
@_fails_cleanly
def incident_open(
    severity: Annotated[
        str, typer.Option(help="serious (15 days to report), death (10 days), widespread (2 days).")
    ],
    reason: Annotated[str, typer.Option(help="What happened: recorded.")],
    prediction: Annotated[
        list[str] | None,
        typer.Option("--prediction", help="A prediction id it concerns (repeat for several)."),
    ] = None,
    project: ProjectOpt = Path("."),
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help=f"When you became aware (default now; {times.HELP}).", show_default=False
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Open a serious incident; its reporting deadline runs from --at (default now)."""
    from copml import incidents
    from copml.events import user_actor

    found = incidents.open_incident(
        _project(project),
        severity=severity,
        predictions=prediction or [],
        reason=reason,
        actor=user_actor(),
        at=times.parse_optional(at, "--at"),
    )
    if as_json:
        _print_json(found.as_dict())
        return
    _shown_incident(found, "opened")


@incident_app.command("update")
@_fails_cleanly
def incident_update(
    incident_id: Annotated[int, typer.Argument(metavar="ID", help="The incident's id.")],
    note: Annotated[str, typer.Option(help="What was learned or done: recorded.")],
    project: ProjectOpt = Path("."),
    at: AtOpt = None,
) -> None:
    """Add a note to an incident that is not closed."""
    from copml import incidents
    from copml.events import user_actor

    found = incidents.update(
        _project(project),
        incident_id,
        note=note,
        actor=user_actor(),
        at=times.parse_optional(at, "--at"),
    )
    _shown_incident(found, "noted")


@incident_app.command("report")
@_fails_cleanly
def incident_report(
    incident_id: Annotated[int, typer.Argument(metavar="ID", help="The incident's id.")],
    reference: Annotated[str, typer.Option(help="The authority's reference for the report.")],
    reason: Annotated[
        str | None, typer.Option(help="A word on the report (default: its reference).")
    ] = None,
    project: ProjectOpt = Path("."),
    at: AtOpt = None,
) -> None:
    """Record that the incident was reported to the market surveillance authority."""
    from copml import incidents
    from copml.events import user_actor

    found = incidents.report(
        _project(project),
        incident_id,
        reference=reference,
        reason=reason,
        actor=user_actor(),
        at=times.parse_optional(at, "--at"),
    )
    late = found.reported_at is not None and found.reported_at > found.deadline
    _console().print(
        f"incident {found.id} reported under {found.reference}"
        + (" [bold red]after its deadline[/]" if late else ", within its deadline")
    )


@incident_app.command("close")
@_fails_cleanly
def incident_close(
    incident_id: Annotated[int, typer.Argument(metavar="ID", help="The incident's id.")],
    reason: Annotated[str, typer.Option(help="Why it is closed: recorded.")],
    project: ProjectOpt = Path("."),
    at: AtOpt = None,
) -> None:
    """Close an incident (reported, or found not to be a serious incident)."""
    from copml import incidents
    from copml.events import user_actor

    found = incidents.close(
        _project(project),
        incident_id,
        reason=reason,
        actor=user_actor(),
        at=times.parse_optional(at, "--at"),
    )
    _shown_incident(found, "closed")


@incident_app.command("list")
@_fails_cleanly
def incident_list(
    project: ProjectOpt = Path("."),
    since: Annotated[
        str | None, typer.Option(help=f"Open at some time from ({times.HELP}).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="… until (exclusive).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every incident (open at some time in [--since, --until) when given), oldest first."""
    from datetime import UTC, datetime

    from copml import incidents

    found = incidents.listed(
        _project(project),
        since=times.parse_optional(since, "--since"),
        until=times.parse_optional(until, "--until"),
    )
    now = datetime.now(UTC)
    if as_json:
        _print_json({"incidents": [i.as_dict(now) for i in found]})
        return
    if not found:
        _console().print("no incidents")
        return
    _console().print(_incident_table(found, now, "incidents"))


export_app = typer.Typer(help="Export the pipeline to an orchestrator.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("airflow")
@_fails_cleanly
def export_airflow(
    project: ProjectOpt = Path("."),
    output: Annotated[Path, typer.Option("--output", "-o", help="DAG folder.")] = Path("dags"),
) -> None:
    """Write an Apache Airflow DAG that runs the same CLI steps on the spec's schedule."""
    from copml.operate import airflow

    path = airflow.export(_project(project), output)
    _console().print(f"wrote {path}")


evidence_app = typer.Typer(
    help="The evidence pack for an auditor (EU AI Act): export it, verify it.",
    no_args_is_help=True,
)
app.add_typer(evidence_app, name="evidence")


@evidence_app.command("export")
@_fails_cleanly
def evidence_export(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="A new (or empty) folder for the pack.")
    ],
    since: Annotated[
        str | None,
        typer.Option(
            "--from", help=f"Start of the period ({times.HELP}); default the first record."
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--to", help=f"End of the period, excluded ({times.HELP}); default now."),
    ] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Write the evidence pack (HTML and JSON, self-contained, with a sha256 manifest):
    purpose, model cards, monitoring plan and windows, oversight, alias history,
    incidents, logging and retention, lineage, all read from the live records."""
    from copml import evidence
    from copml.errors import CopmlError

    span = evidence.period(since, until)  # before any work: a bad option refuses at once
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CopmlError(f"--output: {output} exists and is not an empty folder; name a new one")
    p = _project(project)
    console = _console(stderr=True)
    with console.status(f"gathering the evidence of {p.spec.project}…"):
        bundle = evidence.export(p, output, span)
    if as_json:
        _print_json({**bundle.manifest, "manifest_sha256": bundle.manifest_sha256})
        return
    from rich.table import Table

    found = bundle.evidence
    table = Table("section", "records", title=f"evidence pack {bundle.folder}")
    for name, count in (
        ("model versions (cards)", len(found.versions)),
        ("monitoring windows", len(found.windows)),
        ("policies fired", len(found.policies_fired)),
        ("actions", len(found.actions)),
        ("halts and resumes", len(found.oversight["halts"])),
        ("alias moves", len(found.alias_moves)),
        ("incidents", len(found.incidents)),
        ("events", len(found.events)),
        ("files", len(bundle.manifest["files"])),
    ):
        table.add_row(name, str(count))
    out = _console()
    out.print(table)
    out.print(f"period {found.period.words()}")
    out.print(
        f"manifest.json sha256 {bundle.manifest_sha256} (note it where the pack cannot change it)"
    )


@evidence_app.command("verify")
@_fails_cleanly
def evidence_verify(
    folder: Annotated[Path, typer.Argument(help="The pack's folder.")],
    as_json: JsonOpt = False,
) -> None:
    """Check every file of a pack against its manifest: each missing, extra or altered
    file is named; exit 1 on any."""
    from copml import evidence

    found = evidence.verify(folder)
    if as_json:
        _print_json(
            {
                "ok": found.ok,
                "checked": found.checked,
                "findings": [dataclasses.asdict(f) for f in found.findings],
            }
        )
    elif found.ok:
        _console().print(f"[green]ok[/]: {found.checked} files match {folder / 'manifest.json'}")
    else:
        from rich.table import Table

        table = Table("file", "problem", "detail", title=f"{folder}: does not match its manifest")
        for f in found.findings:
            table.add_row(f.path, f.problem, f.detail)
        _console().print(table)
    if not found.ok:
        raise typer.Exit(1)


@app.command()
@_fails_cleanly
def audit(
    prediction_id: str,
    project: ProjectOpt = Path("."),
    replay: Annotated[
        bool, typer.Option("--replay", help="Re-score the stored input with the archived model.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The whole record of one decision; --replay checks it is reproduced exactly."""
    from copml import audit as auditing

    p = _project(project)
    found = auditing.record(p, prediction_id)
    replayed = auditing.replay(p, prediction_id, record=found) if replay else None
    if as_json:
        _print_json({**found, **({"replay": replayed.__dict__} if replayed else {})})
    else:
        console = _console()
        console.print(
            f"[bold]{prediction_id}[/] {found['created_at']} v{found['model_version']} "
            f"(champion then: v{found['champion_at_the_time']}) → label {found['label']}, "
            f"score {found['score']:.6f}" + (", sent to review" if found["review"] else "")
        )
        console.print(f"input: {json.dumps(found['input'], default=str)}")
        lineage = found["lineage"]
        if lineage.get("lineage") == "imported":
            console.print(
                f"imported from {lineage['source_uri']} (source run {lineage['source_run_id']}, "
                f"flavors {', '.join(lineage['flavors'])}), copml run {lineage['run_id']}"
            )
        else:
            console.print(
                f"run {lineage['run_id']}, snapshot {lineage['training_snapshot']['id'][:12]}, "
                f"commit {lineage['git_commit']}{' (dirty)' if lineage['git_dirty'] else ''}, "
                f"params {lineage['params']}, seed {lineage['seed']}"
            )
        explained = found.get("explanation", {})
        if "values" in explained:
            top = sorted(explained["values"].items(), key=lambda kv: -abs(kv[1]))[:5]
            console.print(
                "explanation (log-odds): base "
                f"{explained['base_value']:+.3f} "
                + " ".join(f"{k} {v:+.3f}" for k, v in top)
                + f" … = {explained['output']:+.3f}"
            )
        for ev in found["events"]:
            console.print(f"  {ev['at']} {ev['kind']} by {ev['actor']}: {ev['reason'] or ''}")
        for inc in found["incidents"]:
            console.print(
                f"[bold red]incident {inc['id']}[/] ({inc['severity']}, {inc['state']}) opened "
                f"{inc['opened_at']} by {inc['actor']}: {inc['reason']}"
            )
        if replayed:
            verdict = "[green]identical[/]" if replayed.identical else "[red]DIFFERENT[/]"
            console.print(
                f"replay with v{replayed.model_version}: {replayed.replayed_score!r} vs stored "
                f"{replayed.stored_score!r}: {verdict}"
            )
    if replayed and not replayed.identical:
        raise typer.Exit(1)


@app.command()
@_fails_cleanly
def explain(
    prediction_id: str,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Why the model decided as it did for one prediction (SHAP, in log-odds; for an x-ray,
    model 1's attribution map as a PNG)."""
    from copml.kinds import kind_for

    p = _project(project)
    kind = kind_for(p.spec)
    found = kind.explain(p, prediction_id)
    if as_json:
        _print_json(found)
        return
    console = _console()
    for line in kind.explanation_lines(found):
        console.print(line)


@app.command()
@_fails_cleanly
def reproduce(version: str, project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Retrain VERSION from its recorded snapshot, params, seed and code; compare (exit 1 if not
    identical within 1e-9)."""
    from copml.events import user_actor
    from copml.reproduce import reproduce as run

    result = run(_project(project), version, actor=user_actor())
    if as_json:
        _print_json(result.__dict__)
    else:
        console = _console()
        for warning in result.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        console.print(
            f"v{version} retrained from {result.code}: largest prediction difference "
            f"{result.max_prediction_difference:.3g} over {result.rows} rows"
        )
        for name, diff in result.metric_differences.items():
            console.print(
                f"  [red]{name}[/]: recorded {diff['recorded']!r}, now {diff['reproduced']!r}"
            )
        console.print("[green]reproduced[/]" if result.reproduced else "[red]NOT reproduced[/]")
    if not result.reproduced:
        raise typer.Exit(1)


@app.command()
@_fails_cleanly
def purge(project: ProjectOpt = Path("."), at: AtOpt = None, as_json: JsonOpt = False) -> None:
    """Delete prediction records past the declared retention (versions on hold are kept)."""
    from copml.events import user_actor
    from copml.retention import purge as run

    done = run(_project(project), actor=user_actor(), at=times.parse_optional(at, "--at"))
    if as_json:
        _print_json(done.__dict__)
        return
    _console().print(
        f"purged {done.predictions} predictions in {done.batches} batches and {done.snapshots} "
        f"input snapshots older than {done.cutoff:%Y-%m-%d} ({done.freed_bytes / 1e6:.1f} MB); "
        f"kept {done.kept_on_hold} on audit hold"
    )


@models_app.command("hold")
@_fails_cleanly
def models_hold(
    version: str,
    reason: Annotated[str, typer.Option(help="Why: e.g. the audit or the case it serves.")],
    release: Annotated[bool, typer.Option("--release", help="End the hold.")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Keep VERSION's prediction records past their retention (an audit hold), or release."""
    from copml.events import user_actor
    from copml.retention import hold

    hold(_project(project), version, actor=user_actor(), reason=reason, release=release)
    _console().print(f"version {version}: audit hold {'released' if release else 'set'}")


@keys_app.command("create")
@_fails_cleanly
def keys_create(
    role: Annotated[str, typer.Option(help="viewer, scientist, operator, auditor or service.")],
    name: Annotated[str | None, typer.Option(help="Who or what the key is for.")] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            help="When the key stops working: a duration (90m, 12h, 30d, 2w) or a date or "
            "ISO 8601 time (UTC without a zone; a date means its start). Default: never."
        ),
    ] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Issue an API key; it is shown once and stored only as a scrypt hash."""
    from copml import keys
    from copml.errors import CopmlError
    from copml.events import user_actor
    from copml.store import open_store

    try:
        expires_at = keys.expiry(expires) if expires is not None else None
    except ValueError as exc:
        raise CopmlError(f"--expires: {exc}") from None
    keys.check_role(role)
    p = _project(project)
    p.ensure_home()
    engine = open_store(p.db_url)
    made = keys.create(engine, role, name=name, expires_at=expires_at, actor=user_actor())
    sys.stdout.write(made + "\n")


@keys_app.command("list")
@_fails_cleanly
def keys_list(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Every key of the project (never its secret): prefix, role, name, dates and state."""
    from copml import keys
    from copml.store import open_store

    found = keys.listing(open_store(_project(project).db_url))
    if as_json:
        _print_json(
            [
                {
                    "prefix": k.prefix,
                    "role": k.role,
                    "name": k.name,
                    "created_at": k.created_at.isoformat(),
                    "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                    "state": k.state,
                }
                for k in found
            ]
        )
        return
    from rich.table import Table

    table = Table("prefix", "role", "name", "created", "expires", "revoked", "state")
    for k in found:
        table.add_row(
            k.prefix,
            k.role,
            k.name or "",
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "never",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
            k.state,
        )
    _console().print(table)


@keys_app.command("revoke")
@_fails_cleanly
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (cpml_PREFIX_…).")],
    reason: Annotated[str, typer.Option(help="Why: recorded with the revocation.")],
    project: ProjectOpt = Path("."),
) -> None:
    """Revoke a key for good: servers and the dashboard refuse it within seconds."""
    from copml import keys
    from copml.events import user_actor
    from copml.store import open_store

    engine = open_store(_project(project).db_url)
    done = keys.revoke(engine, prefix, reason=reason, actor=user_actor())
    _console().print(f"key {done.prefix} ({done.role}) revoked")


def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (all of 127.0.0.0/8: replicas on one machine
    listen on 127.0.0.2, 127.0.0.3, …)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
@_fails_cleanly
def serve(
    project: ProjectOpt = Path("."),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    insecure: Annotated[
        bool, typer.Option(help="No API keys (refused unless the host is loopback).")
    ] = False,
    poll: Annotated[
        float, typer.Option(help="Seconds between checks of the registry's champion (0: never).")
    ] = 5.0,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes.")] = 1,
    body_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Seconds an unfinished request body may go without data before a 408 "
            "[default: 10].",
        ),
    ] = None,
    max_pending_bodies: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Requests per process that may wait for their bodies at once; more get 503 "
            "[default: 128].",
        ),
    ] = None,
) -> None:
    """Serve the champion as a REST API; every prediction is stored before it is answered."""
    from copml.errors import CopmlError

    if insecure and not _loopback(host):
        raise CopmlError(f"--insecure is refused on {host}: only loopback may go without keys")
    from copml.serve import run

    p = _project(project)
    run(
        p.root,
        host,
        port,
        workers=workers,
        insecure=insecure,
        poll_seconds=poll,
        **{
            name: value
            for name, value in (
                ("body_timeout", body_timeout),
                ("max_pending_bodies", max_pending_bodies),
            )
            if value is not None  # else the server's own default
        },
    )


@app.command()
@_fails_cleanly
def probe(
    url: Annotated[str, typer.Argument(help="Base URL of a copml server.")],
    project: ProjectOpt = Path("."),
    timeout: Annotated[float, typer.Option(help="Seconds before the check counts as down.")] = 5.0,
) -> None:
    """Check a running server from outside (GET /readyz) and record the result."""
    from copml.monitor.probes import probe as run_probe

    p = _project(project)
    result = run_probe(p, url, timeout=timeout)
    state = "[green]up[/]" if result.ok else "[red]down[/]"
    _console().print(f"{url}: {state} in {result.latency_ms:.0f} ms ({result.detail})")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
@_fails_cleanly
def ui(
    project: Annotated[
        list[Path] | None,
        typer.Option(
            "--project", "-p", help="Project folder, or a folder of projects; repeatable."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    secure_cookies: Annotated[
        bool,
        typer.Option(
            "--secure-cookies",
            help="Mark cookies Secure whatever the scheme: behind a proxy that ends TLS.",
        ),
    ] = False,
    forwarded_allow_ips: Annotated[
        str,
        typer.Option(
            help="Comma-separated addresses of proxies trusted for X-Forwarded-Proto and "
            "-For ('*': any); a request they mark https gets Secure cookies.",
        ),
    ] = "127.0.0.1",
) -> None:
    """The dashboard: requirements, metric timelines, models, predictions, reviews, events."""
    from copml.ui import run

    run(
        project or [Path(".")],
        host,
        port,
        announce=_console().print,
        secure_cookies=secure_cookies,
        forwarded_allow_ips=forwarded_allow_ips,
    )


def main() -> None:
    app()
