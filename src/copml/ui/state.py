"""What every dashboard route reaches through ``app.state``: the projects shown, the
sessions, the page templates and the worker threads that run page work.

Page work runs in worker threads, several requests at once: the services keep no
process-global state between projects (each project has its own MLflow client, and
figures are drawn without pyplot's global figure list).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader
from starlette.concurrency import run_in_threadpool

from copml import keys
from copml.display import figure, when, when_ms
from copml.ui.auth import PERMISSIONS, SESSION_COOKIE, Session, Sessions, allowed
from copml.ui.projects import Shown

_TEMPLATES = Path(__file__).parent / "templates"
_T = TypeVar("_T")


class LoginNeeded(Exception):
    """No session: a page redirects to the login form, a form post is refused."""


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=True)
    env.filters.update(fmt=figure, when=when, json=_json, ms=when_ms)
    env.globals.update(allowed=allowed)
    return env


@dataclass(frozen=True)
class Access:
    """What a route may act on once the role table let it: the project, the key as that
    project's store knows it (events name its holder) and the person's session."""

    here: Shown
    key: keys.Key
    session: Session


@dataclass
class Dashboard:
    """The dashboard over ``shown`` projects; ``secure_cookies`` marks cookies Secure even
    on plain http (TLS ends at a proxy that does not say so)."""

    shown: list[Shown]
    secure_cookies: bool = False
    by_slug: dict[str, Shown] = field(init=False)
    sessions: Sessions = field(init=False)
    templates: Environment = field(init=False, default_factory=_templates)

    def __post_init__(self) -> None:
        self.by_slug = {s.slug: s for s in self.shown}
        self.sessions = Sessions(lambda slug, key: self.by_slug[slug].verifier.current(key))

    async def work(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` (blocking service calls) in a worker thread, off the event loop."""
        return await run_in_threadpool(fn)

    def session_of(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    def access(self, request: Request, slug: str, action: str) -> Access:
        """The person's access to project ``slug`` for ``action``: login first, a 404 for a
        project the key does not open, a 403 naming the roles the action needs."""
        session = self.session_of(request)
        if session is None:
            raise LoginNeeded
        here = self.by_slug.get(slug)
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
        return Access(here, key, session)

    def verify(self, presented: str, client: str) -> tuple[dict[str, keys.Key], int]:
        """The grants of the projects that know the key, by slug, and the longest wait
        asked by those that refused to try (too many failed attempts lately)."""
        found: dict[str, keys.Key] = {}
        wait = 0
        for s in self.shown:
            try:
                key = s.verifier.verify(presented, client)
            except keys.Throttled as exc:
                wait = max(wait, exc.retry_after)
                continue
            if key is not None:
                found[s.slug] = key
        return found, wait

    def page(
        self,
        request: Request,
        template: str,
        status: int = 200,
        *,
        here: Shown | None = None,
        **context: Any,
    ) -> HTMLResponse:
        """``template`` rendered for the person behind ``request``; their flashes are shown
        once."""
        session = self.session_of(request)
        flashes = list(session.flashes) if session else []
        if session:
            session.flashes.clear()
        role = session.grants[here.slug].role if session and here else None
        html = self.templates.get_template(template).render(
            path=request.url.path,
            session=session,
            here=here,
            role=role,
            projects=[self.by_slug[s] for s in session.grants] if session else [],
            flashes=flashes,
            **context,
        )
        return HTMLResponse(html, status)

    def failure(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.page(request, "error.html.j2", status, code=status, message=message)


def dashboard(request: Request) -> Dashboard:
    """The dashboard that :func:`copml.ui.app.create_app` put in ``app.state``."""
    board: Dashboard = request.app.state.dashboard
    return board


Board = Annotated[Dashboard, Depends(dashboard)]
