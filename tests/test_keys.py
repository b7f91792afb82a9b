"""API keys: verification that gives nothing away, throttling, revocation and expiry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from copml import events, keys
from copml.project import Project
from copml.store import api_keys, open_store
from store_state import assert_unchanged, capture


class Clock:
    """A monotonic clock the test moves by hand (the verifier's windows are minutes)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Engine:
    return open_store(f"sqlite:///{tmp_path / 'copml.db'}")


def _prefix(key: str) -> str:
    return key.split("_", 2)[1]


def test_every_key_it_cannot_recall_costs_one_scrypt(
    store: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown, wrong, revoked and expired keys all cost the one scrypt a right key costs,
    so the answer's timing does not tell a made-up prefix from a real one; a key verified
    a moment ago costs none."""
    good = keys.create(store, "service")
    revoked = keys.create(store, "service")
    keys.revoke(store, _prefix(revoked), reason="test")
    expired = keys.create(store, "service")
    with store.begin() as conn:
        past = datetime.now(UTC) - timedelta(seconds=1)
        conn.execute(
            update(api_keys).where(api_keys.c.prefix == _prefix(expired)).values(expires_at=past)
        )
    calls: list[str] = []
    real = keys._hash

    def counted(secret: str, salt: str) -> str:
        calls.append(secret)
        return real(secret, salt)

    monkeypatch.setattr(keys, "_hash", counted)
    verifier = keys.Verifier(store)
    presented = {
        "right": good,
        "wrong secret": f"cpml_{_prefix(good)}_wrong",
        "unknown prefix": "cpml_00000000_wrong",
        "revoked": revoked,
        "expired": expired,
    }
    costs = {}
    for case, key in presented.items():
        before = len(calls)
        found = verifier.verify(key, f"client-{case}")
        assert (found is not None) == (case == "right"), case
        costs[case] = len(calls) - before
    assert costs == dict.fromkeys(presented, 1)
    before = len(calls)
    assert verifier.recall(good) is not None and verifier.verify(good, "x") is not None
    assert len(calls) == before  # remembered: no scrypt


def test_failures_are_limited_per_client_and_per_prefix(store: Engine) -> None:
    good = keys.create(store, "service")
    other = keys.create(store, "viewer")
    clock = Clock()
    verifier = keys.Verifier(store, max_failures=3, failure_window=60, clock=clock)
    assert verifier.verify(good, "10.0.0.1") is not None
    for n in range(3):
        assert verifier.verify(f"cpml_{_prefix(other)}_guess{n}", "10.0.0.9") is None
    with pytest.raises(keys.Throttled) as refused:
        verifier.verify("cpml_00000000_guess", "10.0.0.9")  # this client is out of tries
    assert 1 <= refused.value.retry_after <= 60
    with pytest.raises(keys.Throttled):  # so is the prefix, from any client
        verifier.verify(f"cpml_{_prefix(other)}_guess", "10.0.0.2")
    with pytest.raises(keys.Throttled):  # even with the right secret, until the window ends
        verifier.verify(other, "10.0.0.2")
    clock.now += 5  # past the recheck: the verified key is checked against its row only
    verifier.throttle(good, "10.0.0.9")
    assert verifier.verify(good, "10.0.0.9") is not None
    clock.now += 61
    assert verifier.verify(other, "10.0.0.9") is not None


def test_revoked_and_expired_keys_stop_at_the_next_recheck(store: Engine) -> None:
    revoked = keys.create(store, "service")
    expiring = keys.create(store, "service", expires_at=datetime.now(UTC) + timedelta(hours=1))
    clock = Clock()
    verifier = keys.Verifier(store, recheck_seconds=2, clock=clock)
    first = verifier.verify(expiring, "c")
    assert verifier.verify(revoked, "c") is not None and first is not None
    assert first.expires_at is not None
    keys.revoke(store, _prefix(revoked), reason="left the team")
    with store.begin() as conn:
        past = datetime.now(UTC) - timedelta(seconds=1)
        conn.execute(
            update(api_keys).where(api_keys.c.prefix == _prefix(expiring)).values(expires_at=past)
        )
    clock.now += 2.5
    assert verifier.recall(revoked) is None and verifier.verify(revoked, "c") is None
    assert verifier.recall(expiring) is None and verifier.verify(expiring, "c") is None
    assert not verifier.current(first)


def _copml(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "copml", *args, "--project", str(project.root)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},  # errors on one line
    )


def test_keys_list_revoke_and_expiry_from_the_cli(fresh_churn: Project) -> None:
    made = _copml(fresh_churn, "keys", "create", "--role", "viewer", "--name", "vera")
    assert made.returncode == 0, made.stderr
    vera = _prefix(made.stdout.strip())
    made = _copml(fresh_churn, "keys", "create", "--role", "service", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    robot = _prefix(made.stdout.strip())

    listed = _copml(fresh_churn, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["prefix"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {vera, robot}
    assert rows[vera]["name"] == "vera" and rows[vera]["expires_at"] is None
    expires = datetime.fromisoformat(rows[robot]["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    assert all(r["state"] == "active" and r["revoked_at"] is None for r in rows.values())
    assert "hash" not in rows[vera] and "salt" not in rows[vera]

    done = _copml(fresh_churn, "keys", "revoke", vera, "--reason", "left the team")
    assert done.returncode == 0, done.stderr
    listed = _copml(fresh_churn, "keys", "list", "--json")
    rows = {r["prefix"]: r for r in json.loads(listed.stdout)}
    assert rows[vera]["state"] == "revoked" and rows[vera]["revoked_at"]
    assert rows[robot]["state"] == "active"
    engine = open_store(fresh_churn.db_url)
    event = events.latest(engine, "key.revoked", f"key:{vera}")
    assert event is not None and event["reason"] == "left the team"
    assert event["actor"].startswith("user:")
    table = _copml(fresh_churn, "keys", "list")
    assert table.returncode == 0 and vera in table.stdout and "revoked" in table.stdout


BAD_COMMANDS = [
    (("keys", "revoke", "ffffffff", "--reason", "x"), "no key with prefix 'ffffffff'"),
    (("keys", "revoke", "{vera}", "--reason", "again"), "already revoked"),
    (("keys", "revoke", "{robot}", "--reason", " "), "--reason"),
    (("keys", "create", "--role", "viewer", "--expires", "soon"), "--expires: 'soon'"),
    (("keys", "create", "--role", "viewer", "--expires", "2020-01-01"), "in the past"),
    (("keys", "create", "--role", "viewer", "--expires", "9999999999d"), "--expires"),
    (("keys", "create", "--role", "root"), "unknown role 'root'"),
]


def test_bad_keys_commands_exit_1_and_change_nothing(fresh_churn: Project) -> None:
    engine = open_store(fresh_churn.db_url)
    vera = _prefix(keys.create(engine, "viewer", name="vera"))
    robot = _prefix(keys.create(engine, "service", name="robot"))
    keys.revoke(engine, vera, reason="left")
    before = capture(fresh_churn)
    for args, says in BAD_COMMANDS:
        done = _copml(fresh_churn, *(a.format(vera=vera, robot=robot) for a in args))
        assert done.returncode == 1, (args, done.stdout + done.stderr)
        assert says in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert_unchanged(before, fresh_churn)


def test_keys_made_before_expiry_existed_keep_working(tmp_path: Path) -> None:
    """Migration 0005 adds ``expires_at`` to a store whose keys were made at 0004."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from copml.store import database

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(database._MIGRATIONS))
    with old.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        conn.execute(
            text(
                "INSERT INTO api_keys (prefix, salt, hash, role, name, created_at) "
                "VALUES ('0a0b0c0d', :salt, :hash, 'viewer', 'old', '2026-01-01 00:00:00.000000')"
            ),
            {"salt": "00" * 16, "hash": keys._hash("s3cret", "00" * 16)},
        )
    old.dispose()
    engine = open_store(url)
    [record] = keys.listing(engine)
    assert record.prefix == "0a0b0c0d" and record.expires_at is None and record.state == "active"
    assert keys.Verifier(engine).verify("cpml_0a0b0c0d_s3cret", "c") is not None
