"""The FastAPI application behind ``copml ui``: server-rendered pages over the services.

A thin skin (design §2): every route checks the role table (:mod:`copml.ui.auth`), calls
the same service functions as the CLI and renders a Jinja2 template. The services were
not written for concurrent callers in one process (MLflow's tracking URI and pyplot are
process-global), so page work runs one request at a time in a worker thread; static
files are served alongside. No JavaScript: forms post, the server redirects.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from copml import audit, keys, prediction_log, registry, reviews, times
from copml.display import figure, when, when_ms
from copml.errors import CopmlError, NotFoundError
from copml.labels import class_labels
from copml.model_card import build_card, render_html
from copml.monitor.status import Requirement, requirements
from copml.monitor.window import history
from copml.operate import lifecycle, reevaluation
from copml.project import Project
from copml.ui import charts, records
from copml.ui.auth import PERMISSIONS, SESSION_COOKIE, Session, Sessions, actor, allowed
from copml.ui.projects import Shown

_HERE = Path(__file__).parent
_MAX_FORM_BYTES = 64 * 1024
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
# The model card is a self-contained document with its own inline style.
_CARD_CSP = _CSP.replace("style-src 'self'", "style-src 'unsafe-inline'")
_log = logging.getLogger(__name__)
T = TypeVar("T")


class _LoginNeeded(Exception):
    """No session: a page redirects to the login form, a form post is refused."""


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _date(field_name: str, text: str) -> datetime:
    """A date or ISO 8601 time from a query field, as UTC; a 422 naming the field if not."""
    try:
        return times.parse(text, field_name)
    except times.TimeError as exc:
        raise HTTPException(422, exc.message) from None


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def _same_site(request: Request) -> bool:
    """Whether a form post comes from this site's own pages: its Origin (or, lacking one,
    its Referer) names the host it was sent to. Browsers send Origin on every form post,
    so another site cannot log a person in with its own key (login CSRF); a program that
    sends neither is no browser and is let through."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True
    host = request.headers.get("host", "").lower()
    return bool(host) and urlsplit(source).netloc.lower() == host


def _attribution(found: dict[str, Any]) -> str | None:
    """The hook for image models: an ``attribution_png`` in the audit record (bytes, a
    base64 string or a file path) is shown next to the explanation."""
    value = found.get("attribution_png") or (found.get("explanation") or {}).get("attribution_png")
    if not value:
        return None
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    text = str(value)
    path = Path(text)
    if len(text) < 4096 and path.suffix.lower() == ".png" and path.is_file():
        return base64.b64encode(path.read_bytes()).decode()
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return text


def _holdout(project: Project, mv: registry.ModelVersion) -> dict[str, float]:
    """The holdout metrics logged on the version's MLflow run (``holdout_<name>``)."""
    from mlflow.exceptions import MlflowException

    try:
        logged = registry.client(project).get_run(mv.run_id).data.metrics
    except MlflowException:
        return {}
    return {k.removeprefix("holdout_"): v for k, v in logged.items() if k.startswith("holdout_")}


@dataclass
class _Summary:
    """One project on the overview."""

    shown: Shown
    role: str
    champion: str | None
    window_end: datetime | None
    status: list[Requirement]
    kpis: list[tuple[Requirement, float | None]]  # (requirement, baseline)
    alerts: list[dict[str, Any]]
    open_reviews: int
    flagged: dict[str, Any] | None
    chart: charts.Chart | None
    counts: dict[str, int] = field(default_factory=dict)


def create_app(shown: list[Shown], *, secure_cookies: bool = False) -> FastAPI:
    """The dashboard over ``shown`` projects; ``secure_cookies`` marks cookies Secure even
    on plain http (TLS ends at a proxy that does not say so)."""
    by_slug = {s.slug: s for s in shown}
    sessions = Sessions(lambda slug, key: by_slug[slug].verifier.current(key))
    one_at_a_time = threading.Lock()
    env = Environment(loader=FileSystemLoader(_HERE / "templates"), autoescape=True)
    env.filters.update(fmt=figure, when=when, json=_json, ms=when_ms)
    env.globals.update(allowed=allowed)

    app = FastAPI(title="copml dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")

    async def work(fn: Callable[[], T]) -> T:
        def locked() -> T:
            with one_at_a_time:
                return fn()

        return await run_in_threadpool(locked)

    def session_of(request: Request) -> Session | None:
        return sessions.get(request.cookies.get(SESSION_COOKIE))

    def page(
        request: Request,
        template: str,
        status: int = 200,
        *,
        here: Shown | None = None,
        **context: Any,
    ) -> HTMLResponse:
        session = session_of(request)
        flashes = list(session.flashes) if session else []
        if session:
            session.flashes.clear()
        role = session.grants[here.slug].role if session and here else None
        html = env.get_template(template).render(
            path=request.url.path,
            session=session,
            here=here,
            role=role,
            projects=[by_slug[s] for s in session.grants] if session else [],
            flashes=flashes,
            **context,
        )
        return HTMLResponse(html, status)

    def grant(request: Request, slug: str, action: str) -> tuple[Shown, keys.Key, Session]:
        session = session_of(request)
        if session is None:
            raise _LoginNeeded
        here = by_slug.get(slug)
        if here is None or slug not in session.grants:
            raise HTTPException(404, f"no project {slug!r} among those your key opens")
        key = session.grants[slug]
        if not allowed(key.role, action):
            doing, roles = PERMISSIONS[action]
            raise HTTPException(
                403,
                f"role {key.role!r} may not {doing} in {here.name}; "
                f"that needs the role {' or '.join(sorted(roles))}",
            )
        return here, key, session

    async def form(request: Request, session: Session | None) -> dict[str, str]:
        """The posted fields, from this site's own pages; with a session, its CSRF token
        must be among them."""
        if not _same_site(request):
            raise HTTPException(403, "the form was posted from another site (Origin/Referer)")
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind != "application/x-www-form-urlencoded":
            raise HTTPException(415, "send the form as application/x-www-form-urlencoded")
        body = await request.body()
        if len(body) > _MAX_FORM_BYTES:
            raise HTTPException(413, f"the form is over {_MAX_FORM_BYTES // 1024} KiB")
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise HTTPException(400, "the form is not UTF-8") from None
        values = {k: v[-1] for k, v in fields.items()}
        if session is not None and not session.csrf_ok(values.get("csrf")):
            raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page")
        return values

    def failure(request: Request, status: int, message: str) -> HTMLResponse:
        return page(request, "error.html.j2", status, code=status, message=message)

    def reason(values: dict[str, str], what: str) -> str:
        text = values.get("reason", "").strip()
        if not text:
            raise HTTPException(422, f"reason: say why; it is recorded with the {what}")
        if len(text) > 2000:
            raise HTTPException(422, "reason: at most 2000 characters")
        return text

    def back(url: str) -> RedirectResponse:
        return RedirectResponse(url, 303)

    # ------------------------------------------------------------------ errors, headers

    @app.exception_handler(_LoginNeeded)
    async def login_needed(request: Request, _: Exception) -> Response:
        if request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return back(f"/login?next={quote(target)}")
        return failure(request, 401, "log in first")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return failure(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
        return failure(request, 422, problems)

    @app.exception_handler(CopmlError)
    async def refused(request: Request, exc: CopmlError) -> Response:
        status = 404 if isinstance(exc, NotFoundError) else 409
        return failure(request, status, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        _log.exception("dashboard error on %s", request.url.path)
        return failure(request, 500, f"unexpected {type(exc).__name__}: {exc}")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    # ------------------------------------------------------------------ login

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "projects": len(shown)})

    @app.get("/login")
    async def login_form(request: Request, next: str = "/") -> Response:
        if session_of(request) is not None:
            return back(_safe_next(next))
        return page(request, "login.html.j2", next=_safe_next(next))

    @app.post("/login")
    async def login(request: Request) -> Response:
        values = await form(request, None)
        target = _safe_next(values.get("next"))
        presented = values.get("key", "").strip()
        if not presented:
            return page(request, "login.html.j2", 422, next=target, error="key: paste an API key")

        client = request.client.host if request.client else ""

        def verify() -> tuple[dict[str, keys.Key], int]:
            """The grants of the projects that know the key, and the longest wait asked by
            those that refused to try (too many failed attempts lately)."""
            found: dict[str, keys.Key] = {}
            wait = 0
            for s in shown:
                try:
                    key = s.verifier.verify(presented, client)
                except keys.Throttled as exc:
                    wait = max(wait, exc.retry_after)
                    continue
                if key is not None:
                    found[s.slug] = key
            return found, wait

        grants, wait = await run_in_threadpool(verify)
        people = {slug: key for slug, key in grants.items() if key.role != "service"}
        if not grants and wait:
            error = f"too many failed attempts: try again in {wait} s"
            refused = page(request, "login.html.j2", 429, next=target, error=error)
            refused.headers["Retry-After"] = str(wait)
            return refused
        if not people:
            error = (
                "service keys are for programs calling copml serve; ask for a personal key"
                if grants
                else "this key is not known to the store of any project shown here (or revoked)"
            )
            return page(request, "login.html.j2", 403 if grants else 401, next=target, error=error)
        token = sessions.open(people)
        response = back(target)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=secure_cookies or request.url.scheme == "https",
            path="/",
        )
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        session = session_of(request)
        if session is not None:
            await form(request, session)
            sessions.close(request.cookies.get(SESSION_COOKIE))
        response = back("/login")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ overview, project

    def summary(here: Shown, role: str) -> _Summary:
        project, engine = here.project, here.engine
        windows = history(project, limit=36)
        latest = windows[-1] if windows else None
        status = requirements(project.spec, latest)
        kpis = [(r, project.spec.kpis[r.name].baseline) for r in status if r.kind == "kpi"]
        champion = registry.champion(project)
        counts = {s: sum(r.state == s for r in status) for s in ("met", "not met", "unknown")}
        return _Summary(
            shown=here,
            role=role,
            champion=champion.version if champion else None,
            window_end=latest.end if latest else None,
            status=status,
            kpis=kpis,
            alerts=records.open_alerts(engine),
            open_reviews=reviews.count_open(engine),
            flagged=reevaluation.suspended(engine, project),
            chart=charts.kpi_chart(project, windows, charts.markers(engine, windows)),
            counts=counts,
        )

    @app.get("/")
    async def overview(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            raise _LoginNeeded
        grants = dict(session.grants)
        found = await work(lambda: [summary(by_slug[s], k.role) for s, k in grants.items()])
        return page(request, "overview.html.j2", summaries=found)

    @app.get("/p/{slug}")
    async def project_page(request: Request, slug: str) -> Response:
        here, _, _ = grant(request, slug, "read")

        def gather() -> dict[str, Any]:
            project, engine = here.project, here.engine
            windows = history(project)
            marks = charts.markers(engine, windows)
            drawn, empty = charts.timelines(project, windows, marks)
            evaluations = records.latest_evaluations(engine)
            return {
                "summary": summary(here, ""),
                "charts": drawn,
                "empty": empty,
                "marks": marks,
                "windows": windows,
                "policies": [(p, evaluations.get(p.name)) for p in project.spec.policies],
            }

        return page(request, "project.html.j2", here=here, **await work(gather))

    # ------------------------------------------------------------------ models

    @app.get("/p/{slug}/models")
    async def models_page(request: Request, slug: str) -> Response:
        here, _, _ = grant(request, slug, "read")

        def gather() -> dict[str, Any]:
            project = here.project
            found = registry.versions(project)
            return {
                "versions": found,
                "approvals": {v.version: lifecycle.approved(project, v.version) for v in found},
                "holdout": {v.version: _holdout(project, v) for v in found},
                "metrics": list(project.spec.effectiveness.thresholds),
            }

        return page(request, "models.html.j2", here=here, **await work(gather))

    @app.get("/p/{slug}/models/{version}")
    async def model_page(request: Request, slug: str, version: str) -> Response:
        here, _, _ = grant(request, slug, "read")

        def gather() -> dict[str, Any]:
            project = here.project
            card = build_card(project, version)
            needs = lifecycle.needs_approval(project)
            return {
                "card": card,
                "needs_approval": needs,
                "approved": lifecycle.approved(project, version),
            }

        return page(request, "model.html.j2", here=here, **await work(gather))

    @app.get("/p/{slug}/models/{version}/card")
    async def model_card(request: Request, slug: str, version: str) -> Response:
        here, _, _ = grant(request, slug, "read")
        html = await work(lambda: render_html(build_card(here.project, version)))
        return HTMLResponse(html, headers={"Content-Security-Policy": _CARD_CSP})

    @app.post("/p/{slug}/models/{version}/approve")
    async def approve(request: Request, slug: str, version: str) -> Response:
        here, key, session = grant(request, slug, "approve")
        why = reason(await form(request, session), "approval")
        await work(lambda: lifecycle.approve(here.project, version, actor=actor(key), reason=why))
        session.flashes.append(f"approval of v{version} recorded")
        return back(f"/p/{slug}/models/{quote(version)}")

    @app.post("/p/{slug}/models/{version}/promote")
    async def promote(request: Request, slug: str, version: str) -> Response:
        here, key, session = grant(request, slug, "promote")
        why = reason(await form(request, session), "promotion")
        await work(
            lambda: lifecycle.promote(
                here.project, version, actor=actor(key), reason=why, gate_first=True
            )
        )
        session.flashes.append(f"v{version} passed the gate and is now champion")
        return back(f"/p/{slug}/models/{quote(version)}")

    @app.post("/p/{slug}/rollback")
    async def rollback(request: Request, slug: str) -> Response:
        here, key, session = grant(request, slug, "rollback")
        why = reason(await form(request, session), "roll-back")
        version = await work(lambda: lifecycle.rollback(here.project, actor=actor(key), reason=why))
        session.flashes.append(f"rolled back: v{version} is champion again")
        return back(f"/p/{slug}/models")

    # ------------------------------------------------------------------ predictions

    @app.get("/p/{slug}/predictions")
    async def predictions_page(
        request: Request,
        slug: str,
        id: str | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> Response:
        here, _, _ = grant(request, slug, "predictions")
        if id and id.strip():
            return back(f"/p/{slug}/predictions/{quote(id.strip())}")
        until = _date("end", end) if end else datetime.now(UTC) + timedelta(days=1)
        since = _date("start", start) if start else None
        if since is not None and since >= until:
            raise HTTPException(422, "start: must be before end")
        rows, total = await work(
            lambda: records.predictions_between(here.engine, since, until, limit=100)
        )
        return page(
            request,
            "predictions.html.j2",
            here=here,
            rows=rows,
            total=total,
            start=start or "",
            end=end or "",
            labels=class_labels(here.project.spec.data),
        )

    def prediction_context(here: Shown, prediction_id: str) -> dict[str, Any]:
        if prediction_log.split_id(prediction_id) is None:
            raise HTTPException(
                404, "no such prediction: an id is 24 hexadecimal characters, lower-case"
            )
        found = audit.record(here.project, prediction_id)
        explained = found.get("explanation") or {}
        chart = None
        if explained.get("values"):
            chart = charts.explanation_chart(
                explained["values"], f"why v{found['model_version']} scored {found['score']:.3f}"
            )
        return {
            "record": found,
            "chart": chart,
            "attribution": _attribution(found),
            "labels": class_labels(here.project.spec.data),
        }

    @app.get("/p/{slug}/predictions/{prediction_id}")
    async def prediction_page(request: Request, slug: str, prediction_id: str) -> Response:
        here, _, _ = grant(request, slug, "predictions")
        context = await work(lambda: prediction_context(here, prediction_id))
        return page(request, "prediction.html.j2", here=here, replayed=None, **context)

    @app.post("/p/{slug}/predictions/{prediction_id}/replay")
    async def replay(request: Request, slug: str, prediction_id: str) -> Response:
        here, key, session = grant(request, slug, "replay")
        await form(request, session)

        def run() -> dict[str, Any]:
            context = prediction_context(here, prediction_id)
            done = audit.replay(
                here.project, prediction_id, record=context["record"], actor=actor(key)
            )
            return {**context, "replayed": done}

        return page(request, "prediction.html.j2", here=here, **await work(run))

    # ------------------------------------------------------------------ reviews, events

    @app.get("/p/{slug}/reviews")
    async def reviews_page(request: Request, slug: str) -> Response:
        here, _, _ = grant(request, slug, "reviews")
        items = await work(lambda: reviews.open_items(here.engine))
        return page(
            request,
            "reviews.html.j2",
            here=here,
            items=items,
            labels=class_labels(here.project.spec.data),
            band=here.project.spec.serving.review_band,
        )

    @app.post("/p/{slug}/reviews/{prediction_id}")
    async def resolve_review(request: Request, slug: str, prediction_id: str) -> Response:
        here, key, session = grant(request, slug, "reviews")
        label = (await form(request, session)).get("label", "").strip()
        if not label:
            raise HTTPException(422, "label: choose the label a person decided")
        data = here.project.spec.data
        await work(
            lambda: reviews.resolve(here.engine, data, prediction_id, label, actor=actor(key))
        )
        session.flashes.append(f"{prediction_id} labelled {label!r}; stored as feedback")
        return back(f"/p/{slug}/reviews")

    @app.get("/p/{slug}/events")
    async def events_page(
        request: Request,
        slug: str,
        who: Annotated[str | None, Query(alias="actor")] = None,
        kind: str | None = None,
        before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    ) -> Response:
        here, _, _ = grant(request, slug, "read")
        limit = 100

        def gather() -> dict[str, Any]:
            rows = records.event_page(
                here.engine, actor=who or None, kind=kind or None, before=before, limit=limit
            )
            actors, kinds = records.event_facets(here.engine)
            return {"rows": rows, "actors": actors, "kinds": kinds}

        found = await work(gather)
        rows = found["rows"]
        older = rows[-1]["id"] if len(rows) == limit else None
        return page(
            request,
            "events.html.j2",
            here=here,
            actor=who or "",
            kind=kind or "",
            older=older,
            **found,
        )

    return app
