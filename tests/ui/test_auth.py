"""The dashboard's role table and sessions, and its login over HTTP against a real
``copml ui``: revoked keys, login CSRF, cookies behind a proxy, bad query values."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from dashboard import Site, running_ui

import key_changes
from copml import keys
from copml.keys import ROLES, Key
from copml.project import load_project
from copml.store import open_store
from copml.ui.auth import PERMISSIONS, SESSION_COOKIE, Sessions, actor, allowed


def test_the_role_table_follows_design_section_7() -> None:
    assert all(roles <= set(ROLES) for _, roles in PERMISSIONS.values())
    assert not any(allowed("service", action) for action in PERMISSIONS)  # machines only
    assert [a for a in PERMISSIONS if allowed("viewer", a)] == ["read"]
    assert allowed("operator", "promote") and allowed("operator", "rollback")
    assert allowed("operator", "reviews") and not allowed("auditor", "reviews")
    assert allowed("auditor", "predictions") and allowed("auditor", "replay")
    assert allowed("scientist", "approve") and not allowed("scientist", "promote")
    assert not allowed("operator", "no such action")


def test_sessions_are_random_tokens_that_name_the_person() -> None:
    sessions = Sessions()
    key = Key("ab12cd34", "viewer", "vera")
    token = sessions.open({"telco-churn": key})
    found = sessions.get(token)
    assert found is not None and found.name == "vera" and actor(key) == "user:vera"
    assert actor(Key("ab12cd34", "viewer", None)) == "user:ab12cd34"
    assert found.csrf_ok(found.csrf) and not found.csrf_ok("forged") and not found.csrf_ok(None)
    assert sessions.get("guessed") is None
    sessions.close(token)
    assert sessions.get(token) is None


def _login(base: str, key: str, **headers: str) -> tuple[httpx.Client, httpx.Response]:
    """A new HTTP client (a new person) that posts the login form; its cookies are kept."""
    client = httpx.Client(base_url=base, timeout=60)
    return client, client.post("/login", data={"key": key, "next": "/"}, headers=headers)


def _until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll ``condition`` (each try waits on the server) until true; fail at the deadline."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {seconds:.0f} s")
        time.sleep(0.1)


def _logged_out(client: httpx.Client) -> bool:
    answer = client.get("/")
    return answer.status_code == 303 and answer.headers["location"].startswith("/login")


def test_revoking_or_expiring_a_key_ends_its_sessions(site: Site) -> None:
    engine = open_store(load_project(site.root).db_url)
    soon = datetime.now(UTC) + timedelta(hours=1)
    made = {
        "revoked": keys.create(engine, "viewer", name="rita"),
        "expired": keys.create(engine, "viewer", name="eve", expires_at=soon),
        "kept": keys.create(engine, "viewer", name="kim"),
    }
    clients = {}
    for case, key in made.items():
        clients[case], answer = _login(site.base, key)
        assert answer.status_code == 303 and SESSION_COOKIE in clients[case].cookies
        assert clients[case].get("/").status_code == 200
    key_changes.revoke(site.root, made["revoked"])
    key_changes.expire(engine, made["expired"])
    _until(lambda: _logged_out(clients["revoked"]))
    _until(lambda: _logged_out(clients["expired"]))
    assert clients["kept"].get("/").status_code == 200
    for case in ("revoked", "expired"):
        assert _login(site.base, made[case])[1].status_code == 401


def test_an_event_cursor_out_of_range_is_a_422_page(site: Site) -> None:
    client, answer = _login(site.base, site.keys["viewer"])
    assert answer.status_code == 303
    for cursor in ("99999999999999999999999", "-1", "0"):
        page = client.get(f"/p/{site.slug}/events", params={"before": cursor})
        assert page.status_code == 422 and "before" in page.text, (cursor, page.text[-500:])
    assert client.get(f"/p/{site.slug}/events", params={"before": "2"}).status_code == 200


def test_a_login_posted_from_another_site_is_refused(site: Site) -> None:
    """Login CSRF: another site's page must not log a visitor in with a key of its own."""
    key = site.keys["viewer"]
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Origin": site.base.replace("127.0.0.1", "localhost")},
    ):
        client, answer = _login(site.base, key, **headers)
        assert answer.status_code == 403 and "another site" in answer.text, headers
        assert SESSION_COOKIE not in client.cookies
    for headers in ({"Origin": site.base}, {"Referer": f"{site.base}/login"}, {}):
        assert _login(site.base, key, **headers)[1].status_code == 303, headers


def _secure(answer: httpx.Response) -> bool:
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    return "secure" in [part.strip().lower() for part in cookie.split(";")]


def test_session_cookies_are_secure_behind_a_tls_proxy(site: Site, tmp_path: Path) -> None:
    key, https = site.keys["viewer"], {"X-Forwarded-Proto": "https"}
    assert _secure(_login(site.base, key, **https)[1])  # a proxy on loopback is trusted
    assert not _secure(_login(site.base, key)[1])
    with running_ui(
        site.root, tmp_path / "elsewhere.txt", "--forwarded-allow-ips", "192.0.2.1"
    ) as base:
        assert not _secure(_login(base, key, **https)[1])  # loopback is no trusted proxy here
    with running_ui(site.root, tmp_path / "secure.txt", "--secure-cookies") as base:
        assert _secure(_login(base, key)[1])
