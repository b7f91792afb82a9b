"""The incidents page of the dashboard in a real browser (issue 17.3): open incidents with
their deadline and time left (overdue in red), closed ones with the authority's reference,
the cited predictions linked to their audit page for those who may read it, and the
incidents named on that page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dashboard import Site
from sqlalchemy import select
from test_ui import login  # skips this module too when there is no browser

from copml import incidents
from copml.project import load_project
from copml.store import batches, open_store

from playwright.sync_api import Page, expect  # isort: skip


def _some_predictions(site: Site, n: int) -> list[str]:
    engine = open_store(load_project(site.root).db_url)
    with engine.connect() as conn:
        key = conn.execute(select(batches.c.key).order_by(batches.c.id).limit(1)).scalar_one()
    return [f"{key}{row:08x}" for row in range(n)]


def test_the_incidents_page_lists_open_and_closed_incidents(page: Page, site: Site) -> None:
    project = load_project(site.root)
    cited = _some_predictions(site, 2)
    now = datetime.now(UTC)
    serious = incidents.open_incident(
        project, severity="serious", predictions=cited, reason="a wrongly denied claim",
        actor="user:olivia", at=now - timedelta(minutes=90),
    )  # fmt: skip
    overdue = incidents.open_incident(
        project, severity="widespread", predictions=[], reason="every offer of March",
        actor="user:olivia", at=now - timedelta(days=3, minutes=90),
    )  # fmt: skip
    done = incidents.open_incident(
        project, severity="death", predictions=cited[:1], reason="a fatal delay",
        actor="user:olivia", at=now - timedelta(days=20),
    )  # fmt: skip
    incidents.report(project, done.id, reference="MSA-2026-17", actor="user:olivia")
    incidents.close(project, done.id, reason="corrective action verified", actor="user:olivia")

    login(page, site, "viewer")  # read-only: no links to audit records it may not read
    page.goto(f"{site.base}/p/{site.slug}")
    page.locator("nav.tabs").get_by_text("Incidents").click()
    expect(page.locator("h1")).to_contain_text("Serious incidents")
    row = page.locator(f"table.incidents.open tr#incident-{serious.id}")
    expect(row).to_contain_text("serious")
    expect(row).to_contain_text(serious.deadline.strftime("%Y-%m-%d"))
    expect(row.locator("td").nth(5)).to_have_text("14 d 22 h")
    expect(row).to_contain_text(cited[0])
    expect(row.locator("a")).to_have_count(0)
    late = page.locator(f"table.incidents.open tr#incident-{overdue.id} td.alarm")
    expect(late).to_have_text("overdue by 1 d 1 h")
    closed = page.locator(f"table.incidents.closed tr#incident-{done.id}")
    expect(closed).to_contain_text("MSA-2026-17")
    expect(closed).to_contain_text("death")
    expect(page.locator("table.events")).to_contain_text("corrective action verified")
    expect(page.locator("form")).to_have_count(1)  # the log-out button only: read-only

    login(page, site, "auditor")
    page.goto(f"{site.base}/p/{site.slug}/incidents")
    page.locator(f"tr#incident-{serious.id} a", has_text=cited[1]).click()
    expect(page.locator("h1")).to_contain_text(cited[1])
    expect(page.locator("ul.incidents")).to_contain_text(f"incident {serious.id} (serious, open)")
