"""The local training and evaluation hooks: the default refuses what it cannot train, is the
old loop result for result; a custom step trains its own loss with its own optimiser; metrics
are the task's, as sums and counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from alliance.core.errors import ConfigError
from alliance.evaluation.ranking import (
    TopKEvaluation,
    rank_dataset,
    topk_counts,
    topk_from_counts,
)
from alliance.evaluation.regression import RegressionEvaluation, regression_from_sums
from alliance.models.steps import ClassifierStep, LossStep, StepSettings
from alliance.models.training import Optimiser, get_weights, train_locally
from alliance.privacy.ledger import PrivacyLedger
from alliance.privacy.noise import SecureGaussian
from alliance.protocol.messages import TrainingPlan
from alliance.protocol.privacy import PrivacyPlan
from alliance.site.privatize import train_under_plan

SETTINGS = StepSettings(epochs=3, batch_size=16, learning_rate=0.05, seed=4)
mse = nn.functional.mse_loss


def _classes(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _values(n: int = 64, *, flat: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return TensorDataset(x, y.squeeze(1) if flat else y)


def _mse(model: nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return float(mse(model(x), y))


def _linear(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, outputs)


@pytest.mark.parametrize(
    ("outputs", "data", "shown"),
    [
        (1, _values(), r"\(2, 1\) and the targets are torch\.float32 of shape \(2, 1\)"),
        (1, _values(flat=True), r"\(2, 1\) and the targets are torch\.float32 of shape \(2,\)"),
        (1, _classes(), r"\(2, 1\) and the targets are torch\.int64"),
        (2, TensorDataset(torch.randn(8, 3), torch.rand(8, 2)), r"torch\.float32 of shape"),
    ],
)
def test_default_step_refuses_what_cross_entropy_cannot_train(
    outputs: int, data: TensorDataset, shown: str
) -> None:
    model = _linear(outputs)
    before = get_weights(model)
    with pytest.raises(ConfigError, match=shown) as info:
        ClassifierStep().train(model, data, settings=SETTINGS, collate_fn=None)
    assert "Linear" in str(info.value)
    assert "train_step" in str(info.value)
    after = get_weights(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_default_step_is_train_locally_result_for_result() -> None:
    hooked, direct = _linear(2), _linear(2)
    result = ClassifierStep().train(hooked, _classes(), settings=SETTINGS, collate_fn=None)
    expected = train_locally(
        direct, _classes(), epochs=3, batch_size=16, learning_rate=0.05, seed=4
    )
    assert result == expected
    a, b = get_weights(hooked), get_weights(direct)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert hooked.training  # the check's eval-mode probe restored the mode


def test_loss_step_trains_a_regression_model() -> None:
    model = _linear(1)
    step = LossStep(loss=mse)
    step.check(model, _values(), collate_fn=None)
    first = step.train(model, _values(), settings=SETTINGS, collate_fn=None)
    settings = StepSettings(epochs=40, batch_size=16, learning_rate=0.05, seed=5)
    step.train(model, _values(), settings=settings, collate_fn=None)
    assert first.mean_loss > 1.0 > 0.01 > _mse(model, _values())
    assert (first.num_examples, first.steps) == (64, 12)


def test_sgd_takes_a_plain_gradient_step() -> None:
    model, data = _linear(1), _values(16)
    x, y = data.tensors
    mse(model(x), y).backward()  # type: ignore[no-untyped-call]
    expected = {n: (p - 0.1 * p.grad).detach().numpy() for n, p in model.named_parameters()}
    settings = StepSettings(epochs=1, batch_size=16, learning_rate=0.1, seed=0)
    LossStep(loss=mse, optimiser=Optimiser.SGD).train(
        model, data, settings=settings, collate_fn=None
    )
    after = get_weights(model)
    assert all(np.allclose(after[n], expected[n], atol=1e-6) for n in expected)


def test_loss_step_refuses_a_loss_that_cannot_move_the_model() -> None:
    model = _linear(1)
    with pytest.raises(ConfigError, match="one number"):
        LossStep(loss=lambda o, t: mse(o, t, reduction="none")).check(
            model, _values(), collate_fn=None
        )
    with pytest.raises(ConfigError, match="no gradient"):
        LossStep(loss=lambda o, t: torch.zeros(())).check(model, _values(), collate_fn=None)


def test_private_loss_is_the_steps_and_dp_sgd_keeps_adam() -> None:
    assert ClassifierStep().private_loss() is None
    assert LossStep(loss=mse).private_loss() is mse
    for step in (ClassifierStep(Optimiser.SGD), LossStep(loss=mse, optimiser=Optimiser.SGD)):
        with pytest.raises(ConfigError, match=r"DP-SGD.*asks for sgd"):
            step.private_loss()


def _private_round(
    model: nn.Module, data: TensorDataset, ledger: PrivacyLedger, step: LossStep | None
) -> float:
    plan = TrainingPlan(local_epochs=2, batch_size=16, learning_rate=0.05, seed=1)
    return train_under_plan(
        model,
        data,
        plan=plan,
        privacy=PrivacyPlan(mechanism="dp-sgd", noise_multiplier=0.0, rounds=1),
        start=get_weights(model),
        seed=1,
        study="s",
        round_=1,
        ledger=ledger,
        secure_threshold=None,
        noise=SecureGaussian(key=bytes(32)),
        step=step,
    ).train_loss


def test_dp_sgd_trains_the_steps_loss_and_refuses_before_charging(tmp_path: Path) -> None:
    with PrivacyLedger.open(tmp_path / "l", budget_epsilon=float("inf"), delta=1e-5) as ledger:
        with pytest.raises(ConfigError, match=r"\(2, 1\)"):
            _private_round(_linear(1), _values(), ledger, None)
        assert ledger.entries() == []
        model = _linear(1)
        before = _mse(model, _values())
        loss = _private_round(model, _values(), ledger, LossStep(loss=mse))
        assert len(ledger.entries()) == 1
        assert loss > 0
        assert _mse(model, _values()) < before


def test_regression_evaluation_reports_sums_only() -> None:
    model, data = _linear(1), _values(50)
    x, y = data.tensors
    with torch.no_grad():
        error = (model(x) - y).double()
    metrics = RegressionEvaluation(batch_size=16).evaluate(model, data, collate_fn=None)
    assert set(metrics) == {"eval_values", "eval_sse", "eval_sae"}
    assert metrics["eval_values"] == 50
    assert metrics["eval_sse"] == pytest.approx(float(error.square().sum()))
    assert metrics["eval_sae"] == pytest.approx(float(error.abs().sum()))
    flat = RegressionEvaluation().evaluate(model, _values(50, flat=True), collate_fn=None)
    assert flat == pytest.approx(metrics)
    with pytest.raises(ConfigError, match=r"outputs of shape \(8, 2\) but targets"):
        RegressionEvaluation().evaluate(_linear(2), TensorDataset(x[:8], y[:8]), collate_fn=None)


def test_pooled_metrics_keep_each_task_apart() -> None:
    a = {"eval_values": 10.0, "eval_sse": 5.0, "eval_sae": 6.0, "train_loss": 0.4}
    b = {"eval_values": 30.0, "eval_sse": 3.0, "eval_sae": 2.0}
    scores = regression_from_sums([a, b, {"eval_n": 4.0}])
    assert (scores.mse, scores.mae, scores.n) == (0.2, 0.2, 40)
    assert regression_from_sums([]).as_dict() == {"mse": None, "mae": None, "n": 0}
    ranked = {"eval_n": 4.0, "eval_top1": 1.0, "eval_top3": 2.0, "eval_top10": 4.0}
    # A regression site's counts are not top-k misses; a ranker's are pooled as before.
    assert topk_from_counts([a, {**b, "eval_n": 30.0}]).n == 0
    assert topk_from_counts([ranked, a]).as_dict() == {
        "top1": 0.25,
        "top3": 0.5,
        "top10": 1.0,
        "n": 4,
    }


def test_topk_evaluation_is_the_default_and_refuses_a_regression_model() -> None:
    model = _linear(4)
    data = TensorDataset(torch.randn(20, 3), torch.randint(0, 4, (20,)))
    counts = TopKEvaluation(batch_size=7).evaluate(model, data, collate_fn=None)
    assert counts == topk_counts(rank_dataset(model, data))
    with pytest.raises(ConfigError, match=r"top-k evaluation of Linear.*\(20, 1\).*eval_step"):
        TopKEvaluation().evaluate(_linear(1), _values(20), collate_fn=None)
