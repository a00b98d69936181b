"""The accountant against published figures, the exact Gaussian, and its own invariants."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant

from alliance.core.errors import ConfigError
from alliance.privacy import accountant
from alliance.privacy.accountant import (
    PLD_DISCRETIZATION,
    EpsilonSource,
    SampledGaussian,
    analytic_gaussian_epsilon,
    calibrate_noise,
    epsilon,
    epsilon_pld,
    epsilon_rdp,
)

DELTA = 1e-5
ABADI = SampledGaussian(sample_rate=0.01, noise_multiplier=4.0, steps=10_000)


def test_rdp_matches_abadi_et_al() -> None:
    assert epsilon_rdp([ABADI], delta=DELTA) == pytest.approx(1.0355, abs=5e-4)


def test_pld_matches_reference() -> None:
    assert epsilon_pld([ABADI], delta=DELTA) == pytest.approx(0.9470, abs=5e-4)


def test_full_participation_is_the_exact_analytic_gaussian() -> None:
    exact = analytic_gaussian_epsilon(noise_multiplier=10.0, steps=100, delta=DELTA)
    assert exact == pytest.approx(4.37718, abs=5e-6)
    # An independent implementation of the same formula.
    assert exact == pytest.approx(dp_accounting.get_epsilon_gaussian(1.0, DELTA), abs=1e-9)
    pld = epsilon_pld(SampledGaussian(1.0, 10.0, 100), delta=DELTA)
    assert abs(pld - exact) <= 1e-6
    assert pld >= exact - 1e-9, "the pessimistic PLD must not under-report"


def test_epsilon_reports_pld_and_carries_both() -> None:
    eps = epsilon([ABADI], delta=DELTA)
    assert eps.source is EpsilonSource.PLD
    assert eps.note == ""
    assert eps.epsilon == eps.pld == epsilon_pld([ABADI], delta=DELTA)
    assert eps.rdp == epsilon_rdp([ABADI], delta=DELTA)
    assert eps.delta == DELTA


GRID = [
    SampledGaussian(q, sigma, steps)
    for q in (0.001, 0.02, 0.3)
    for sigma in (0.8, 2.0, 8.0)
    for steps in (1, 200)
] + [SampledGaussian(1.0, sigma, steps) for sigma in (2.0, 8.0, 30.0) for steps in (1, 20)]


@pytest.mark.parametrize("event", GRID, ids=str)
def test_pld_is_tighter_than_rdp(event: SampledGaussian) -> None:
    pld, rdp = epsilon_pld(event, delta=DELTA), epsilon_rdp(event, delta=DELTA)
    assert 0.0 <= pld <= rdp


def test_monotone_in_steps_rate_and_noise() -> None:
    by_steps = [epsilon_pld(SampledGaussian(0.05, 1.5, k), delta=DELTA) for k in (1, 10, 100, 1000)]
    by_rate = [epsilon_pld(SampledGaussian(q, 3.0, 10), delta=DELTA) for q in (0.01, 0.05, 0.2, 1)]
    by_noise = [epsilon_pld(SampledGaussian(0.05, s, 100), delta=DELTA) for s in (0.7, 1, 2, 5)]
    assert all(a < b for a, b in itertools.pairwise(by_steps))
    assert all(a < b for a, b in itertools.pairwise(by_rate))
    assert all(a > b for a, b in itertools.pairwise(by_noise))


def test_two_events_compose_like_one_with_the_summed_steps() -> None:
    a, b = SampledGaussian(0.05, 1.5, 300), SampledGaussian(0.05, 1.5, 700)
    whole = SampledGaussian(0.05, 1.5, 1000)
    assert epsilon_pld([a, b], delta=DELTA) == epsilon_pld(whole, delta=DELTA)
    assert epsilon_rdp([a, b], delta=DELTA) == pytest.approx(epsilon_rdp(whole, delta=DELTA))
    # The same composition done by dp-accounting itself, event by event.
    direct = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for e in (a, b):
        direct.compose(
            dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(1.5)),
            e.steps,
        )
    assert epsilon_pld([a, b], delta=DELTA) == pytest.approx(direct.get_epsilon(DELTA), abs=1e-3)


def test_heterogeneous_composition_is_order_free_and_grows() -> None:
    events = [SampledGaussian(0.01, 1.1, 500), SampledGaussian(0.1, 3.0, 50), ABADI]
    total = epsilon_pld(events, delta=DELTA)
    assert total == epsilon_pld(list(reversed(events)), delta=DELTA)
    assert total > max(epsilon_pld(e, delta=DELTA) for e in events)
    assert total <= epsilon_rdp(events, delta=DELTA)


def test_full_participation_events_with_different_noise_merge_exactly() -> None:
    events = [SampledGaussian(1.0, 5.0, 10), SampledGaussian(1.0, 20.0, 40)]
    sigma = 1.0 / math.sqrt(10 / 5.0**2 + 40 / 20.0**2)
    exact = analytic_gaussian_epsilon(noise_multiplier=sigma, steps=1, delta=DELTA)
    assert epsilon_pld(events, delta=DELTA) == pytest.approx(exact, abs=1e-6)


def test_nothing_released_costs_nothing_and_no_noise_costs_everything() -> None:
    assert epsilon_pld([], delta=DELTA) == 0.0
    idle = [SampledGaussian(0.0, 1.0, 10), SampledGaussian(0.5, 1.0, 0)]
    assert epsilon(idle, delta=DELTA).epsilon == 0.0
    assert epsilon_pld(SampledGaussian(0.1, 0.0, 1), delta=DELTA) == math.inf
    assert epsilon(SampledGaussian(0.1, 0.0, 1), delta=DELTA).epsilon == math.inf


@pytest.mark.parametrize(
    ("target", "rate", "steps"), [(1.0, 0.01, 10_000), (2.0, 0.1, 500), (8.0, 1.0, 1)]
)
def test_calibrate_noise_round_trips(target: float, rate: float, steps: int) -> None:
    sigma = calibrate_noise(target_epsilon=target, delta=DELTA, sample_rate=rate, steps=steps)
    assert epsilon_pld(SampledGaussian(rate, sigma, steps), delta=DELTA) <= target
    assert epsilon_pld(SampledGaussian(rate, 0.98 * sigma, steps), delta=DELTA) > target


def test_calibrate_noise_names_an_unreachable_target() -> None:
    with pytest.raises(ConfigError, match=r"unreachable.*fewer rounds"):
        calibrate_noise(target_epsilon=0.01, delta=DELTA, sample_rate=1.0, steps=1_000_000)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SampledGaussian(1.5, 1.0, 1),
        lambda: SampledGaussian(0.1, -1.0, 1),
        lambda: SampledGaussian(0.1, math.nan, 1),
        lambda: SampledGaussian(0.1, 1.0, -1),
        lambda: epsilon_pld(ABADI, delta=0.0),
        lambda: epsilon_rdp(ABADI, delta=1.0),
        lambda: calibrate_noise(target_epsilon=-1.0, delta=DELTA, sample_rate=0.1, steps=10),
        lambda: analytic_gaussian_epsilon(noise_multiplier=0.0, steps=1, delta=DELTA),
    ],
)
def test_bad_arguments_are_config_errors(make: object) -> None:
    with pytest.raises(ConfigError):
        make()  # type: ignore[operator]


def test_cross_check_never_under_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    rdp = epsilon_rdp([ABADI], delta=DELTA)
    monkeypatch.setattr(accountant, "_pld_cached", lambda *args: rdp + 0.5)
    high = epsilon([ABADI], delta=DELTA)
    assert high.epsilon == rdp + 0.5
    assert high.source is EpsilonSource.PLD
    assert "exceeds RDP" in high.note
    monkeypatch.setattr(accountant, "_pld_cached", lambda *args: math.nan)
    nan = epsilon([ABADI], delta=DELTA)
    assert nan.epsilon == rdp
    assert nan.source is EpsilonSource.RDP
    assert "NaN" in nan.note
