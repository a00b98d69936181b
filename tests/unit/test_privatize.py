"""The site's privacy step: the round's event, the ledger check before training, client-level
clipping and noise (full noise alone, noise spread over the threshold under secure aggregation).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from alliance.core.errors import BudgetExceeded, ConfigError
from alliance.models.training import get_weights
from alliance.privacy.accountant import epsilon
from alliance.privacy.ledger import PrivacyLedger
from alliance.privacy.noise import SecureGaussian
from alliance.protocol.messages import TrainingPlan
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan, default_threshold
from alliance.site.privatize import round_event, train_under_plan

PLAN = TrainingPlan(local_epochs=2, batch_size=16, learning_rate=0.05, seed=1)


def _data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(5, 2)


def test_round_event_follows_the_plan_and_calibrates_to_the_target() -> None:
    fixed = round_event(PLAN, PrivacyPlan(mechanism="dp-sgd", noise_multiplier=1.3), 64)
    assert (fixed.sample_rate, fixed.noise_multiplier, fixed.steps) == (0.25, 1.3, 8)
    # Fewer cases than the batch: every case every step (q = 1), one step per epoch.
    small = round_event(PLAN, PrivacyPlan(mechanism="dp-sgd", noise_multiplier=1.3), 10)
    assert (small.sample_rate, small.steps) == (1.0, 2)
    target = PrivacyPlan(mechanism="dp-sgd", target_epsilon=2.0, rounds=3)
    event = round_event(PLAN, target, 64)
    study = epsilon([event] * 3, delta=1e-5).epsilon
    assert 1.9 < study <= 2.0
    assert round_event(PLAN, target, 640).noise_multiplier < event.noise_multiplier


def test_dp_round_is_charged_before_training_and_refused_beyond_the_budget(
    tmp_path: Path,
) -> None:
    privacy = PrivacyPlan(mechanism="dp-sgd", target_epsilon=2.0, rounds=2)
    model = _model()
    start = get_weights(model)
    with PrivacyLedger.open(tmp_path / "l", budget_epsilon=2.2, delta=1e-5) as ledger:
        update = train_under_plan(
            model,
            _data(),
            plan=PLAN,
            privacy=privacy,
            start=start,
            seed=1,
            study="s",
            round_=1,
            ledger=ledger,
            secure_threshold=None,
        )
        assert update.event is not None
        assert [c.round for c in ledger.entries()] == [1]
        assert any(np.abs(d).max() > 0 for d in update.delta.values())
        # A second study of two rounds no longer fits in 2.2: refused, nothing charged.
        with pytest.raises(BudgetExceeded, match="budget"):
            train_under_plan(
                _model(),
                _data(),
                plan=PLAN,
                privacy=privacy,
                start=start,
                seed=1,
                study="t",
                round_=1,
                ledger=ledger,
                secure_threshold=None,
            )
        assert [c.study for c in ledger.entries()] == ["s"]
    with pytest.raises(ConfigError, match="ledger"):
        train_under_plan(
            _model(),
            _data(),
            plan=PLAN,
            privacy=privacy,
            start=start,
            seed=1,
            study="s",
            round_=1,
            ledger=None,
            secure_threshold=None,
        )


def _client_update(threshold: int | None, sigma: float, clip: float) -> np.ndarray:
    model = _model()
    privacy = PrivacyPlan(client_clip=clip, client_noise_multiplier=sigma)
    update = train_under_plan(
        model,
        _data(),
        plan=PLAN,
        privacy=privacy,
        start=get_weights(_model()),
        seed=1,
        study="s",
        round_=1,
        ledger=None,
        secure_threshold=threshold,
        noise=SecureGaussian(bytes(32)),
    )
    return np.concatenate([d.reshape(-1) for d in update.delta.values()])


def test_client_level_clipping_bounds_the_whole_update() -> None:
    raw = _client_update(None, 0.0, 1e6)  # the largest clip a plan allows: no clipping here
    assert np.linalg.norm(raw) > 0.1
    clipped = _client_update(None, 0.0, 0.1)
    assert np.linalg.norm(clipped) == pytest.approx(0.1, rel=1e-5)
    np.testing.assert_allclose(clipped, raw * 0.1 / np.linalg.norm(raw), rtol=1e-4, atol=1e-7)


def test_client_level_noise_is_spread_over_the_threshold_under_secure_aggregation() -> None:
    clip, sigma = 0.1, 5.0
    clean = _client_update(None, 0.0, clip)
    alone = _client_update(None, sigma, clip) - clean
    t = default_threshold(12)
    assert SecAggPlan(enabled=True).threshold_for(12) == t == 8
    shared = _client_update(t, sigma, clip) - clean
    # Few coordinates (12): the std estimates are rough but separate sqrt(8) ≈ 2.8 apart.
    assert np.std(alone) == pytest.approx(sigma * clip, rel=0.6)
    assert np.std(shared) == pytest.approx(sigma * clip / math.sqrt(t), rel=0.6)
    assert np.std(alone) > 1.5 * np.std(shared)


def test_the_consortium_client_level_epsilon_is_the_analytic_gaussian_one() -> None:
    from alliance.coordinator.service import describe_privacy

    privacy = PrivacyPlan(client_clip=1.0, client_noise_multiplier=10.0, delta=1e-5)
    info = describe_privacy(privacy, SecAggPlan(enabled=True), rounds=100)
    # 100 rounds of the whole consortium's sum with σ = 10 (the reference: 4.37718).
    assert info["client_level_epsilon"] == pytest.approx(4.37718, abs=1e-5)
    assert info["secure_aggregation"] is True
    none = describe_privacy(
        PrivacyPlan(client_clip=1.0, client_noise_multiplier=0.0), SecAggPlan(), rounds=3
    )
    assert none["client_level_epsilon"] is None
