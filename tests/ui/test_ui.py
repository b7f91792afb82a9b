"""The dashboard in a real browser: login, every page with its chart, a review resolved
into the store, the role table enforced on buttons and on posts, bad input as 4xx pages."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from dashboard import CHROMIUM, Site


def _missing() -> str | None:
    for module, package in (
        ("playwright", "playwright"),
        ("pytest_playwright", "pytest-playwright"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (.venv/bin/python -m pip install {package})"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is absent (apt-get install -y --no-install-recommends chromium)"
    return None


if (_why := _missing()) is not None:
    if os.environ.get("COPML_REQUIRE_BROWSER") == "1":
        pytest.fail(f"COPML_REQUIRE_BROWSER=1 but {_why}", pytrace=False)
    pytest.skip(f"browser tests need a browser: {_why}", allow_module_level=True)

from playwright.sync_api import Page, expect  # noqa: E402
from sqlalchemy import select  # noqa: E402

from copml import events, registry  # noqa: E402
from copml.project import load_project  # noqa: E402
from copml.store import feedback, open_store, reviews  # noqa: E402


def login(page: Page, site: Site, role: str) -> None:
    page.context.clear_cookies()  # a new person, a new session
    page.goto(f"{site.base}/login")
    page.fill("#key", site.keys[role])
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{site.base}/")


def charts_drawn(page: Page, selector: str = "img.chart") -> int:
    """How many chart images decoded (a PNG with a width); fails if none did."""
    images = page.locator(selector)
    expect(images.first).to_be_visible()
    widths = images.evaluate_all("(all) => all.map((img) => img.naturalWidth)")
    assert widths and all(w > 0 for w in widths), widths
    return len(widths)


def csrf(page: Page) -> str:
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    assert token
    return token


def test_login_is_required_and_bad_keys_are_refused(page: Page, site: Site) -> None:
    page.goto(f"{site.base}/p/{site.slug}/models")
    expect(page).to_have_url(f"{site.base}/login?next=/p/{site.slug}/models")
    page.fill("#key", "cpml_00000000_not-a-real-secret")
    page.click("button[type=submit]")
    expect(page.locator("p.problem")).to_contain_text("not known to the store")
    page.fill("#key", site.keys["service"])
    page.click("button[type=submit]")
    expect(page.locator("p.problem")).to_contain_text("service keys are for programs")
    page.fill("#key", site.keys["viewer"])
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{site.base}/p/{site.slug}/models")  # back where it was going
    cookie = next(c for c in page.context.cookies() if c["name"] == "copml_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_every_page_renders_with_its_chart(page: Page, site: Site) -> None:
    p = f"{site.base}/p/{site.slug}"
    login(page, site, "operator")
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator(".project-summary")).to_contain_text("churn_rate")
    assert charts_drawn(page) == 1  # the KPI against its target

    page.goto(p)
    assert charts_drawn(page) >= 5  # accuracy, recall, roc_auc, churn_rate, drift, cost
    expect(page.locator("img[alt='accuracy (effectiveness)']")).to_be_visible()
    expect(page.locator("main")).to_contain_text("v3 promoted")  # an event on the time axis
    expect(page.locator("table.policies")).to_contain_text("retrain-on-decay")

    page.goto(f"{p}/models")
    expect(page.locator("table.versions tbody tr")).to_have_count(3)
    expect(page.locator("span.lifecycle.champion")).to_have_count(1)
    page.click("text=v2")
    expect(page.locator("h1")).to_contain_text("v2")
    expect(page.locator("table.lineage")).to_contain_text("MLflow run")
    assert charts_drawn(page) == 1  # the global explanation
    page.click("text=full model card")
    expect(page.locator("h1")).to_contain_text("Model card")

    page.goto(f"{p}/reviews")
    assert page.locator("table.reviews tbody tr form").count() > 0

    page.goto(f"{p}/events?actor=policy:retrain-on-decay")
    rows = page.locator("table.events tbody tr")
    assert rows.count() > 0
    assert set(rows.locator("td:nth-child(4)").all_inner_texts()) == {"policy:retrain-on-decay"}
    page.goto(f"{p}/events?kind=model.promoted")
    assert set(rows.locator("td:nth-child(3)").all_inner_texts()) == {"model.promoted"}


def test_an_auditor_reads_a_decision_and_replays_it(page: Page, site: Site) -> None:
    login(page, site, "auditor")
    page.goto(f"{site.base}/p/{site.slug}/predictions?start=2026-02-01&end=2026-03-01")
    expect(page.locator("main")).to_contain_text("4000 predictions in that period")
    page.locator("table.predictions a").first.click()
    expect(page.locator("h1")).to_contain_text("Prediction")
    assert charts_drawn(page) == 1  # the local explanation
    expect(page.locator("table.lineage")).to_contain_text("training snapshot")
    page.click("text=Replay with the archived model")
    expect(page.locator("p.flash")).to_contain_text("identical")
    engine = open_store(load_project(site.root).db_url)
    asked = events.history(engine, kind="prediction.replayed", limit=1)
    assert asked and asked[0]["actor"] == "user:arjun"


def test_resolving_a_review_stores_the_label_as_feedback(page: Page, site: Site) -> None:
    login(page, site, "operator")
    page.goto(f"{site.base}/p/{site.slug}/reviews")
    # Why each waits: an unsure score, or an input unlike the training data (issue 17).
    unlike = page.locator("table.reviews td.why", has_text="out of distribution").last
    expect(unlike).to_contain_text("MonthlyCharges 10000.0 outside the trained range")
    row = page.locator("table.reviews tbody tr").first
    prediction_id = row.locator("td").first.inner_text().strip()
    before = page.locator("table.reviews tbody tr").count()
    row.locator("select[name=label]").select_option("Yes")
    row.locator("button").click()
    expect(page.locator("p.flash")).to_contain_text(f"{prediction_id} labelled 'Yes'")
    expect(page.locator("table.reviews tbody tr")).to_have_count(before - 1)

    engine = open_store(load_project(site.root).db_url)
    from copml import prediction_log

    seq = int(prediction_log.resolve(engine, [prediction_id]).iloc[0])
    with engine.connect() as conn:
        review = conn.execute(select(reviews).where(reviews.c.seq == seq)).one()
        stored = conn.execute(select(feedback).where(feedback.c.prediction_seq == seq)).one()
    assert review.resolved_at is not None and review.resolved_by == "user:olivia"
    assert stored.actual == 1 and stored.source == "review:user:olivia"
    resolved = events.history(engine, kind="review.resolved", limit=1)
    assert resolved[0]["subject"] == f"prediction:{prediction_id}"


def test_a_viewer_sees_no_lifecycle_buttons_and_cannot_post(page: Page, site: Site) -> None:
    login(page, site, "viewer")
    model = f"{site.base}/p/{site.slug}/models/1"
    page.goto(model)
    expect(page.locator("h1")).to_contain_text("v1")
    expect(page.locator("form[action$='/promote']")).to_have_count(0)
    expect(page.locator("form[action$='/approve']")).to_have_count(0)
    page.goto(f"{site.base}/p/{site.slug}/models")
    expect(page.locator("form[action$='/rollback']")).to_have_count(0)
    expect(page.locator("nav.tabs")).not_to_contain_text("Reviews")

    token = csrf(page)  # a real session's token: only the role stands in the way
    answer = page.request.post(f"{model}/promote", form={"csrf": token, "reason": "try"})
    assert answer.status == 403
    assert "may not promote" in answer.text()
    answer = page.request.post(
        f"{site.base}/p/{site.slug}/rollback", form={"csrf": token, "reason": "try"}
    )
    assert answer.status == 403
    champion = registry.champion(load_project(site.root))
    assert champion is not None and champion.version == "3"


def test_an_operator_rolls_back_and_promotes_again(page: Page, site: Site) -> None:
    login(page, site, "operator")
    page.goto(f"{site.base}/p/{site.slug}/models")
    page.fill("#rollback-reason", "checking the previous champion")
    page.click("button.danger")
    expect(page.locator("p.flash")).to_contain_text("v1 is champion again")
    page.goto(f"{site.base}/p/{site.slug}/models/3")
    page.fill("#promote-reason", "v3 is the better model after the shift")
    page.get_by_role("button", name="Promote").click()
    expect(page.locator("p.flash")).to_contain_text("v3 passed the gate and is now champion")
    engine = open_store(load_project(site.root).db_url)
    moved = events.history(engine, kind="model.rolled_back", limit=1)
    promoted = events.history(engine, kind="model.promoted", limit=1)
    assert moved[0]["actor"] == promoted[0]["actor"] == "user:olivia"


def test_bad_input_gets_a_page_that_names_the_problem(page: Page, site: Site) -> None:
    p = f"{site.base}/p/{site.slug}"
    login(page, site, "auditor")
    for url, status, text in [
        (f"{p}/predictions/not-an-id", 404, "24 hexadecimal characters"),
        (f"{p}/predictions/ffffffffffffffff00000000", 404, "no prediction"),
        (f"{p}/predictions?start=yesterday", 422, "start: not a time"),
        (f"{p}/events?before=x", 422, "before"),
        (f"{p}/models/99", 404, "no version '99'"),
        (f"{p}/reviews", 403, "needs the role operator"),
        (f"{site.base}/p/elsewhere", 404, "no project 'elsewhere'"),
    ]:
        answer = page.goto(url)
        assert answer is not None and answer.status == status, url
        expect(page.locator("p.problem")).to_contain_text(text)
    token = csrf(page)
    replay = f"{p}/predictions/ffffffffffffffff00000000/replay"
    assert page.request.post(replay, form={"reason": "no token"}).status == 403
    assert page.request.post(replay, form={"csrf": token}).status == 404

    login(page, site, "operator")
    token = csrf(page)
    answer = page.request.post(f"{p}/rollback", form={"csrf": token, "reason": " "})
    assert answer.status == 422 and "reason: say why" in answer.text()
    answer = page.request.post(f"{p}/reviews/zzz", form={"csrf": token, "label": "Maybe"})
    assert answer.status == 404


def test_an_operator_halts_and_resumes_and_a_viewer_cannot(page: Page, site: Site) -> None:
    from copml import oversight

    project = load_project(site.root)
    engine = open_store(project.db_url)
    p = f"{site.base}/p/{site.slug}"
    login(page, site, "viewer")
    page.goto(p)
    expect(page.locator("form[action$='/halt']")).to_have_count(0)
    answer = page.request.post(f"{p}/halt", form={"csrf": csrf(page), "reason": "try"})
    assert answer.status == 403 and "may not halt" in answer.text()
    assert oversight.current(engine, project) is None

    login(page, site, "operator")
    page.goto(p)
    expect(page.locator("form[action$='/resume']")).to_have_count(0)
    page.fill("#halt-reason", "new scanner: answers unlike training")
    page.get_by_role("button", name="Halt").click()
    expect(page.locator("p.flash")).to_contain_text("safe state (review all)")
    expect(page.locator("p.halted")).to_contain_text("halted by user:olivia")
    halted = oversight.current(engine, project)
    assert halted is not None and halted.actor == "user:olivia"
    assert halted.reason == "new scanner: answers unlike training"
    page.goto(site.base)  # the overview says so too
    expect(page.locator(f"#project-{site.slug} p.halted")).to_contain_text("review all")

    page.goto(p)
    token = csrf(page)
    again = page.request.post(f"{p}/halt", form={"csrf": token, "reason": "twice"})
    assert again.status == 409 and "already halted by user:olivia" in again.text()
    page.fill("#resume-reason", "scanner calibrated")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("p.flash")).to_contain_text("resumed")
    expect(page.locator("p.halted")).to_have_count(0)
    assert oversight.current(engine, project) is None
    resumed = events.history(engine, kind="project.resumed", limit=1)
    assert resumed[0]["actor"] == "user:olivia" and resumed[0]["reason"] == "scanner calibrated"


def test_the_history_page_names_the_version_serving_at_any_time(page: Page, site: Site) -> None:
    from copml import aliases

    project = load_project(site.root)
    moves = aliases.changes(project)
    champions = [m for m in moves if m.alias == "champion"]
    assert len(champions) >= 2  # the demo promotes more than once
    first, second = champions[0], champions[1]
    p = f"{site.base}/p/{site.slug}"
    login(page, site, "viewer")
    page.goto(p)
    expect(page.locator("nav.tabs")).not_to_contain_text("History")
    assert page.goto(f"{p}/history").status == 403

    login(page, site, "auditor")
    page.goto(p)
    page.click("nav.tabs >> text=History")
    expect(page.locator("table.history tbody tr")).to_have_count(len(moves))
    now = registry.champion(project)
    assert now is not None
    expect(page.locator("p.serving")).to_contain_text(f"champion v{now.version}")
    expect(page.locator("p.serving")).to_contain_text("The registry's alias agrees")
    between = first.at + (second.at - first.at) / 2
    page.fill("#at", between.isoformat())
    page.get_by_role("button", name="Show").click()
    expect(page.locator("p.serving")).to_contain_text(f"champion v{first.version}")
    expect(page.locator("p.serving")).not_to_contain_text("registry")  # a past moment
    answer = page.goto(f"{p}/history?at=yesterday")
    assert answer is not None and answer.status == 422
    expect(page.locator("p.problem")).to_contain_text("at")
