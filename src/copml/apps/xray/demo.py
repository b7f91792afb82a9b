"""``copml demo xray``: the x-ray cascade through simulated weeks, over real HTTP.

init (generated chest-like images, or ``--data`` a real folder) → snapshot → train both
networks as one version → a person approves → gated promotion → ``copml serve``'s app on a
loopback port, stamping predictions with a simulated clock. Each week, x-rays arrive at the
endpoint, radiologists resolve the review queue (their labels become feedback), the rest of
the ground truth follows, the week's window is computed and the spec's policies act. From
``--shift-week`` on, a new scanner makes images darker: missed pneumonia alerts the team,
decayed recall retrains on the labelled production images, and the radiology lead approves
the validated challenger, which the server swaps in without a restart.

Human oversight (EU AI Act Art. 14): when the missed-pneumonia alert fires, an operator
halts the project into its declared safe state (``review_all``: every image then goes to a
radiologist, none is cleared by the model). Automation is suspended while halted, so the
data scientist retrains by hand on the radiologists' labels; the gate validates the
challenger, the radiology lead approves and promotes it, and the operator resumes.
Afterwards the alias history names the version that served before and after.
"""

from __future__ import annotations

import math
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from copml import aliases, display, evidence, keys, registry, snapshots
from copml.apps.narration import Hook, describe, summarise
from copml.errors import CopmlError
from copml.monitor.window import monitor
from copml.operate import lifecycle
from copml.operate.retrain import retrain
from copml.operate.runner import Pass, operate_once
from copml.project import Project, load_project
from copml.report import Marker, write_report
from copml.scaffold import init
from copml.store import open_store
from copml.train import train

START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
ACTOR = "user:demo-radiology-lead"
OPERATOR = "user:demo-operator"  # who halts and resumes (the operator key's name)
SCIENTIST = "user:demo-data-scientist"  # who retrains by hand while automation is halted
WEEKLY = {"normal": 48, "bacteria": 30, "virus": 18}
PER_REQUEST = 8


class _Clock:
    """The server's clock in the demo: simulated time, moved forward by the demo."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _new_scanner(folder: Path) -> None:
    """A darker exposure with a softer focus: opacities lose contrast (the shift)."""
    from PIL import Image, ImageFilter

    for file in folder.rglob("*.jpeg"):
        with Image.open(file) as im:
            grey = im.convert("L")
        grey = grey.point(lambda v: int(255 * (v / 255) ** 1.5)).filter(ImageFilter.GaussianBlur(1))
        grey.convert("RGB").save(file, format="JPEG", quality=90)


def _week_images(folder: Path, week: int, seed: int, shifted: bool) -> list[tuple[Path, int]]:
    from copml.apps.xray.vision.synthetic import generate

    found = generate(folder, WEEKLY, size=128, seed=seed * 1000 + week)
    if shifted:
        _new_scanner(folder)
    return [
        (file, int(label == "PNEUMONIA"))
        for file, label in zip(found.files(), found.frame["label"], strict=True)
    ]


def _serve(project: Project, clock: _Clock) -> tuple[Any, threading.Thread, str]:
    import uvicorn

    from copml.serve.app import create_app

    app = create_app(project, poll_seconds=0, heartbeat_seconds=0, clock=clock)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    _http().get(f"{url}/healthz", timeout=60)  # queued on the listening socket until served
    return server, thread, url


def _approve_waiting(project: Project, at: datetime) -> str | None:
    """The radiology lead's weekly look: approve and promote a validated challenger."""
    champion = registry.champion(project)
    for mv in registry.versions(project):
        if champion is not None and int(mv.version) <= int(champion.version):
            continue
        if mv.state != "validated" or lifecycle.approved(project, mv.version):
            continue
        lifecycle.approve(
            project, mv.version, actor=ACTOR, reason="validated on recent images; reviewed", at=at
        )
        lifecycle.promote(project, mv.version, actor=ACTOR, reason="approved challenger", at=at)
        return mv.version
    return None


def run_xray_demo(
    directory: Path | None,
    *,
    weeks: int = 6,
    shift_week: int | None = 3,
    data: Path | None = None,
    seed: int = 7,
    console: Any,
) -> Path:
    """Run the demo in ``directory`` (default ``./demo-xray``); returns the report path."""
    directory = (directory or Path("demo-xray")).resolve()
    if directory.exists() and any(directory.iterdir()):
        raise CopmlError(f"{directory} is not empty; remove it or choose another --dir")
    began = time.perf_counter()
    hook = ThreadingHTTPServer(("127.0.0.1", 0), type("Hook", (Hook,), {"received": []}))
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    if data is not None and not Path(data).is_dir():
        raise CopmlError(f"{data}: no image folder there")
    init(directory, "xray", seed=seed, generate=data is None)
    spec_file = directory / "copml.yaml"
    text = spec_file.read_text()
    if data is not None:  # the real set: fewer epochs suffice on thousands of images
        text = text.replace("source: data/images", f"source: {Path(data).resolve()}")
        text = text.replace("epochs: 25, type_epochs: 30", "epochs: 8, type_epochs: 10")
    spec_file.write_text(
        text + "\n# The demo's local webhook receiver stands in for the team's pager.\n"
        f'alerts: {{webhook: "http://127.0.0.1:{hook.server_address[1]}/hook", '
        "backoff_seconds: 0.1}\n"
    )
    project = load_project(directory)
    project.ensure_home()
    engine = open_store(project.db_url)
    console.print(f"[bold]copml demo xray[/] in {directory}")
    snap = snapshots.create(
        engine, project.spec.data, root=project.root, directory=project.snapshots_dir, actor=ACTOR
    )
    console.print(f"snapshot {snap.id[:12]}… of {snap.n_rows} labelled images")
    with console.status("training model 1 (pneumonia) and model 2 (bacteria/virus)…"):
        result = train(project, actor=ACTOR, at=START - timedelta(days=1))
    m = result.metrics
    console.print(
        f"trained cascade v{result.version}: holdout recall {m['recall']:.3f}, specificity "
        f"{m['specificity']:.3f} (model 1); type accuracy {m['type_accuracy']:.3f} (model 2)"
    )
    if not result.meets_minimums:
        raise CopmlError("the first cascade missed the minimums: " + "; ".join(result.failures))
    lifecycle.approve(project, result.version, actor=ACTOR, reason="holdout reviewed", at=START)
    lifecycle.promote(
        project, result.version, actor=ACTOR, reason="first cascade", at=START, gate_first=True
    )
    console.print(f"v{result.version} approved by {ACTOR} and promoted (impact: high)")
    issued = {
        "service": keys.create(engine, "service", name="demo-scanner-gateway"),
        "operator": keys.create(engine, "operator", name=OPERATOR.removeprefix("user:")),
    }
    clock = _Clock(START)
    server, thread, url = _serve(project, clock)
    headers = {role: {"Authorization": f"Bearer {key}"} for role, key in issued.items()}
    markers = [Marker(START, f"v{result.version} champion")]
    real: list[tuple[Path, int]] = []
    if data is not None:
        from copml.apps.xray.vision.images import read_folder

        found = read_folder(Path(data))
        held = found.frame["split"].fillna("train") != "train" if "split" in found.frame else None
        files = found.files()
        real = [
            (files[i], int(found.frame["label"].iat[i] == "PNEUMONIA"))
            for i in range(len(files))
            if held is None or held.iat[i]
        ]
    rows: list[dict[str, Any]] = []
    halted: datetime | None = None
    promoted_at: datetime | None = None
    incident: dict[str, Any] | None = None
    try:
        sent = [0]  # the week's images, for the bar's rate and time left
        total = len(real) if data is not None else weeks * sum(WEEKLY.values())
        for week in display.counted(
            range(weeks), "simulating weeks", total, "images", lambda _: sent[0], console
        ):
            begins = START + timedelta(weeks=week)
            ends = begins + timedelta(weeks=1)
            shifted = shift_week is not None and week >= shift_week and data is None
            with tempfile.TemporaryDirectory() as tmp:
                arriving = (
                    real[week::weeks]  # the evaluation images, shared out over the weeks
                    if data is not None
                    else _week_images(Path(tmp), week, seed, shifted)
                )
                answered, version = _send_week(url, headers, clock, begins, arriving)
                sent[0] = len(arriving)
            # Radiologists read the flagged images; the rest is confirmed at follow-up.
            truth = {a.prediction_id: a.truth for a in answered}
            reviewed = _resolve_reviews(url, headers, truth)
            _follow_up(url, headers, truth, skip=reviewed)
            clock.now = ends  # what the team does now happens at the week's end
            window = monitor(project, end=ends)
            passed = operate_once(project, at=ends)
            acted, happened = describe(passed)
            markers += happened
            done: list[str] = [acted] if acted else []
            if halted is not None:  # a week under review_all: the team recovers by hand
                done += _recover_by_hand(project, url, headers, ends, console)
                promoted_at = ends if any("promoted" in d for d in done) else promoted_at
                if promoted_at is not None:
                    if incident is not None:  # reported within its legal deadline
                        _post(url, f"/v1/incidents/{incident['id']}/report", headers,
                              {"reference": "MSA-DEMO-2026-0001"})  # fmt: skip
                        done.append(f"incident {incident['id']} reported")
                    _post(url, "/v1/admin/resume", headers, {"reason": "v2 validated, approved "
                          "and promoted; radiologists confirm it on the new scanner"})  # fmt: skip
                    done.append("resumed")
                    markers.append(Marker(ends, "resumed"))
                    halted = None
            elif promoted_at is None and _halts(project, passed, window):
                wrong = sum(a.false_negative for a in answered)
                _post(url, "/v1/admin/halt", headers, {"reason": f"{wrong} pneumonia answered "
                      "NORMAL this week after the scanner change: every image to a "
                      "radiologist until the cascade is fixed"})  # fmt: skip
                halted = ends
                done.append("halted → review all")
                markers.append(Marker(ends, "halted"))
                incident = _open_incident(url, headers, answered, console)
                done.append(f"incident {incident['id']} opened")
            else:
                promoted = _approve_waiting(project, ends)
                if promoted:
                    _http().post(f"{url}/v1/admin/reload", headers=headers["operator"], timeout=120)
                    done.append(f"approved + promoted v{promoted}")
                    markers.append(Marker(ends, f"v{promoted} promoted"))
            rows.append(_row(begins, window, version, shifted, reviewed, ", ".join(done)))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        hook.shutdown()
        hook.server_close()
    windows = summarise(
        console,
        project,
        rows,
        "week by week (* after the scanner change)",
        hook.RequestHandlerClass.received,  # type: ignore[attr-defined]
    )
    if shift_week is not None and shift_week < weeks and data is None:
        markers.append(Marker(START + timedelta(weeks=shift_week), "new scanner"))
    if promoted_at is not None:
        _served_when(console, project, promoted_at)
    _evidence(project, directory / "evidence", START, START + timedelta(weeks=weeks), console)
    report = write_report(
        project,
        windows,
        directory / "report.html",
        title=f"copml demo: {project.spec.project}, {weeks} weeks",
        markers=markers,
        rows=rows,
        notes=[
            f"{weeks} simulated weeks of x-rays sent to the cascade endpoint over HTTP "
            f"({sum(WEEKLY.values()) if data is None else 'the evaluation images'} per week). "
            "Radiologists resolve the review queue; the other cases are confirmed at "
            "follow-up; the spec's policies run after each week's window.",
        ],
    )
    console.print(
        f"report: {report}\nMLflow UI: mlflow ui --backend-store-uri {project.tracking_uri}\n"
        f"done in {time.perf_counter() - began:.0f} s"
    )
    return report


@dataclass(frozen=True)
class _Answer:
    """One image's answer from the endpoint, beside the truth the demo knows."""

    prediction_id: str
    truth: int
    label: str
    review: bool

    @property
    def false_negative(self) -> bool:
        """A pneumonia the cascade called normal."""
        return bool(self.truth) and self.label != "PNEUMONIA"

    @property
    def missed(self) -> bool:
        """A false negative sent to no one: only the follow-up finds it."""
        return self.false_negative and not self.review


def _send_week(
    url: str,
    headers: dict[str, dict[str, str]],
    clock: _Clock,
    begins: datetime,
    arriving: list[tuple[Path, int]],
) -> tuple[list[_Answer], str]:
    """Post the week's x-rays, a few per request, through the week."""
    answered: list[_Answer] = []
    version = "?"
    step = timedelta(weeks=1) / max(1, math.ceil(len(arriving) / PER_REQUEST) + 1)
    for n, start in enumerate(range(0, len(arriving), PER_REQUEST)):
        clock.now = begins + step * (n + 1)
        part = arriving[start : start + PER_REQUEST]
        files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p, _ in part]
        reply = _http().post(
            f"{url}/v1/predict", files=files, headers=headers["service"], timeout=120
        )
        if reply.status_code != 200:
            raise CopmlError(f"the cascade endpoint answered {reply.status_code}: {reply.text}")
        body = reply.json()
        version = body["model_version"]
        answered += [
            _Answer(p["prediction_id"], truth, p["label"], bool(p["review"]))
            for p, (_, truth) in zip(body["predictions"], part, strict=True)
        ]
    return answered, version


def _halts(project: Project, passed: Pass, window: Any) -> bool:
    """The operator's call: missed pneumonia (the policy's alert) in a week whose images
    drifted from the training set means the inputs changed under the model, so every
    image goes to a radiologist until it is fixed. A miss alone, on images like the
    training set's, is the cascade's known error rate and is left to the policies."""
    alerted = any(e.policy == "missed-pneumonia" and e.outcome for e in passed.evaluations)
    drifted = window.metrics.get("drift", 0.0) > 0
    return alerted and drifted and project.spec.oversight is not None


def _post(
    url: str, path: str, headers: dict[str, dict[str, str]], body: dict[str, Any]
) -> dict[str, Any]:
    """An operator's call to the server's admin API."""
    reply = _http().post(f"{url}{path}", json=body, headers=headers["operator"], timeout=120)
    return dict(_ok(reply).json())


def _recover_by_hand(
    project: Project, url: str, headers: dict[str, dict[str, str]], at: datetime, console: Any
) -> list[str]:
    """While halted no policy acts: the data scientist retrains on the images radiologists
    labelled, the gate validates the challenger, the radiology lead approves and promotes
    it, and the server loads it. Returns what happened, for the week's row."""
    done = retrain(project, actor=SCIENTIST, at=at)
    version = done.result.version
    found = [f"retrained by hand → v{version}"]
    report = lifecycle.gate(project, version, actor=SCIENTIST, at=at)
    if not report.passed:
        console.print(f"v{version} refused by the gate: " + "; ".join(report.reasons))
        return [*found, "gate ✗"]
    promoted = _approve_waiting(project, at)
    if promoted is None:
        return found
    _post(url, "/v1/admin/reload", headers, {})
    return [*found, f"approved + promoted v{promoted}"]


def _open_incident(
    url: str, headers: dict[str, dict[str, str]], answered: list[_Answer], console: Any
) -> dict[str, Any]:
    """A pneumonia the cascade cleared is a serious incident (Art. 73): it must be reported
    to the market surveillance authority within 15 days of the provider's awareness."""
    missed = [a for a in answered if a.missed]
    cited = missed[:1] or [a for a in answered if a.false_negative][:1]
    body = {
        "severity": "serious",
        "predictions": [a.prediction_id for a in cited],
        "reason": "a pneumonia on the new scanner was answered NORMAL"
        + ("" if missed else " (a radiologist's review caught it)"),
    }
    found = _post(url, "/v1/incidents", headers, body)
    console.print(
        f"incident {found['id']} (serious) opened: report due by {found['deadline'][:16]} UTC"
    )
    return found


def _evidence(project: Project, folder: Path, start: datetime, end: datetime, console: Any) -> None:
    """The evidence pack an auditor asks for, from the live records of the demo's weeks."""
    bundle = evidence.export(project, folder, evidence.Period(start, end))
    checked = evidence.verify(folder)
    if not checked.ok:  # the pack was just written: a mismatch is a bug, not a demo step
        raise CopmlError(f"the evidence pack in {folder} does not verify: {checked.findings}")
    console.print(
        f"evidence pack: {folder} ({len(bundle.manifest['files'])} files, manifest sha256 "
        f"{bundle.manifest_sha256[:12]}…; copml evidence verify: ok)"
    )


def _served_when(console: Any, project: Project, promoted_at: datetime) -> None:
    """``copml models history --at`` just before and just after the promotion."""
    moment = timedelta(minutes=1)
    before = aliases.serving_at(project, promoted_at - moment)
    after = aliases.serving_at(project, promoted_at + moment)
    console.print(
        f"copml models history --at {before.at:%Y-%m-%dT%H:%M}Z: champion v{before.champion}; "
        f"--at {after.at:%Y-%m-%dT%H:%M}Z: champion v{after.champion}"
    )


@cache
def _http() -> httpx.Client:
    """One client for the whole demo: a new one per request loads the CA bundle each time
    (60 ms, half a minute over a demo's 550 requests)."""
    return httpx.Client()


def _ok(reply: httpx.Response) -> httpx.Response:
    if not reply.is_success:
        raise CopmlError(f"{reply.request.url.path} answered {reply.status_code}: {reply.text}")
    return reply


def _resolve_reviews(
    url: str, headers: dict[str, dict[str, str]], truth: dict[str, int]
) -> set[str]:
    queue = (
        _http()
        .get(f"{url}/v1/reviews", params={"limit": 1000}, headers=headers["operator"], timeout=60)
        .json()["reviews"]
    )
    done = set()
    for item in queue:
        pid = item["prediction_id"]
        if pid in truth:
            label = "PNEUMONIA" if truth[pid] else "NORMAL"
            _ok(
                _http().post(
                    f"{url}/v1/reviews/{pid}", json={"label": label}, headers=headers["operator"]
                )
            )
            done.add(pid)
    return done


def _follow_up(
    url: str, headers: dict[str, dict[str, str]], truth: dict[str, int], skip: set[str]
) -> None:
    for pid, actual in truth.items():
        if pid not in skip:
            label = "PNEUMONIA" if actual else "NORMAL"
            _ok(
                _http().post(
                    f"{url}/v1/feedback",
                    json={"prediction_id": pid, "actual": label},
                    headers=headers["service"],
                )
            )


def _row(
    begins: datetime, window: Any, version: str, shifted: bool, reviewed: set[str], acted: str
) -> dict[str, Any]:
    m = window.metrics
    return {
        "week": f"{begins:%Y-%m-%d}" + (" *" if shifted else ""),
        "version": version,
        "images": int(m["predictions"]),
        "recall": m["recall"],
        "specificity": m["specificity"],
        "missed": int(m["false_negatives"]) if m.get("false_negatives", 0) >= 0 else "—",
        "reviews": len(reviewed),
        "drift": m["drift"],
        "actions": acted,
    }
