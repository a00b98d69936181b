"""The consortium dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven
by Playwright, against ``alliance coordinator serve`` and ``alliance site run`` processes on
loopback (:mod:`tests.e2e.deployment`), over mutual TLS.

The browser presents a consortium certificate like any client (Playwright's
``client_certificates``): the operator's, then a hospital's. One page, never reloaded, follows a
tiny study with differential privacy: every hospital appears on the map, a hospital that joins
later appears, the rounds close on the page as they close at the coordinator, and the privacy
view shows each hospital's ε once the model is published. A hospital's certificate sees its own
figures and no other hospital's. The browser's network log holds no request to any other host,
and the page raises no error (a resource refused by its Content-Security-Policy would be one).

Screenshots go to ``<tmp>/screenshots`` and, when ``ALLIANCE_SCREENSHOTS=DIR`` is set, to DIR
too. Without Chromium or Playwright the tests skip, unless ``ALLIANCE_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.deployment import Deployment, approve, provision, study_text
from tests.e2e.test_clinic_browser import CHROMIUM, _browser_or_skip, screenshot

pytestmark = pytest.mark.slow

STUDY = "dash-e2e"
PRIVACY = """
[privacy]
mechanism = "dp-sgd"
target_epsilon = 4.0
delta = 1e-5
max_grad_norm = 1.0
"""


@dataclass
class Browser:
    """A browser context with one party's certificate, and what its pages requested."""

    base: str
    context: Any
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self) -> Any:
        page = self.context.new_page()
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )
        page.set_default_timeout(30_000)
        page.goto(self.base + "/dashboard")
        page.wait_for_selector("#updated:has-text('updated')")
        return page

    def only_the_coordinator(self) -> None:
        others = [url for url in self.requests if not url.startswith(self.base + "/")]
        assert self.requests
        assert others == [], f"requests to other hosts: {others}"
        assert self.errors == [], f"the page reported errors: {self.errors}"


@dataclass
class Federation:
    deployment: Deployment
    sites: tuple[str, ...]
    joiner: str
    playwright: Any
    browser: Any

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.deployment.port}"

    def as_party(self, folder: Path, name: str) -> Browser:
        context = self.browser.new_context(
            viewport={"width": 1280, "height": 900},
            locale="zh-CN",
            ignore_https_errors=True,  # the consortium's own CA, not one Chromium knows
            client_certificates=[
                {
                    "origin": self.base,
                    "certPath": str(folder / f"{name}.crt"),
                    "keyPath": str(folder / f"{name}.key"),
                }
            ],
        )
        return Browser(self.base, context)

    def operator(self) -> Browser:
        return self.as_party(self.deployment.root / "consortium" / "operator", "operator")

    def hospital(self, site: str) -> Browser:
        return self.as_party(self.deployment.site_dir(site), "site")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    sync_playwright = _browser_or_skip()
    d = provision(tmp_path_factory.mktemp("dash"), scale=0.1, n_diseases=60)
    sites, joiner = d.sites[:3], d.sites[3]
    text = study_text(STUDY, sites, rounds=3, quorum=3, timeout_s=120, extra=PRIVACY)
    approve(d, text)
    (d.root / "study.toml").write_text(text, encoding="utf-8")
    d.start_coordinator()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            yield Federation(d, sites, joiner, playwright, browser)
            browser.close()
    finally:
        d.stop()


def node_ids(page: Any) -> set[str]:
    return set(page.locator("#map g.node").evaluate_all("gs => gs.map(g => g.dataset.id)"))


def wait_until(what: str, check: Any, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_the_operator_follows_a_study_live(federation: Federation, tmp_path: Path) -> None:
    d, sites = federation.deployment, federation.sites
    operator = federation.operator()
    page = operator.open()
    page.evaluate("window.notReloaded = true")
    assert node_ids(page) == set()

    d.submit((d.root / "study.toml").read_text(encoding="utf-8"))
    for site in sites:
        d.start_site(site)
    wait_until("every hospital on the map", lambda: node_ids(page) >= set(sites))
    assert "online" in page.locator("#nodes").inner_text()

    study = page.locator(f"#study-list .study[data-study='{STUDY}']")
    study.locator(".progress[data-round]").wait_for()
    first_round = int(study.locator(".progress[data-round]").get_attribute("data-round") or 0)

    d.start_site(federation.joiner)
    wait_until("the joining hospital", lambda: federation.joiner in node_ids(page))

    def closed() -> int:
        text = study.locator(".study-head").inner_text()
        return int(text.split("rounds ")[1].split(" /")[0])

    wait_until("a round closing on the page", lambda: closed() > 0 or first_round > 1)
    wait_until("updates drawn", lambda: page.locator("#map line.edge").count() > 0)
    screenshot(page, tmp_path / "screenshots", "dashboard-map.png")
    wait_until("the study's end on the page", lambda: closed() == 3, timeout_s=400)
    assert page.evaluate("window.notReloaded") is True, "the page was reloaded"
    assert study.locator(".history tbody tr").count() == 3
    assert study.locator(".chart canvas").count() >= 1, "no accuracy chart"
    page.locator("#study-list").scroll_into_view_if_needed()
    screenshot(page, tmp_path / "screenshots", "dashboard-study.png")

    # Each hospital reports its ε with its evaluation of the published model.
    privacy = page.locator(f"#privacy-list .study[data-study='{STUDY}'] table.spent tbody tr")
    wait_until("the hospitals' ε on the page", lambda: privacy.count() == 3)
    assert "4.00" in page.locator("#privacy-list").inner_text()
    page.locator("#privacy").scroll_into_view_if_needed()
    screenshot(page, tmp_path / "screenshots", "dashboard-privacy.png")
    assert page.locator(f"#model-list tbody tr:has-text('{STUDY}') a").count() == 2
    assert "verified" in page.locator("#audit-badge").inner_text()
    operator.only_the_coordinator()


def test_a_hospital_sees_its_own_figures_only(federation: Federation, tmp_path: Path) -> None:
    own, other = federation.sites[0], federation.sites[1]
    operator = federation.operator().open()
    wait_until("a closed round", lambda: "rounds 0 /" not in operator.inner_text("#study-list"))
    hospital = federation.hospital(own)
    page = hospital.open()
    data = json.loads(page.evaluate("fetch('/v1/dashboard').then(r => r.text())"))
    assert data["viewer"] == {"name": own, "role": "site"}
    nodes = {n["id"]: n for n in data["network"]["nodes"]}
    assert set(nodes) >= set(federation.sites)
    assert nodes[own]["state"] != "member"
    assert nodes[own].get("own") is True
    assert all(n["state"] == "member" and n["cases"] is None for s, n in nodes.items() if s != own)
    assert {e["source"] for e in data["network"]["edges"]} <= {own}
    for status in data["studies"]:
        for entry in status["history"]:
            assert other not in entry["sites"]
            assert other not in entry["site_metrics"]
        for point in status["accuracy"]:
            assert set(point["sites"]) <= {own}
    for study in data["privacy"]["studies"]:
        assert set(study["spent"]) <= {own}
    assert "problems" not in data["audit"]
    assert page.locator(f"#map g.node[data-id='{own}'].own").count() == 1
    assert page.locator(f"#map g.node[data-id='{other}']").get_attribute("data-state") == "member"
    assert other not in page.locator("#privacy-list").inner_text()
    screenshot(page, tmp_path / "screenshots", "dashboard-hospital.png")
    hospital.only_the_coordinator()
