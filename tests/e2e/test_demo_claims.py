"""The demo's promises, checked on the embedded default run (about 2–3 minutes on 2 cores).

Federated top-10 on the union of all hospitals' test sets must be at least 15 points above the
best single hospital's own model and within 3 points of pooled training; a disease seen at one
hospital must become diagnosable at the others.
"""

from __future__ import annotations

import pytest

from alliance.sim.demo import DemoConfig, DemoResult, run_demo


@pytest.fixture(scope="module")
def demo() -> DemoResult:
    return run_demo(DemoConfig())


@pytest.mark.slow
def test_federated_beats_every_single_hospital_by_15_points(demo: DemoResult) -> None:
    overall = demo.metrics["overall"]
    fed = overall["federated"]["top10"]
    for site, scores in demo.metrics["local_on_union"].items():
        assert fed >= scores["top10"] + 0.15, site
    assert fed >= overall["local_best"]["top10"] + 0.15


@pytest.mark.slow
def test_federated_is_within_3_points_of_pooled(demo: DemoResult) -> None:
    overall = demo.metrics["overall"]
    assert overall["federated"]["top10"] >= overall["pooled"]["top10"] - 0.03


@pytest.mark.slow
def test_a_disease_seen_at_one_hospital_becomes_diagnosable_elsewhere(demo: DemoResult) -> None:
    single = demo.metrics["single_site_diseases"]
    assert single["federated"]["n"] >= 20
    assert single["federated"]["top10"] >= single["local_elsewhere"]["top10"] + 0.25


@pytest.mark.slow
def test_the_demo_consortium_is_realistically_unequal(demo: DemoResult) -> None:
    sizes = sorted(s["n_train"] + s["n_test"] for s in demo.metrics["sites"])
    assert len(sizes) == 12
    assert sizes[0] < 100
    assert sizes[-1] > 1000
    assert any("Xinjiang" in s["name"] for s in demo.metrics["sites"])
