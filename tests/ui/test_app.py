"""The guards the dashboard's app puts around every route, over HTTP against a real
``copml ui``: security headers, the model card's own style policy, redirects that stay on
this site, and forms refused (with nothing changed) when they cannot be read."""

from __future__ import annotations

import re

import httpx
from dashboard import Site

from copml import registry
from copml.project import load_project
from copml.ui.auth import SESSION_COOKIE
from store_state import assert_unchanged, capture

_STRICT = "style-src 'self'; script-src 'none'"


def _login(site: Site, role: str, next: str = "/") -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=site.base, timeout=60)
    return client, client.post("/login", data={"key": site.keys[role], "next": next})


def _csrf(client: httpx.Client, path: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found, path
    return found.group(1)


def test_every_response_carries_the_security_headers(site: Site) -> None:
    client, _ = _login(site, "viewer")
    for path, status in [("/", 200), ("/login?next=/", 303), ("/nowhere", 404)]:
        answer = client.get(path)
        assert answer.status_code == status, path
        assert _STRICT in answer.headers["content-security-policy"], path
        assert answer.headers["x-frame-options"] == "DENY", path
        assert answer.headers["x-content-type-options"] == "nosniff", path
        assert answer.headers["referrer-policy"] == "same-origin", path
    assert "no-store" in client.get("/").headers["cache-control"]
    assert "Not Found" in client.get("/nowhere").text  # the error page, not JSON
    style = client.get("/static/copml.css")
    assert style.status_code == 200 and "cache-control" not in style.headers
    card = client.get(f"/p/{site.slug}/models/1/card")
    assert card.status_code == 200 and "Model card" in card.text
    policy = card.headers["content-security-policy"]
    assert "style-src 'unsafe-inline'" in policy and "script-src 'none'" in policy
    assert card.headers["x-frame-options"] == "DENY"


def test_login_sends_people_only_to_a_page_of_this_site(site: Site) -> None:
    for target, lands in [
        (f"/p/{site.slug}/events", f"/p/{site.slug}/events"),
        ("//evil.example/page", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
    ]:
        client, answer = _login(site, "viewer", next=target)
        assert answer.status_code == 303 and answer.headers["location"] == lands, target
        again = client.get("/login", params={"next": target}, follow_redirects=False)
        assert again.status_code == 303 and again.headers["location"] == lands, target


def test_a_form_that_cannot_be_read_is_refused_and_changes_nothing(site: Site) -> None:
    project = load_project(site.root)
    client, _ = _login(site, "operator")
    token = _csrf(client, f"/p/{site.slug}/models")
    champion = registry.champion(project)
    before = capture(project)
    rollback = f"/p/{site.slug}/rollback"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body, headers, status, says in [
        ({"csrf": token, "reason": "json"}, {}, 415, "x-www-form-urlencoded"),
        (f"csrf={token}&reason={'x' * 70_000}", form, 413, "over 64 KiB"),
        (b"csrf=\xff&reason=why", form, 400, "not UTF-8"),
        ("reason=no+token", form, 403, "CSRF token"),
        (f"csrf={token}&reason=why", {**form, "Origin": "https://evil.example"}, 403, "another"),
    ]:
        if isinstance(body, dict):
            answer = client.post(rollback, json=body)
        else:
            answer = client.post(rollback, content=body, headers=headers)
        assert answer.status_code == status and says in answer.text, (status, answer.text[-300:])
    stranger = httpx.post(f"{site.base}{rollback}", data={"csrf": token, "reason": "why"})
    assert stranger.status_code == 401 and "log in first" in stranger.text
    assert client.post("/logout", data={"csrf": "stale"}).status_code == 403  # a stale token
    assert client.get("/").status_code == 200 and SESSION_COOKIE in client.cookies
    assert_unchanged(before, project)
    after = registry.champion(project)
    assert after is not None and champion is not None and after.version == champion.version
