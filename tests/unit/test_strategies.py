"""Aggregation strategies against hand-computed results."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alliance.algorithms.strategies import (
    FedAdam,
    FedAvg,
    FedProx,
    SiteUpdate,
    StrategyName,
    make_strategy,
    weighted_mean_delta,
)
from alliance.core.errors import ConfigError, FederationError
from alliance.protocol.messages import TrainingPlan

F32 = np.float32


def weights() -> dict[str, np.ndarray[Any, Any]]:
    return {
        "w": np.array([[0.5, -1.0], [2.0, 0.25]], dtype=F32),
        "b": np.array([0.1, 0.2, -0.3], dtype=F32),
    }


def updates() -> list[SiteUpdate]:
    return [
        SiteUpdate(
            "site-a",
            10,
            {"w": np.array([[0.1, 0.2], [0.3, 0.4]], F32), "b": np.array([1, 0, -1], F32)},
        ),
        SiteUpdate(
            "site-b",
            30,
            {"w": np.array([[-0.2, 0.0], [0.6, 0.1]], F32), "b": np.array([0, 2, 0.5], F32)},
        ),
        SiteUpdate(
            "site-c",
            60,
            {"w": np.array([[0.05, -0.1], [0.0, 0.3]], F32), "b": np.array([-1, 1, 0.25], F32)},
        ),
    ]


def hand_mean() -> dict[str, np.ndarray[Any, Any]]:
    # (10 a + 30 b + 60 c) / 100, written out by hand in float64
    w = np.array(
        [
            [0.1 * 0.1 - 0.2 * 0.3 + 0.05 * 0.6, 0.2 * 0.1 + 0.0 * 0.3 - 0.1 * 0.6],
            [0.3 * 0.1 + 0.6 * 0.3 + 0.0 * 0.6, 0.4 * 0.1 + 0.1 * 0.3 + 0.3 * 0.6],
        ]
    )
    b = np.array([1 * 0.1 + 0 * 0.3 - 1 * 0.6, 0 * 0.1 + 2 * 0.3 + 1 * 0.6, -0.1 + 0.15 + 0.15])
    return {"w": w, "b": b}


def test_weighted_mean_delta_matches_hand_computation() -> None:
    mean = weighted_mean_delta(updates())
    for name, want in hand_mean().items():
        assert mean[name].dtype == np.float64
        np.testing.assert_allclose(mean[name], want, rtol=0, atol=1e-7)


def test_fedavg_is_the_sample_weighted_mean() -> None:
    out = FedAvg().aggregate(weights(), updates())
    for name, want in hand_mean().items():
        assert out[name].dtype == np.float32
        np.testing.assert_allclose(
            out[name], (weights()[name] + want).astype(F32), rtol=0, atol=1e-7
        )


def test_fedavg_server_learning_rate() -> None:
    out = FedAvg(server_lr=0.5).aggregate(weights(), updates())
    for name, want in hand_mean().items():
        expected = (weights()[name] + 0.5 * want).astype(F32)
        np.testing.assert_allclose(out[name], expected, rtol=0, atol=1e-7)


def test_fedavg_does_not_depend_on_update_order() -> None:
    reference = FedAvg().aggregate(weights(), updates())
    for order in itertools.permutations(updates()):
        out = FedAvg().aggregate(weights(), list(order))
        for name in reference:
            # Bit for bit, not just close: summation runs in sorted site order.
            assert out[name].tobytes() == reference[name].tobytes()


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=6),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    shuffle_seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_weighted_mean_is_order_free_and_exact(
    counts: list[int], seed: int, shuffle_seed: int
) -> None:
    rng = np.random.default_rng(seed)
    ups = [
        SiteUpdate(f"site-{i}", n, {"x": rng.normal(size=4).astype(F32)})
        for i, n in enumerate(counts)
    ]
    shuffled = list(ups)
    np.random.default_rng(shuffle_seed).shuffle(shuffled)
    got = weighted_mean_delta(shuffled)["x"]
    assert got.tobytes() == weighted_mean_delta(ups)["x"].tobytes()
    want = sum(n * u.delta["x"].astype(np.float64) for n, u in zip(counts, ups, strict=True))
    np.testing.assert_allclose(got, np.asarray(want) / sum(counts), rtol=0, atol=1e-7)


def test_weighted_mean_delta_of_nothing_is_a_federation_error() -> None:
    with pytest.raises(FederationError, match="no site update to aggregate"):
        weighted_mean_delta([])
    with pytest.raises(FederationError):
        FedAvg().aggregate(weights(), [])


def test_fedprox_sets_proximal_mu_and_aggregates_like_fedavg() -> None:
    plan = TrainingPlan(local_epochs=2, batch_size=8, learning_rate=0.1, seed=5)
    configured = FedProx(mu=0.25).configure(plan)
    assert configured.proximal_mu == 0.25
    assert configured == TrainingPlan(
        local_epochs=2, batch_size=8, learning_rate=0.1, proximal_mu=0.25, seed=5
    )
    assert plan.proximal_mu == 0.0  # the coordinator's plan is left as it was
    assert FedAvg().configure(plan) is plan
    prox = FedProx(mu=0.25).aggregate(weights(), updates())
    avg = FedAvg().aggregate(weights(), updates())
    for name in avg:
        assert prox[name].tobytes() == avg[name].tobytes()


def test_fedadam_first_and_second_step_follow_the_adam_formula() -> None:
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    strategy = FedAdam(server_lr=lr, beta1=b1, beta2=b2, tau=tau)
    assert strategy.configure(TrainingPlan()) == TrainingPlan()
    first = strategy.aggregate(weights(), updates())
    g = hand_mean()
    for name in g:
        m = (1 - b1) * g[name]
        v = (1 - b2) * g[name] ** 2
        want = (weights()[name] + lr * m / (np.sqrt(v) + tau)).astype(F32)
        np.testing.assert_allclose(first[name], want, rtol=0, atol=1e-7)
    # The second step carries the moments of the first.
    second = strategy.aggregate(first, updates())
    for name in g:
        m = b1 * (1 - b1) * g[name] + (1 - b1) * g[name]
        v = b2 * (1 - b2) * g[name] ** 2 + (1 - b2) * g[name] ** 2
        want = (first[name] + lr * m / (np.sqrt(v) + tau)).astype(F32)
        np.testing.assert_allclose(second[name], want, rtol=0, atol=1e-7)


def test_fedadam_instances_do_not_share_state() -> None:
    one, two = FedAdam(), FedAdam()
    one.aggregate(weights(), updates())
    fresh = two.aggregate(weights(), updates())
    again = FedAdam().aggregate(weights(), updates())
    for name in fresh:
        assert fresh[name].tobytes() == again[name].tobytes()


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("fedavg", FedAvg),
        ("fedprox", FedProx),
        ("fedadam", FedAdam),
        (StrategyName.FEDPROX, FedProx),
    ],
)
def test_make_strategy_by_name(name: Any, cls: type) -> None:
    strategy = make_strategy(name)
    assert type(strategy) is cls
    assert strategy.name == StrategyName(name).value


def test_make_strategy_passes_options() -> None:
    strategy = make_strategy("fedprox", mu=0.5)
    assert isinstance(strategy, FedProx)
    assert strategy.mu == 0.5


def test_make_strategy_unknown_name_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'nope'") as info:
        make_strategy("nope")
    for known in ("fedavg", "fedprox", "fedadam"):
        assert known in str(info.value)


def test_make_strategy_unknown_option() -> None:
    with pytest.raises(ConfigError, match=r"\[strategy\] fedprox: .*bogus"):
        make_strategy("fedprox", bogus=1)
