"""API keys: shown once, stored as scrypt hashes, each with one role.

A key reads ``cpml_<prefix>_<secret>``; the prefix finds the row, scrypt checks the
secret. scrypt is slow on purpose, so a server remembers keys it has already verified
(in memory only, as a SHA-256 of the whole key).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select

from copml import events
from copml.errors import CopmlError
from copml.store import api_keys

ROLES = ("viewer", "scientist", "operator", "auditor", "service")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


@dataclass(frozen=True)
class Key:
    prefix: str
    role: str
    name: str | None


def _hash(secret: str, salt: str) -> str:
    return hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), **_SCRYPT).hex()


def create(engine: Engine, role: str, *, name: str | None = None, actor: str = "system") -> str:
    """A new key for ``role``; the clear key is returned once and never stored."""
    if role not in ROLES:
        raise CopmlError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
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
            )
        )
        events.record(
            conn,
            "key.created",
            actor=actor,
            subject=f"key:{prefix}",
            reason=f"role {role}",
            evidence={"name": name},
        )
    return f"cpml_{prefix}_{secret}"


class Verifier:
    """Checks presented keys against the store, remembering the ones already verified."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._known: dict[str, Key] = {}

    def verify(self, presented: str) -> Key | None:
        digest = hashlib.sha256(presented.encode()).hexdigest()
        if digest in self._known:
            return self._known[digest]
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != "cpml":
            return None
        _, prefix, secret = parts
        with self._engine.connect() as conn:
            row = conn.execute(
                select(api_keys).where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
            ).first()
        if row is None:
            return None
        m = row._mapping
        if not hmac.compare_digest(_hash(secret, m["salt"]), m["hash"]):
            return None
        key = Key(prefix, m["role"], m["name"])
        self._known[digest] = key
        return key
