"""``alliance demo``'s ``dashboard.html`` in headless Chromium: opened from a file, it draws the
map, the study and the privacy view from its embedded data and requests nothing else.

(Its own module: Playwright's sync API cannot start while another module's browser runs.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.e2e.test_clinic_browser import CHROMIUM, _browser_or_skip, screenshot
from tests.e2e.test_dashboard_browser import Browser
from tests.unit.test_dashboard_static import demo_metrics

from alliance.web.dashboard_static import write_static_dashboard

pytestmark = pytest.mark.slow


def test_the_demo_dashboard_opens_from_a_file(tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    path = write_static_dashboard(demo_metrics(), tmp_path / "dashboard.html")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        seen = Browser(path.as_uri(), None)
        page.on("request", lambda request: seen.requests.append(request.url))
        page.on("pageerror", lambda error: seen.errors.append(str(error)))
        page.goto(path.as_uri())
        page.wait_for_selector("#updated:has-text('static page')")
        assert page.locator("#map g.node").count() == 4
        assert page.locator("#map g.node.suppressed").count() == 2
        assert page.locator("#study-list .chart canvas").count() >= 1
        assert page.locator("#privacy-list table.spent tbody tr").count() == 2
        assert "no audit log" in page.inner_text("#audit-badge")
        screenshot(page, tmp_path / "screenshots", "dashboard-demo.png")
        browser.close()
    assert seen.requests == [path.as_uri()]
    assert seen.errors == []
