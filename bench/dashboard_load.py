"""Load time of the consortium dashboard in a real browser, 12 and 300 hospitals.

What it measures
----------------
A real coordinator service (SQLite store, hash-chained audit log) serves its API and the
dashboard over HTTPS with mutual TLS 1.3 on loopback (the test suite's server helper). Its store
is seeded with one study of ``N`` hospitals and ``R`` closed rounds, each round carrying every
hospital's evaluation counts, and an open round (so
the map draws ``N`` nodes sized by cases and their edges). Most hospitals have polled (through
the service's own ``next_message``) and sent an update; one in seven has done neither.

Timed, for each ``N``: headless Chromium (Debian's, driven by Playwright, with the operator's
client certificate) opens ``/dashboard`` in a fresh page, from ``goto`` until the map holds all
``N`` nodes and the page says it updated (first data drawn); and the data route alone
(``GET /v1/dashboard`` with httpx, the same TLS), with its size. Medians of ``--repeat`` runs,
after one warm-up. ``--screenshots DIR`` saves each map (the README's 300-hospital map is one).

Run from the repository root: ``python bench/dashboard_load.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.coordinator_https import provision, serving  # noqa: E402

from alliance.coordinator.rounds import RoundRecord  # noqa: E402
from alliance.protocol.study import StudySpec  # noqa: E402
from alliance.store.state import StoredEvent, StudyRecord, StudyStatus, UpdateMeta  # noqa: E402
from alliance.web.dashboard_app import add_dashboard  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PROVINCES = ("bj", "sh", "gd", "sc", "zj", "js", "hb", "hn", "sd", "fj", "ln", "yn")


def study_text(sites: list[str], rounds: int) -> str:
    listed = ", ".join(f'"{s}"' for s in sites)
    return f"""[study]
id = "load"
title = "Dashboard load ({len(sites)} hospitals)"
rounds = {rounds + 1}
sites = [{listed}]
quorum = 2

[model]
kind = "phenotype-ranker"
dim = 8
"""


def seed(service: Any, sites: list[str], rounds: int, rng: random.Random) -> None:
    """One study of ``sites`` with ``rounds`` closed rounds and an open one with all updates."""
    store, text = service.store, study_text(sites, rounds)
    spec, now = StudySpec.parse(text), time.time()
    store.add_study(StudyRecord("load", text, spec.hash, "operator", StudyStatus.RUNNING, now))
    weights = {"w": np.zeros(3, np.float32)}
    store.save_initial_model("load", weights, {})
    cases = {s: rng.choice([rng.randint(1, 4), rng.randint(20, 600)]) for s in sites}
    for r in range(1, rounds + 1):
        store.open_round("load", r, model_version=r - 1, participants=sites, deadline=0)
        metrics = {}
        for s in sites:
            n = float(max(cases[s] // 4, 1))
            hits = [min(n, round(n * min(1.0, 0.1 + 0.5 * r / rounds * f))) for f in (1, 2, 3)]
            metrics[s] = {"eval_n": n, "eval_top1": hits[0], "eval_top3": hits[1]}
            metrics[s]["eval_top10"] = hits[2]
        record = RoundRecord(r, r, tuple(sites), sum(cases.values()), 1.0 / r, metrics)
        store.close_round(
            "load", r, new_version=r, weights=weights, strategy_state={}, summary=record.to_json()
        )
        store.add_event(StoredEvent("load", now, "round_closed", f"round {r} closed"))
    store.open_round("load", rounds + 1, model_version=rounds, participants=sites, deadline=now)
    for i, s in enumerate(sites):
        if i % 7:  # one in seven has not polled, and sent nothing
            service.next_message(s, 0.0)
            meta = UpdateMeta(s, f"n-{s}", "0" * 64, cases[s], {}, rounds)
            store.add_update("load", rounds + 1, meta, weights)


def measure(n: int, rounds: int, repeat: int, shots: Path | None) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    rng = random.Random(n)
    sites = [f"{PROVINCES[i % len(PROVINCES)]}-hospital-{i + 1:03d}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        provision(root, [], ("operator",))
        with serving(root, pages=add_dashboard) as running:
            seed(running.service, sites, rounds, rng)
            with running.client("operator") as client:
                client.get("/v1/dashboard")  # warm-up
                api, size = [], 0
                for _ in range(repeat):
                    started = time.perf_counter()
                    response = client.get("/v1/dashboard")
                    api.append(time.perf_counter() - started)
                    size = len(response.content)
            folder = root / "operator"
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM)
                context = browser.new_context(
                    viewport={"width": 1280, "height": 900},
                    ignore_https_errors=True,
                    client_certificates=[
                        {
                            "origin": running.url,
                            "certPath": str(folder / "party.crt"),
                            "keyPath": str(folder / "party.key"),
                        }
                    ],
                )
                page_times = []
                for attempt in range(repeat + 1):
                    page = context.new_page()
                    started = time.perf_counter()
                    page.goto(running.url + "/dashboard")
                    page.wait_for_selector("#updated:has-text('updated')", timeout=60_000)
                    page.wait_for_function(
                        f"document.querySelectorAll('#map g.node').length === {n}"
                    )
                    if attempt:  # the first is a warm-up
                        page_times.append(time.perf_counter() - started)
                    if shots is not None and attempt == repeat:
                        shots.mkdir(parents=True, exist_ok=True)
                        page.locator("#network").screenshot(path=str(shots / f"dashboard-{n}.png"))
                    page.close()
                browser.close()
    return {
        "hospitals": n,
        "rounds": rounds,
        "page_load_s": statistics.median(page_times),
        "data_route_s": statistics.median(api),
        "data_bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hospitals", type=int, nargs="+", default=[12, 300])
    parser.add_argument("--rounds", type=int, nargs="+", default=[50, 10])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--screenshots", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    rows = [
        measure(n, r, args.repeat, args.screenshots)
        for n, r in zip(args.hospitals, args.rounds, strict=True)
    ]
    print(f"{'hospitals':>9} {'rounds':>6} {'page load (s)':>14} {'data route (s)':>15} {'KiB':>8}")
    for row in rows:
        print(
            f"{row['hospitals']:>9} {row['rounds']:>6} {row['page_load_s']:>14.3f} "
            f"{row['data_route_s']:>15.3f} {row['data_bytes'] / 1024:>8.1f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dashboard_load.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
