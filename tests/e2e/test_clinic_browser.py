"""The clinician's page in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against ``alliance site clinic --config site.toml`` run as a real process.

Each test searches terms as a clinician types them, adds findings, asks for the differential and
reads what the page shows; the browser's network log must hold no request to any other host,
the page must raise no error (a refused resource, under the page's Content-Security-Policy, is
one), and nothing typed may appear in the server's output (uvicorn's access log is off).

Screenshots go to ``<tmp>/screenshots`` and, when ``ALLIANCE_SCREENSHOTS=DIR`` is set, to DIR
too (the README's image is one). Without Chromium or Playwright the tests skip, unless
``ALLIANCE_REQUIRE_BROWSER=1`` (``.ci/run`` sets it), which makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.clinic_site import hospital_site_toml

from alliance.models.features import PhenotypeFeatures

CHROMIUM = Path(os.environ.get("ALLIANCE_CHROMIUM", "/usr/bin/chromium"))
SEIZURE, GDD, MICROCEPHALY = "HP:0001250", "HP:0001263", "HP:0000252"
HYPOTONIA = "HP:0001252"


def _browser_or_skip() -> Any:
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "Playwright is not installed (pip install -e '.[dev]')"
    if missing is None and not CHROMIUM.is_file():
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium; scripts/check installs it)"
    if missing is not None:
        if os.environ.get("ALLIANCE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ALLIANCE_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    return sync_playwright


@dataclass
class ClinicProcess:
    """``alliance site clinic`` running, its output in a file."""

    process: subprocess.Popen[bytes]
    output: Path
    base: str = ""

    def text(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")


@dataclass
class Visit:
    """One page in the browser, with every request it made and every error it raised."""

    page: Any
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def clinic(
    tmp_path_factory: pytest.TempPathFactory, features: PhenotypeFeatures
) -> Iterator[ClinicProcess]:
    _browser_or_skip()
    root = tmp_path_factory.mktemp("clinic")
    site_toml = hospital_site_toml(root, with_model=features)
    output = root / "clinic.out"
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "alliance.cli.app", "site", "clinic"]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "--config", str(site_toml), "--port", "0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    running = ClinicProcess(process, output)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"http://127\.0\.0\.1:(\d+)/", running.text())):
            assert process.poll() is None, f"the clinic exited: {running.text()}"
            assert time.monotonic() < deadline, f"the clinic did not start: {running.text()}"
            time.sleep(0.2)
        running.base = f"http://127.0.0.1:{found[1]}"
        yield running
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def visit(clinic: ClinicProcess) -> Iterator[Visit]:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1280, "height": 860}, locale="zh-CN")
        seen = Visit(page)
        page.on("request", lambda request: seen.requests.append(request.url))
        page.on("pageerror", lambda error: seen.errors.append(str(error)))
        page.on(
            "console",
            lambda message: seen.errors.append(message.text) if message.type == "error" else None,
        )
        page.set_default_timeout(15_000)
        page.goto(clinic.base + "/")
        page.wait_for_selector("#model:has-text('rare-2026')")
        yield seen
        browser.close()


def screenshot(page: Any, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True)
    extra = os.environ.get("ALLIANCE_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / name, Path(extra) / name)


def add(page: Any, text: str, term: str, kind: str) -> None:
    """Type ``text`` in the search box and add ``term`` from the results as ``kind``."""
    page.fill("#search", text)
    row = page.locator(f"#results li[data-id='{term}']")
    row.wait_for()
    row.locator(f"button.{'observe' if kind == 'observed' else 'exclude'}").click()
    page.locator(f"#{kind} li[data-id='{term}']").wait_for()


def only_the_clinic(
    visit: Visit, clinic: ClinicProcess, typed: tuple[str, ...], *, refused: int = 0
) -> None:
    """No request left for another host, the page raised no error but the ``refused`` requests
    the clinic answered with 400, and nothing typed was logged."""
    others = [url for url in visit.requests if not url.startswith(clinic.base + "/")]
    assert visit.requests
    assert others == [], f"requests to other hosts: {others}"
    answered_400 = [e for e in visit.errors if "status of 400" in e]
    assert len(answered_400) == refused, visit.errors
    unexpected = [e for e in visit.errors if e not in answered_400]
    assert unexpected == [], f"the page reported errors: {unexpected}"
    printed = clinic.text()
    for text in typed:
        assert text not in printed, f"the server printed {text!r}"
    assert "/api/" not in printed, "the server logged a request"


def test_a_clinician_ranks_diseases_from_english_terms(
    clinic: ClinicProcess, visit: Visit, tmp_path: Path
) -> None:
    page = visit.page
    assert "not a medical device" in page.inner_text("#notice")
    assert "Diagnosis or treatment decisions without a clinician" in page.inner_text("#notice")
    page.fill("#search", "seizure")
    first = page.locator("#results li").first
    first.wait_for()
    assert first.get_attribute("data-id") == SEIZURE
    assert "癫痫发作" in first.inner_text()
    first.locator("button.observe").click()
    add(page, "global developmental delay", GDD, "observed")
    add(page, "hypotonia", HYPOTONIA, "observed")
    add(page, "HP:0000252", MICROCEPHALY, "excluded")
    assert "全面发育迟缓" in page.inner_text("#observed")
    screenshot(page, tmp_path / "screenshots", "clinic-findings.png")

    page.click("#rank")
    page.locator(".candidate").first.wait_for()
    candidates = page.locator(".candidate")
    assert candidates.count() == 10
    head = candidates.first.inner_text()
    assert re.search(r"OMIM:\d+", head)
    assert re.search(r"\d+\.\d%", head)
    percents = [
        float(p.rstrip("%")) for p in page.locator(".candidate .probability").all_inner_texts()
    ]
    assert percents == sorted(percents, reverse=True)
    supporting = page.locator(".evidence.supporting").all_inner_texts()
    against = page.locator(".evidence.against").all_inner_texts()
    assert any("Seizure" in s and "癫痫发作" in s for s in supporting)
    assert against, "no candidate shows a finding against it"
    assert page.locator("#error").is_hidden()
    screenshot(page, tmp_path / "screenshots", "clinic.png")
    only_the_clinic(visit, clinic, ("seizure", "hypotonia", SEIZURE, MICROCEPHALY))


def test_an_unknown_id_is_shown_as_an_error_on_the_page(
    clinic: ClinicProcess, visit: Visit
) -> None:
    page = visit.page
    page.fill("#search", "HP:9999999")
    page.locator("#error:has-text('HP:9999999')").wait_for()
    assert "not in HPO release" in page.inner_text("#error")
    only_the_clinic(visit, clinic, ("HP:9999999",), refused=1)


def test_a_clinician_searches_in_chinese(
    clinic: ClinicProcess, visit: Visit, tmp_path: Path
) -> None:
    page = visit.page
    page.fill("#search", "全面发育迟缓")
    first = page.locator("#results li").first
    first.wait_for()
    assert first.get_attribute("data-id") == GDD
    assert "Global developmental delay" in first.inner_text()
    first.locator("button.observe").click()
    add(page, "肌张力低下", HYPOTONIA, "observed")  # as hospitals write 肌张力减退
    add(page, "癫痫发作", SEIZURE, "excluded")
    page.click("#rank")
    page.locator(".candidate").first.wait_for()
    assert "全面发育迟缓" in page.inner_text("#candidates")
    screenshot(page, tmp_path / "screenshots", "clinic-chinese.png")
    only_the_clinic(visit, clinic, ("全面发育迟缓", "肌张力低下", "癫痫发作", HYPOTONIA))
