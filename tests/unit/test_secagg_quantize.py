"""Quantiser of alliance.secagg: modulus sizing, bounds, clipping, weighted decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alliance.core.errors import ConfigError, DataError, IntegrityError
from alliance.secagg import MAX_MODULUS_BITS, Quantizer


def modular_total(q: Quantizer, vectors: list[np.ndarray]) -> np.ndarray:
    """Sum encodings the way secure aggregation does: wrap-around, then reduce."""
    total = np.zeros_like(vectors[0])
    for v in vectors:
        np.add(total, v, out=total)
    return total & q.dtype((1 << q.modulus_bits) - 1)


@pytest.mark.parametrize(
    ("value_bits", "max_sites", "max_weight", "bits", "dtype"),
    [
        (16, 12, 1, 16 + 4 + 1, np.uint32),
        (8, 1, 1, 8 + 0 + 1, np.uint32),
        (16, 2, 2**14, 16 + 15 + 1, np.uint32),
        (16, 3, 2**14, 16 + 16 + 1, np.uint64),
        (20, 12, 65536, 20 + 20 + 1, np.uint64),
        (41, 1, 2**20, 62, np.uint64),
    ],
)
def test_modulus_is_sized_for_the_worst_sum(
    value_bits: int, max_sites: int, max_weight: int, bits: int, dtype: type
) -> None:
    q = Quantizer(clip_range=1.0, value_bits=value_bits, max_sites=max_sites, max_weight=max_weight)
    assert q.modulus_bits == bits
    assert q.dtype is dtype


def test_a_modulus_above_62_bits_is_a_config_error_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"63-bit modulus.*lower value_bits"):
        Quantizer(clip_range=1.0, value_bits=42, max_sites=1, max_weight=2**20)
    with pytest.raises(ConfigError, match=str(MAX_MODULUS_BITS)):
        Quantizer(clip_range=1.0, value_bits=20, max_sites=12, max_weight=2**40)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_range": 0.0, "max_sites": 3},
        {"clip_range": float("nan"), "max_sites": 3},
        {"clip_range": float("inf"), "max_sites": 3},
        {"clip_range": 1.0, "max_sites": 0},
        {"clip_range": 1.0, "max_sites": 3, "value_bits": 1},
        {"clip_range": 1.0, "max_sites": 3, "max_weight": 0},
        {"clip_range": 1.0, "max_sites": 3, "value_bits": 16.0},
    ],
)
def test_invalid_parameters_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Quantizer(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("max_sites", "max_weight"), [(2, 2**14), (12, 65536), (5, 1)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_largest_possible_sum_does_not_wrap(
    max_sites: int, max_weight: int, sign: float
) -> None:
    q = Quantizer(clip_range=2.0, value_bits=16, max_sites=max_sites, max_weight=max_weight)
    x = np.full(4, sign * 5.0, dtype=np.float32)  # clipped to ±2
    vectors = [q.encode(x, weight=max_weight).values for _ in range(max_sites)]
    mean = q.decode_sum(modular_total(q, vectors), total_weight=max_sites * max_weight)
    assert np.all(mean == np.float32(sign * 2.0))


def test_encode_reports_clipped_coordinates_and_unpacks() -> None:
    q = Quantizer(clip_range=1.0, value_bits=12, max_sites=3)
    values, clipped = q.encode(np.array([0.5, 1.0, 1.5, -1.0, -3.0, 0.0], np.float32), weight=1)
    assert clipped == 2
    assert values.dtype == np.uint32
    assert values.shape == (6,)
    assert np.all(values < (1 << q.modulus_bits))


def test_rounding_is_deterministic_ties_to_even() -> None:
    # levels 255 over 255/256: one step is exactly 1/256, so these inputs are exact ties.
    q = Quantizer(clip_range=255 / 256, value_bits=9, max_sites=1)
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5], np.float32) / np.float32(256)
    values, _ = q.encode(x, weight=1)
    signed = [
        v if v < (1 << (q.modulus_bits - 1)) else v - (1 << q.modulus_bits) for v in values.tolist()
    ]
    assert signed == [0, 2, 2, 0, -2]
    assert np.array_equal(q.encode(x, weight=1).values, values)


def test_weight_multiplies_in_the_integer_domain() -> None:
    q = Quantizer(clip_range=1.0, value_bits=8, max_sites=2, max_weight=100)
    one = q.encode(np.array([0.25, -0.75], np.float32), weight=1).values.astype(np.int64)
    seven = q.encode(np.array([0.25, -0.75], np.float32), weight=7).values.astype(np.int64)
    assert np.array_equal(seven, (one * 7) % (1 << q.modulus_bits))


@pytest.mark.parametrize("weight", [0, -1, 101, True])
def test_weight_outside_range_is_refused(weight: int) -> None:
    q = Quantizer(clip_range=1.0, value_bits=8, max_sites=2, max_weight=100)
    with pytest.raises(ConfigError, match="weight"):
        q.encode(np.zeros(3, np.float32), weight=weight)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_updates_are_data_errors_naming_the_index(bad: float) -> None:
    q = Quantizer(clip_range=1.0, max_sites=2)
    x = np.zeros(5, np.float32)
    x[3] = bad
    with pytest.raises(DataError, match="index 3"):
        q.encode(x, weight=1)


def test_only_flat_float_arrays_are_encoded() -> None:
    q = Quantizer(clip_range=1.0, max_sites=2)
    with pytest.raises(DataError, match="flat float"):
        q.encode(np.zeros((2, 2), np.float32), weight=1)
    with pytest.raises(DataError, match="flat float"):
        q.encode(np.zeros(4, np.int32), weight=1)  # type: ignore[arg-type]


def test_decode_refuses_values_that_no_honest_sum_could_hold() -> None:
    q = Quantizer(clip_range=1.0, value_bits=8, max_sites=4, max_weight=2)
    good = q.encode(np.array([0.5], np.float32), weight=2).values
    assert q.decode_sum(good, total_weight=2)[0] == pytest.approx(0.5, abs=q.error_bound())
    with pytest.raises(IntegrityError, match="total weight"):
        q.decode_sum(good, total_weight=0)
    with pytest.raises(IntegrityError, match="total weight"):
        q.decode_sum(good, total_weight=9)
    with pytest.raises(IntegrityError, match="reduced"):
        q.decode_sum(np.array([1 << q.modulus_bits], np.uint32), total_weight=1)
    # Half the modulus is a sum no set of sites with total weight 1 can reach.
    with pytest.raises(IntegrityError, match="wrapped"):
        q.decode_sum(np.array([1 << (q.modulus_bits - 2)], np.uint32), total_weight=1)


def test_error_bound_is_half_a_step_plus_float32_rounding() -> None:
    q = Quantizer(clip_range=1.0, value_bits=16, max_sites=2)
    step = 1 / q.scale
    assert step / 2 < q.error_bound() < step / 2 + 1e-6
    # The bound is reached up to float32 rounding: a value half a step off the grid.
    x = np.array([0.5 * step * 0.999999], np.float32)
    decoded = q.decode_sum(q.encode(x, weight=1).values, total_weight=1)
    assert abs(float(decoded[0]) - float(x[0])) > 0.49 * step


@settings(max_examples=300, deadline=None)
@given(
    value_bits=st.integers(2, 24),
    clip_range=st.floats(1e-3, 1e3),
    data=st.data(),
)
def test_decoded_sum_is_the_weighted_mean_of_clipped_inputs_within_the_bound(
    value_bits: int, clip_range: float, data: st.DataObject
) -> None:
    n_sites = data.draw(st.integers(1, 12))
    max_weight = data.draw(st.integers(1, 1000))
    q = Quantizer(
        clip_range=clip_range, value_bits=value_bits, max_sites=n_sites, max_weight=max_weight
    )
    length = data.draw(st.integers(1, 16))
    wide = float(np.float32(4 * clip_range))
    elements = st.floats(-wide, wide, width=32)
    xs = [data.draw(hnp.arrays(np.float32, length, elements=elements)) for _ in range(n_sites)]
    ws = [data.draw(st.integers(1, max_weight)) for _ in range(n_sites)]
    vectors = [q.encode(x, weight=w).values for x, w in zip(xs, ws, strict=True)]
    mean = q.decode_sum(modular_total(q, vectors), total_weight=sum(ws))
    clipped = [np.clip(x.astype(np.float64), -clip_range, clip_range) for x in xs]
    exact = sum(w * c for w, c in zip(ws, clipped, strict=True)) / sum(ws)
    assert mean.dtype == np.float32
    assert np.max(np.abs(mean.astype(np.float64) - exact)) <= q.error_bound()


def test_the_32_bit_fast_path_agrees_with_the_64_bit_encoding_within_one_step() -> None:
    q = Quantizer(clip_range=1.0, value_bits=15, max_sites=12, max_weight=4096)
    assert q.modulus_bits == 32
    assert q.dtype is np.uint32
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(200_000) * 0.3).astype(np.float32)
    x[:4] = [1.5, -1.5, 1.0, -1.0]
    fast, clipped_fast = q.encode(x, weight=4096)  # float32 input: the fast path
    slow, clipped_slow = q.encode(x.astype(np.float64), weight=4096)
    assert clipped_fast == clipped_slow == int(np.count_nonzero(np.abs(x) > 1.0))
    assert fast.dtype == slow.dtype == np.uint32
    # Signed difference in steps of the weighted value: 0, or one step on a rare rounding tie.
    diff = (fast.astype(np.int64) - slow.astype(np.int64) + 2**31) % 2**32 - 2**31
    assert set(np.unique(diff).tolist()) <= {-4096, 0, 4096}
    assert np.count_nonzero(diff) < 0.001 * x.size
    decoded = q.decode_sum(fast, total_weight=4096)
    assert np.abs(decoded - np.clip(x, -1.0, 1.0)).max() <= q.error_bound()
