"""API keys: shown once, stored as scrypt hashes, each with one role, revocable, expiring.

A key reads ``cpml_<prefix>_<secret>``; the prefix finds the row, scrypt checks the
secret. scrypt is slow on purpose, which makes it a lever for anyone who can reach a
server, so a :class:`Verifier`:

- remembers keys it has verified (in memory only, as a SHA-256 of the whole key) and
  rechecks their row every few seconds, so a revoked or expired key stops working
  within seconds without another scrypt;
- spends one scrypt on every key it cannot recall, whether the prefix is known, revoked,
  expired or made up, so the answer's timing says nothing about which;
- refuses further attempts from a client address, or at a key prefix, after a few
  failures (:class:`Throttled`), so wrong guesses cannot keep the CPU busy.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cachetools import TTLCache
from sqlalchemy import Engine, insert, select, update

from copml import events, times
from copml.errors import CopmlError, NotFoundError
from copml.store import api_keys

ROLES = ("viewer", "scientist", "operator", "auditor", "service")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
# Unknown prefixes are hashed with this salt and compared with a value no secret can give.
_DECOY_SALT = secrets.token_hex(16)
_DECOY_HASH = secrets.token_hex(32)
_DURATION = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Key:
    prefix: str
    role: str
    name: str | None
    expires_at: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))


@dataclass(frozen=True)
class KeyRecord:
    """One row of ``copml keys list``: everything but the hash."""

    prefix: str
    role: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return "expired"
        return "active"


class Throttled(CopmlError):
    """Too many failed attempts from a client or at a prefix: try again after a while."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed API key attempts; retry after {retry_after} s")
        self.retry_after = retry_after


def _hash(secret: str, salt: str) -> str:
    data = secret.encode("utf-8", "surrogatepass")
    return hashlib.scrypt(data, salt=bytes.fromhex(salt), **_SCRYPT).hex()


def expiry(text: str, now: datetime | None = None) -> datetime:
    """When a key given ``--expires TEXT`` expires: a duration (``90m``, ``12h``, ``30d``,
    ``2w``) from now, or a date or ISO 8601 time (UTC when no zone is given; a date means
    its start). It must lie in the future."""
    now = now or datetime.now(UTC)
    spelled = text.strip().lower()
    if match := _DURATION.fullmatch(spelled):
        amount, unit = int(match[1]), match[2]
        if amount == 0:
            raise ValueError(f"{text!r} is not in the future")
        try:
            return now + timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            raise ValueError(f"{text!r} is too far in the future") from None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90m, 12h, 30d, 2w) nor a date or ISO 8601 time"
        ) from None
    when = times.utc(when)
    if when <= now:
        raise ValueError(f"{text!r} is in the past")
    return when


def check_role(role: str) -> None:
    """Refuse a role copml does not know, naming the ones it does."""
    if role not in ROLES:
        raise CopmlError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def create(
    engine: Engine,
    role: str,
    *,
    name: str | None = None,
    expires_at: datetime | None = None,
    actor: str = "system",
) -> str:
    """A new key for ``role``; the clear key is returned once and never stored."""
    check_role(role)
    prefix, secret, salt = secrets.token_hex(4), secrets.token_urlsafe(32), secrets.token_hex(16)
    with engine.begin() as conn:
        conn.execute(
            insert(api_keys).values(
                prefix=prefix,
                salt=salt,
                hash=_hash(secret, salt),
                role=role,
                name=name,
                created_at=datetime.now(UTC),
                expires_at=expires_at,
            )
        )
        events.record(
            conn,
            events.Kind.KEY_CREATED,
            actor=actor,
            subject=f"key:{prefix}",
            reason=f"role {role}",
            evidence={"name": name, "expires_at": expires_at.isoformat() if expires_at else None},
        )
    return f"cpml_{prefix}_{secret}"


def listing(engine: Engine) -> list[KeyRecord]:
    """Every key the store knows, oldest first, without its hash."""
    columns = [api_keys.c[f] for f in KeyRecord.__dataclass_fields__]
    with engine.connect() as conn:
        rows = conn.execute(select(*columns).order_by(api_keys.c.id))
        return [KeyRecord(**row._mapping) for row in rows]


def revoke(engine: Engine, prefix: str, *, reason: str, actor: str = "system") -> KeyRecord:
    """Revoke the key with ``prefix`` for good; running servers refuse it within seconds."""
    if not reason.strip():
        raise CopmlError("--reason: say why the key is revoked; it is recorded")
    with engine.begin() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.prefix == prefix)).first()
        if row is None:
            raise NotFoundError(f"no key with prefix {prefix!r} (see copml keys list)")
        if row.revoked_at is not None:
            raise CopmlError(f"key {prefix} was already revoked at {row.revoked_at:%Y-%m-%d %H:%M}")
        now = datetime.now(UTC)
        conn.execute(update(api_keys).where(api_keys.c.id == row.id).values(revoked_at=now))
        events.record(
            conn,
            events.Kind.KEY_REVOKED,
            actor=actor,
            subject=f"key:{prefix}",
            reason=reason.strip(),
            evidence={"role": row.role, "name": row.name},
        )
    return KeyRecord(prefix, row.role, row.name, row.created_at, row.expires_at, now)


class _Failures:
    """Failed attempts per identity (a client address, a key prefix) in a sliding window."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self._limit, self._window, self._clock = limit, window, clock
        # Each identity is forgotten ``window`` seconds after its last failure; bounded.
        self._seen: TTLCache[str, deque[float]] = TTLCache(100_000, window, timer=clock)

    def retry_after(self, identity: str) -> int:
        """Seconds until ``identity`` may try again; 0 when it may now."""
        times = self._seen.get(identity)
        if times is None or len(times) < self._limit:
            return 0
        return max(1, math.ceil(times[0] + self._window - self._clock()))

    def add(self, identity: str) -> None:
        times = self._seen.get(identity) or deque(maxlen=self._limit)
        times.append(self._clock())
        self._seen[identity] = times


class Verifier:
    """Checks presented keys against the store; safe to share between threads.

    :meth:`recall` never blocks (no I/O, no scrypt) and answers for keys verified
    recently; :meth:`verify` may run scrypt and query the store, so servers call it off
    their event loop.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        recheck_seconds: float = 2.0,
        max_failures: int = 10,
        failure_window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._recheck = recheck_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # SHA-256 of a verified key -> the key; dropped after an hour unused (or revoked).
        self._verified: TTLCache[str, Key] = TTLCache(10_000, 3600.0, timer=clock)
        # prefix -> when its row was last seen active.
        self._checked: dict[str, float] = {}
        self._by_client = _Failures(max_failures, failure_window, clock)
        self._by_prefix = _Failures(max_failures, failure_window, clock)

    def recall(self, presented: str) -> Key | None:
        """The key, if it was verified and its row checked within the last few seconds."""
        digest = _digest(presented)
        with self._lock:
            key = self._verified.get(digest)
            if key is None or not self._fresh(key):
                return None
            self._verified[digest] = key  # in use: remembered for another hour
            return key

    def throttle(self, presented: str, client: str) -> None:
        """Raise :class:`Throttled` when ``client`` or the key's prefix failed too often;
        a key verified before is never held back (its row is what decides)."""
        prefix = _prefix(presented)
        digest = _digest(presented)
        with self._lock:
            if digest in self._verified:
                return
            wait = max(
                self._by_client.retry_after(client),
                self._by_prefix.retry_after(prefix) if prefix else 0,
            )
        if wait:
            raise Throttled(wait)

    def verify(self, presented: str, client: str = "") -> Key | None:
        """The key ``presented`` stands for, or None; blocking (scrypt, a store query).

        Raises :class:`Throttled` instead of trying when ``client`` (an address) or the
        prefix has failed too often lately.
        """
        if (key := self.recall(presented)) is not None:
            return key
        digest = _digest(presented)
        with self._lock:
            known = self._verified.get(digest)
        if known is not None:
            if self.current(known):
                return self.recall(presented) or known
            self._fail(client, known.prefix)
            return None
        self.throttle(presented, client)
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != "cpml":
            self._fail(client, None)
            return None
        _, prefix, secret = parts
        row = self._row(prefix)
        salt, expected = (row["salt"], row["hash"]) if row else (_DECOY_SALT, _DECOY_HASH)
        matches = hmac.compare_digest(_hash(secret, salt), expected)
        key = _active(prefix, row)
        if not matches or key is None:
            self._fail(client, prefix)
            return None
        with self._lock:
            self._verified[digest] = key
            self._checked[prefix] = self._clock()
        return key

    def current(self, key: Key) -> bool:
        """Whether ``key`` is still neither revoked nor expired (its row is read again at
        most every few seconds); a revoked key is forgotten."""
        with self._lock:
            if self._fresh(key):
                return True
        found = _active(key.prefix, self._row(key.prefix))
        with self._lock:
            if found is not None:
                self._checked[key.prefix] = self._clock()
                return True
            self._checked.pop(key.prefix, None)
            for digest in [d for d, k in self._verified.items() if k.prefix == key.prefix]:
                self._verified.pop(digest, None)
            return False

    def _fresh(self, key: Key) -> bool:
        checked = self._checked.get(key.prefix)
        return (
            checked is not None and self._clock() - checked <= self._recheck and not key.expired()
        )

    def _row(self, prefix: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.prefix == prefix)).first()
        return dict(row._mapping) if row else None

    def _fail(self, client: str, prefix: str | None) -> None:
        with self._lock:
            self._by_client.add(client)
            if prefix:
                self._by_prefix.add(prefix)


def _digest(presented: str) -> str:
    """The fast hash that names a presented key in memory (never the key itself)."""
    return hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()


def _prefix(presented: str) -> str | None:
    parts = presented.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "cpml" else None


def _active(prefix: str, row: dict[str, Any] | None) -> Key | None:
    """The key of ``row`` when it is neither revoked nor expired."""
    if row is None or row["revoked_at"] is not None:
        return None
    key = Key(prefix, row["role"], row["name"], row["expires_at"])
    return None if key.expired() else key
