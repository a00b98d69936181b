"""A regression study through the Python API: the default step refuses it (it used to train it
to nothing: cross-entropy over one output is 0, weights unchanged, train_loss 0.0); a custom
step and evaluation train it federated and report the task's metrics, as sums, over the wire."""

from __future__ import annotations

import logging

import pytest
import torch
from tests.frames import opened
from torch import nn

from alliance.coordinator.rounds import RoundRecord
from alliance.core.errors import ConfigError
from alliance.evaluation.regression import RegressionEvaluation, regression_from_sums
from alliance.models.steps import LossStep
from alliance.protocol import MessageKind, TrainingPlan
from alliance.protocol.privacy import SecAggPlan
from alliance.sim import Simulation

Data = dict[str, tuple[torch.Tensor, torch.Tensor]]
TRUE_W = torch.tensor([[1.0], [-2.0], [0.5]])


def _sites(seed: int) -> Data:
    gen = torch.Generator().manual_seed(seed)
    sites = {}
    for name, n in (("a", 40), ("b", 90), ("c", 60)):
        x = torch.randn(n, 3, generator=gen)
        sites[name] = (x, x @ TRUE_W + 0.3 + 0.05 * torch.randn(n, 1, generator=gen))
    return sites


def test_default_step_refuses_a_regression_model_instead_of_training_it_to_nothing() -> None:
    closed: list[RoundRecord] = []
    sim = Simulation(
        model_fn=lambda: nn.Linear(3, 1), sites=_sites(0), rounds=2, on_round=closed.append
    )
    with pytest.raises(
        ConfigError,
        match=r"site 'a', round 1.*Linear.*\(2, 1\).*torch\.float32 of shape \(2, 1\).*train_step",
    ):
        sim.run()
    assert closed == []


def test_a_custom_step_trains_regression_and_reports_its_metrics() -> None:
    train, test = _sites(0), _sites(1)
    sent: list[tuple[str, bytes]] = []
    result = Simulation(
        model_fn=lambda: nn.Linear(3, 1),
        sites=train,
        test=test,
        rounds=8,
        plan=TrainingPlan(local_epochs=2, batch_size=16, learning_rate=0.05),
        train_step=LossStep(loss=nn.functional.mse_loss),
        eval_step=RegressionEvaluation(),
        tap=lambda sender, recipient, data: sent.append((sender, data)),
    ).run()
    pooled = [regression_from_sums(list(r.site_metrics.values())) for r in result.history]
    assert [p.n for p in pooled] == [190] * 8
    assert pooled[0].mse is not None
    assert pooled[-1].mse is not None
    assert pooled[-1].mse < 0.05 < 1.0 < pooled[0].mse
    assert result.history[-1].train_loss < 0.1 < result.history[0].train_loss
    x = torch.cat([x for x, _ in test.values()])
    y = torch.cat([y for _, y in test.values()])
    with torch.no_grad():
        assert float(nn.functional.mse_loss(result.model(x), y)) < 0.02
    # Not a ranker: no top-k accuracy is made up from its counts.
    assert result.history[-1].evaluation()["n"] == 0
    from_sites = [opened(data) for sender, data in sent if sender != "coordinator"]
    updates = [e for e in from_sites if e.header.kind is MessageKind.MODEL_UPDATE]
    assert len(updates) == 3 * 8
    # Each site also reports on the final model it received: a card's top-k counts, which a
    # regression model has none of, so none are made up.
    finals = [e for e in from_sites if e.header.kind is MessageKind.FINAL_EVALUATION]
    assert len(finals) == 3
    assert len(from_sites) == 3 * 8 + 3
    assert all(f.body["metrics"] == {} for f in finals)
    for env in updates:
        assert env.header.kind is MessageKind.MODEL_UPDATE
        metrics = env.body["metrics"]
        assert set(metrics) == {"eval_values", "eval_sse", "eval_sae", "train_loss"}
        assert metrics["eval_values"] == len(test[env.header.sender][1])


def test_under_secure_aggregation_the_sums_stay_at_the_sites_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    train, test = _sites(0), _sites(1)
    x = torch.cat([x for x, _ in test.values()])
    y = torch.cat([y for _, y in test.values()])
    with caplog.at_level(logging.WARNING, logger="alliance.site.agent"):
        result = Simulation(
            model_fn=lambda: nn.Linear(3, 1),
            sites=train,
            test=test,
            rounds=3,
            plan=TrainingPlan(local_epochs=2, batch_size=16, learning_rate=0.05),
            train_step=LossStep(loss=nn.functional.mse_loss),
            eval_step=RegressionEvaluation(),
            secagg=SecAggPlan(enabled=True),
        ).run()
    assert "['eval_sae', 'eval_sse', 'eval_values'] stay at the site" in caplog.text
    with torch.no_grad():
        torch.manual_seed(0)
        before = float(nn.functional.mse_loss(nn.Linear(3, 1)(x), y))
        assert float(nn.functional.mse_loss(result.model(x), y)) < before / 4
    summed = list(result.history[-1].site_metrics.values())
    assert regression_from_sums(summed).n == 0
    assert result.history[-1].evaluation()["n"] == 0
