"""Monte-Carlo audit of DP-SGD's noise step (Jagielski et al. 2020; Nasr et al. 2021).

Neighbouring datasets: ``D``, and ``D'`` = ``D`` plus one patient whose clipped gradient ``g``
has norm ``C``. The noise step releases the sum of clipped gradients plus
:class:`~alliance.privacy.noise.SecureGaussian` noise of standard deviation ``σC`` in every
coordinate, in float32 as DP-SGD does. It is run ``RUNS`` times on each dataset.

Distinguisher: the projection of (output − sum over ``D``) on ``g/C``, thresholded. For two
Gaussians with equal covariance this is the likelihood-ratio test, the most powerful test
there is, so a correct mechanism's bound is approached as closely as the sample size allows.

Empirical lower bound. If the mechanism is (ε, δ)-DP, every test of ``D`` against ``D'``
with false-positive rate FPR (says ``D'`` on ``D``) and false-negative rate FNR satisfies
``FPR + e^ε FNR ≥ 1 − δ`` and ``FNR + e^ε FPR ≥ 1 − δ`` (Kairouz et al. 2015), hence

    ε ≥ max( log((1 − δ − FNR) / FPR),  log((1 − δ − FPR) / FNR) ).

FPR and FNR are replaced by their one-sided Clopper–Pearson upper bounds at level 1 − α/2
each, so the bound holds with probability ≥ 1 − α (α = 0.05). The threshold is chosen on one
half of the runs and the bound computed on the other half, so picking the best threshold does
not bias it. The audit therefore never claims more leakage than there is, with 95 %
confidence; and the test that can fail halves the noise while keeping the claimed ε.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import beta

from alliance.privacy.accountant import SampledGaussian, epsilon_pld
from alliance.privacy.noise import SecureGaussian

DELTA = 1e-5
SIGMA = 2.0  # claimed ε(δ = 1e-5) of one full-participation step ≈ 1.99
CLIP = 0.7
DIM = 4
RUNS = 400_000  # per dataset: half choose the threshold, half bound ε
ALPHA = 0.05

Array = npt.NDArray[np.float64]


def clopper_pearson_upper(failures: npt.ArrayLike, trials: int, level: float) -> Array:
    """One-sided upper confidence bound at ``level`` on a binomial rate."""
    k = np.asarray(failures, dtype=np.float64)
    upper = beta.ppf(level, k + 1, np.maximum(trials - k, 1))
    return np.where(k >= trials, 1.0, upper)


def epsilon_bounds(z_d: Array, z_d1: Array, thresholds: Array) -> Array:
    """The (ε, δ)-DP lower bound on ε of each threshold test, with Clopper–Pearson bounds."""
    n = len(z_d)
    false_pos = n - np.searchsorted(np.sort(z_d), thresholds, side="right")  # D says > t
    false_neg = np.searchsorted(np.sort(z_d1), thresholds, side="right")  # D' says <= t
    fpr = clopper_pearson_upper(false_pos, n, 1 - ALPHA / 2)
    fnr = clopper_pearson_upper(false_neg, len(z_d1), 1 - ALPHA / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        upper_tail = np.log(np.clip(1 - DELTA - fnr, 0, None) / fpr)
        lower_tail = np.log(np.clip(1 - DELTA - fpr, 0, None) / fnr)
    return np.nan_to_num(np.maximum(upper_tail, lower_tail), nan=-np.inf)


def audit(noise_std: float, key: bytes) -> float:
    """Empirical ε lower bound of the noise step with this noise, at 95 % confidence."""
    sampler = SecureGaussian(key)
    rng = np.random.default_rng(7)  # only the non-private parts: the other patients' sum, g
    others = rng.normal(size=DIM).astype(np.float32)
    direction = rng.normal(size=DIM)
    direction /= np.linalg.norm(direction)
    g = (CLIP * direction).astype(np.float32)
    out_d = others + sampler.sample((RUNS, DIM), std=noise_std).numpy()
    out_d1 = (others + g) + sampler.sample((RUNS, DIM), std=noise_std).numpy()
    z_d = (out_d.astype(np.float64) - others) @ direction
    z_d1 = (out_d1.astype(np.float64) - others) @ direction
    half = RUNS // 2
    candidates = np.linspace(-6 * noise_std, 6 * noise_std + CLIP, 2001)
    chosen = candidates[np.argmax(epsilon_bounds(z_d[:half], z_d1[:half], candidates))]
    return float(epsilon_bounds(z_d[half:], z_d1[half:], np.array([chosen]))[0])


@pytest.fixture(scope="module")
def claimed() -> float:
    return epsilon_pld(
        SampledGaussian(sample_rate=1.0, noise_multiplier=SIGMA, steps=1), delta=DELTA
    )


def test_the_honest_noise_step_leaks_no_more_than_claimed(claimed: float) -> None:
    lower = audit(SIGMA * CLIP, key=bytes(range(32)))
    assert lower < claimed
    assert lower > 0.5 * claimed, "the audit has lost its power; it would not catch a bug"


def test_the_audit_catches_halved_noise(claimed: float) -> None:
    lower = audit(SIGMA * CLIP / 2, key=bytes(range(1, 33)))
    assert lower > claimed


def test_clopper_pearson_is_conservative() -> None:
    assert clopper_pearson_upper(np.array([0.0]), 1000, 0.975)[0] == pytest.approx(
        1 - 0.025 ** (1 / 1000)
    )
    assert clopper_pearson_upper(np.array([50.0]), 1000, 0.975)[0] > 0.05
    assert math.isclose(clopper_pearson_upper(np.array([1000.0]), 1000, 0.975)[0], 1.0)
