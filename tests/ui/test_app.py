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


def test_an_operator_runs_a_version_in_shadow_then_canary_and_ends_it(site: Site) -> None:
    from copml import events, rollout
    from copml.store import open_store

    project = load_project(site.root)
    engine = open_store(project.db_url)
    client, _ = _login(site, "operator")
    page = f"/p/{site.slug}/models/1"
    token = _csrf(client, page)
    assert f'action="{page}/shadow"' in client.get(page).text
    before = capture(project)
    for form, says in [
        ({"csrf": token, "reason": "try", "share": "150%"}, "share: between"),
        ({"csrf": token, "reason": "try", "share": "lots"}, "is not a share"),
        ({"csrf": token, "reason": " ", "share": "10%"}, "reason: say why"),
    ]:
        answer = client.post(f"{page}/canary", data=form)
        assert answer.status_code == 422 and says in answer.text, answer.text[-300:]
    answer = client.post(f"/p/{site.slug}/abort", data={"csrf": token, "reason": "x", "arm": "all"})
    assert answer.status_code == 422 and "arm:" in answer.text
    viewer, _ = _login(site, "viewer")
    refused = viewer.post(f"{page}/shadow", data={"csrf": _csrf(viewer, "/"), "reason": "x"})
    assert refused.status_code == 403
    never_gated = client.post(f"{page}/shadow", data={"csrf": token, "reason": "watch it"})
    assert never_gated.status_code == 409 and "has not passed the gate" in never_gated.text
    assert_unchanged(before, project)  # refused posts change nothing

    from copml.operate import lifecycle

    # v1, the first champion, against today's on its own holdout (what the gate measures)
    assert lifecycle.gate(project, "1", actor="user:sam").passed

    def post(path: str, **form: str) -> None:
        answer = client.post(path, data={"csrf": token, **form}, follow_redirects=False)
        assert answer.status_code == 303, answer.text[-300:]

    post(f"{page}/shadow", reason="watch the old model on live traffic")
    assert rollout.current(engine, project.spec.project) == rollout.Rollout(shadow="1")
    shown = client.get(page).text
    assert "in <strong>shadow</strong>" in shown and f'action="/p/{site.slug}/abort"' in shown
    post(f"{page}/canary", share="20%", reason="a fifth of customers")
    assert rollout.current(engine, project.spec.project) == rollout.Rollout(None, "1", 0.2)
    assert "answers 20 % of entities" in client.get(page).text
    post(f"/p/{site.slug}/abort", arm="canary", reason="seen enough")
    assert rollout.current(engine, project.spec.project) == rollout.Rollout()
    changes = events.history(engine, kind=events.Kind.MODEL_ROLLOUT, limit=3)
    assert {e["actor"] for e in changes} == {"user:olivia"}
