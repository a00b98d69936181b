"""The personalised models' promise on a small demo (a seventh of the hospitals' size, 3
rounds; about 2 minutes on 2 busy cores): no hospital is worse off with its chosen model.

Stated margin: at top-1 and top-10, the better of the hospital's own and the federated model
lies inside the 99 % Wilson interval of the chosen model's accuracy on the hospital's held-out
cases (the smallest hospitals have 3 to 12 of them here), and over all hospitals together the
chosen models get at least as many cases right as the better of the two did at each hospital.
"""

from __future__ import annotations

import pytest

from alliance.data.synth import scaled_hospitals
from alliance.models.personal import Personalisation
from alliance.sim.demo import DemoConfig, DemoResult, run_demo
from alliance.sim.demo_personal import wilson_interval

Z99 = 2.575829


@pytest.fixture(scope="module")
def demo() -> DemoResult:
    cfg = DemoConfig(
        rounds=3, hospitals=scaled_hospitals(0.15), personalisation=(Personalisation.MIX,)
    )
    return run_demo(cfg)


def best_of_own_and_federated(own: dict[str, dict[str, float]], k: str) -> float:
    return max(own["local"][k] or 0.0, own["federated"][k] or 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("k", ["top1", "top10"])
def test_no_hospital_is_worse_off_with_its_chosen_model(demo: DemoResult, k: str) -> None:
    m = demo.metrics
    gained = 0.0
    for site, own in m["per_site"].items():
        chosen = m["personalised"][site]["chosen"]
        assert chosen["method"] == "mix"
        best = best_of_own_and_federated(own, k)
        _, high = wilson_interval(chosen[k] or 0.0, chosen["n"], z=Z99)
        assert best <= high, (site, chosen[k], best)
        gained += ((chosen[k] or 0.0) - best) * chosen["n"]
    assert gained >= 0, gained


@pytest.mark.slow
def test_the_choice_is_reported_with_its_validation_scores(demo: DemoResult) -> None:
    for runs in demo.metrics["personalised"].values():
        fit = runs["chosen"]["fit"]
        assert set(fit["setting"]) == {"strength", "drop", "local"}
        assert fit["n_validation"] < fit["n_train"]
        assert set(runs["chosen"]["verdict"].values()) <= {"at least", "within CI", "below"}


@pytest.mark.slow
def test_the_demo_table_shows_every_hospital_with_its_choice(
    demo: DemoResult, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from alliance.cli import personal

    monkeypatch.setattr(personal, "console", Console(width=160))
    personal.print_personalised(demo.metrics)
    out = capsys.readouterr().out
    assert "Personalised models on each hospital's held-out cases" in out
    for site in demo.metrics["sites"]:
        assert site["name"][:20] in out
