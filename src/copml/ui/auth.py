"""Who may do what in the dashboard, and the sessions that remember who someone is.

A person logs in with an API key (``copml keys create``). Keys live in each project's
store, so one key opens the projects whose store knows it, each with the role it has
there. Sessions are random tokens held in this process's memory (a restart logs everyone
out, which is what a local dashboard wants); every form carries the session's CSRF token.
A session lasts only as long as its key: revoking or expiring the key ends it.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from copml import keys

# The one table of permissions (the README's "Dashboard" section shows it): each action,
# what it lets a person do, and the roles that may. ``service`` keys are for programs
# calling ``copml serve`` and never log in here. Approval and promotion belong to different
# roles on purpose: where a spec requires approval, two people are involved.
PERMISSIONS: dict[str, tuple[str, frozenset[str]]] = {
    "read": (
        "read the overview, projects, models, model cards, incidents and events",
        frozenset({"viewer", "scientist", "operator", "auditor"}),
    ),
    "approve": ("approve a model version for promotion", frozenset({"scientist"})),
    "promote": ("promote a model version (through the gate)", frozenset({"operator"})),
    "rollback": ("roll the champion back", frozenset({"operator"})),
    "rollout": (
        "put a version in shadow or canary, or end either",
        frozenset({"operator"}),
    ),
    "reviews": ("see and resolve the human-review queue", frozenset({"operator"})),
    "halt": (
        "halt the project into its declared safe state, or resume it",
        frozenset({"operator"}),
    ),
    "history": (
        "read which version served when: every move of the champion, shadow and canary",
        frozenset({"operator", "auditor"}),
    ),
    "predictions": ("search predictions and read their audit record", frozenset({"auditor"})),
    "replay": ("replay a prediction with its archived model", frozenset({"auditor"})),
}

SESSION_COOKIE = "copml_session"
IDLE_SECONDS = 8 * 3600


def allowed(role: str, action: str) -> bool:
    """Whether ``role`` may ``action``; unknown actions are refused."""
    return action in PERMISSIONS and role in PERMISSIONS[action][1]


def actor(key: keys.Key) -> str:
    """``user:<key name or prefix>``: events name the person behind the key."""
    return f"user:{key.name or key.prefix}"


@dataclass
class Session:
    """One logged-in person: the key's grant in each project it opens."""

    grants: dict[str, keys.Key]  # project slug -> the key as that project's store knows it
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    seen: float = field(default_factory=time.monotonic)
    flashes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        key = next(iter(self.grants.values()))
        return key.name or key.prefix

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented, self.csrf)


class Sessions:
    """Random session tokens in memory, forgotten after ``IDLE_SECONDS`` of inactivity.

    ``still_valid(slug, key)`` is asked on every use: a grant whose key was revoked or
    has expired is dropped, and a session left with none ends.
    """

    def __init__(
        self, still_valid: Callable[[str, keys.Key], bool] = lambda slug, key: True
    ) -> None:
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._still_valid = still_valid

    def open(self, grants: dict[str, keys.Key]) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._by_token[token] = Session(grants)
        return token

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            found = self._by_token.get(token)
            if found is None:
                return None
            if now - found.seen > IDLE_SECONDS:
                del self._by_token[token]
                return None
            found.seen = now
            grants = dict(found.grants)
        ended = [slug for slug, key in grants.items() if not self._still_valid(slug, key)]
        if not ended:
            return found
        with self._lock:
            for slug in ended:
                found.grants.pop(slug, None)
            if found.grants:
                return found
            self._by_token.pop(token, None)
            return None

    def close(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)
