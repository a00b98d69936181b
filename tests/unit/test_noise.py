"""SecureGaussian: the distribution, the key, determinism and the edges of the transform."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from alliance.core.errors import ConfigError
from alliance.privacy import noise as noise_module
from alliance.privacy.noise import SecureGaussian

KEY = bytes(range(32))


def test_samples_are_normal_with_the_requested_std() -> None:
    std = 2.5
    x = SecureGaussian(KEY).sample(200_000, std=std)
    assert x.dtype == torch.float32
    assert x.shape == (200_000,)
    z = x.double().numpy() / std
    n = len(z)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_a_uniform_source_would_fail_the_same_ks_test() -> None:
    """The KS test above can fail: a wrong distribution of the same variance is rejected."""
    z = SecureGaussian(KEY).sample(200_000, std=1.0).double().numpy()
    uniform = (stats.norm.cdf(z) - 0.5) * math.sqrt(12)
    assert stats.kstest(uniform, "norm").pvalue < 1e-6


def test_the_pairs_of_box_muller_are_independent() -> None:
    """Normals from one pair (cos and sin halves of a chunk) are uncorrelated, also in square."""
    z = SecureGaussian(KEY).sample(2 * 65_536, std=1.0).double().numpy()
    first, second = z[:65_536][:32_768], z[:65_536][32_768:]
    assert abs(np.corrcoef(first, second)[0, 1]) < 5 / math.sqrt(32_768)
    assert abs(np.corrcoef(first**2, second**2)[0, 1]) < 5 / math.sqrt(32_768)


def test_a_fixed_key_replays_the_same_requests() -> None:
    a, b = SecureGaussian(KEY), SecureGaussian(KEY)
    for source in (a, b):
        source.sample(10, std=1.0)
    assert torch.equal(a.sample((3, 7), std=0.5), b.sample((3, 7), std=0.5))
    assert torch.equal(a.bernoulli_mask(1000, p=0.3), b.bernoulli_mask(1000, p=0.3))


def test_every_request_gets_fresh_randomness() -> None:
    source = SecureGaussian(KEY)
    first, second = source.sample(1000, std=1.0), source.sample(1000, std=1.0)
    assert not torch.equal(first, second)
    long = source.sample(3 * 65_536 + 3, std=1.0)  # several keystream chunks, odd size
    chunks = long[: 3 * 65_536].view(3, 65_536)
    assert not torch.equal(chunks[0], chunks[1])
    assert not torch.equal(chunks[1], chunks[2])
    # float32 rounding makes a few hundred ties expected; a repeated chunk would make 65,536.
    assert len(torch.unique(long)) > 0.99 * len(long)


def test_different_keys_give_different_streams() -> None:
    assert not torch.equal(
        SecureGaussian(KEY).sample(100, std=1.0),
        SecureGaussian(bytes(32)).sample(100, std=1.0),
    )
    assert not torch.equal(
        SecureGaussian().sample(100, std=1.0), SecureGaussian().sample(100, std=1.0)
    )


def test_sampling_does_not_touch_torch_generators() -> None:
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    SecureGaussian().sample(1000, std=1.0)
    SecureGaussian().bernoulli_mask(1000, p=0.5)
    assert torch.equal(torch.rand(4), expected)


def test_extreme_words_give_finite_normals() -> None:
    """All-zero and all-one keystream words are the ends of (0, 1]: log stays finite."""
    words = np.array([0, 0, 2**64 - 1, 2**64 - 1, 0, 2**64 - 1], dtype=np.uint64)
    z = noise_module._normals(words)
    assert np.isfinite(z).all()
    assert np.abs(z).max() == pytest.approx(math.sqrt(-2 * math.log(2.0**-53)))
    # u1 = 2^-53 (largest radius) with u2 = 1 (angle 2π): r·cos(2π) = r.
    assert z[0] == pytest.approx(math.sqrt(-2 * math.log(2.0**-53)))


@pytest.mark.parametrize("std", [0.0, 1e-30, 1e-6, 1.0, 1e30, 3e37])
def test_extreme_stds_give_finite_float32(std: float) -> None:
    x = SecureGaussian(KEY).sample(10_000, std=std)
    assert torch.isfinite(x).all()
    if std == 0.0:
        assert not x.any()
    else:
        assert x.double().abs().max() <= std * 8.58
        assert x.double().std() > 0


@pytest.mark.parametrize("std", [-1.0, math.nan, math.inf, 1e38])
def test_bad_stds_are_refused(std: float) -> None:
    with pytest.raises(ConfigError, match="std"):
        SecureGaussian(KEY).sample(10, std=std)


def test_bernoulli_mask_has_the_requested_rate() -> None:
    source = SecureGaussian(KEY)
    n, p = 100_000, 0.03
    mask = source.bernoulli_mask(n, p=p)
    assert mask.dtype == torch.bool
    assert mask.shape == (n,)
    assert stats.binomtest(int(mask.sum()), n, p).pvalue > 1e-3
    assert not source.bernoulli_mask(1000, p=0.0).any()
    assert source.bernoulli_mask(1000, p=1.0).all()
    assert source.bernoulli_mask(0, p=0.5).shape == (0,)


@pytest.mark.parametrize("p", [-0.1, 1.1, math.nan])
def test_bad_probabilities_are_refused(p: float) -> None:
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        SecureGaussian(KEY).bernoulli_mask(10, p=p)


def test_keys_must_be_32_bytes_and_never_shown() -> None:
    with pytest.raises(ConfigError, match="32 bytes, got 16 bytes"):
        SecureGaussian(bytes(16))
    assert KEY.hex() not in repr(SecureGaussian(KEY))


def test_shapes() -> None:
    source = SecureGaussian(KEY)
    assert source.sample((2, 0, 3), std=1.0).shape == (2, 0, 3)
    assert source.sample(7, std=1.0).shape == (7,)
    with pytest.raises(ConfigError, match=">= 0"):
        source.sample((2, -1), std=1.0)
