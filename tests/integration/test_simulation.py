"""A whole federation in one process: any PyTorch model, determinism, what leaves a site."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from tests.frames import opened
from torch import nn

from alliance.core.errors import ConfigError, FederationError
from alliance.data.synth import SiteCohort
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import CaseDataset, PhenotypeRanker
from alliance.models.training import get_weights
from alliance.protocol import MessageKind, TrainingPlan
from alliance.sim import Simulation


def _tabular_sites(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    true_w = torch.randn(5, 2, generator=gen)
    sites = {}
    for i, n in enumerate((40, 120, 300)):
        x = torch.randn(n, 5, generator=gen) + 0.3 * i
        y = (x @ true_w).argmax(dim=1)
        sites[f"site-{i}"] = (x, y)
    return sites


def _accuracy(model: nn.Module, data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> float:
    x = torch.cat([d[0] for d in data.values()])
    y = torch.cat([d[1] for d in data.values()])
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam"])
def test_any_torch_module_learns_federated(strategy: str) -> None:
    sites = _tabular_sites()
    sim = Simulation(
        model_fn=lambda: nn.Linear(5, 2),
        sites=sites,
        strategy=strategy,
        rounds=8,
        plan=TrainingPlan(local_epochs=2, batch_size=16, learning_rate=0.05),
    )
    before = _accuracy(nn.Linear(5, 2), sites)
    result = sim.run()
    assert len(result.history) == 8
    assert _accuracy(result.model, sites) > max(0.85, before)
    assert set(result.bytes_sent) == {"coordinator", "site-0", "site-1", "site-2"}


def test_same_seed_same_final_model() -> None:
    def run() -> dict[str, np.ndarray]:
        sim = Simulation(
            model_fn=lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)),
            sites=_tabular_sites(),
            rounds=3,
            seed=11,
        )
        return get_weights(sim.run().model)

    first, second = run(), run()
    assert first.keys() == second.keys()
    for name in first:
        assert np.array_equal(first[name], second[name]), name


def test_bad_simulation_settings_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="rounds must be >= 1"):
        Simulation(model_fn=lambda: nn.Linear(5, 2), sites=_tabular_sites(), rounds=0)
    with pytest.raises(FederationError, match="at least one site"):
        Simulation(model_fn=lambda: nn.Linear(5, 2), sites={})
    with pytest.raises(ConfigError, match="3 inputs but 2 targets"):
        Simulation(
            model_fn=lambda: nn.Linear(5, 2), sites={"a": (torch.zeros(3, 5), torch.zeros(2))}
        )
    with pytest.raises(ConfigError, match="not a site"):
        Simulation(
            model_fn=lambda: nn.Linear(5, 2),
            sites=_tabular_sites(),
            test={"elsewhere": _tabular_sites()["site-0"]},
        )


def test_a_site_with_no_cases_is_refused() -> None:
    sites = {"empty": (torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64)), **_tabular_sites()}
    with pytest.raises(FederationError, match="'empty' has no training cases"):
        Simulation(model_fn=lambda: nn.Linear(5, 2), sites=sites, rounds=1).run()


_ALLOWED_METRICS = {"eval_n", "eval_top1", "eval_top3", "eval_top10", "train_loss"}
_CODE = re.compile(rb"(HP:\d{7}|OMIM:\d+|ORPHA:\d+)")


def test_no_message_leaving_a_site_carries_a_case_level_field(
    features: PhenotypeFeatures, small_consortium: tuple[SiteCohort, ...]
) -> None:
    """Decode every byte a site sent: only the update, its size and aggregate counts."""
    cohorts = [c for c in small_consortium if c.train and c.test][:4]
    train = {c.hospital.id: CaseDataset(features.encode(c.train)) for c in cohorts}
    test = {c.hospital.id: CaseDataset(features.encode(c.test)) for c in cohorts}
    sent: list[tuple[str, bytes]] = []
    sim = Simulation(
        model_fn=lambda: PhenotypeRanker(features, dim=8),
        sites=train,
        test=test,
        rounds=2,
        collate_fn=features.collate,
        tap=lambda sender, recipient, data: sent.append((sender, data)),
    )
    result = sim.run()
    params = {n: p.shape for n, p in result.model.named_parameters()}
    case_ids = {case.id.encode() for c in cohorts for case in (*c.train, *c.test)}
    from_sites = [data for sender, data in sent if sender != "coordinator"]
    # Two rounds' updates, then each hospital's evaluation of the final model it received.
    finals = [d for d in from_sites if opened(d).header.kind is MessageKind.FINAL_EVALUATION]
    from_sites = [d for d in from_sites if d not in finals]
    assert len(finals) == len(cohorts)
    for data in finals:
        env = opened(data)
        assert set(env.body) == {"model_version", "metrics", "privacy"}
        assert set(env.body["metrics"]) <= _ALLOWED_METRICS
        assert not env.arrays
        assert _CODE.search(data) is None, "a phenotype or disease code left a site"
        assert not any(cid in data for cid in case_ids), "a case id left a site"
    assert len(from_sites) == 2 * len(cohorts)
    for data in from_sites:
        env = opened(data)
        assert env.header.kind is MessageKind.MODEL_UPDATE
        assert set(env.body) == {"model_version", "num_examples", "metrics"}
        assert set(env.body["metrics"]) <= _ALLOWED_METRICS
        assert {n: a.shape for n, a in env.arrays.items()} == {
            n: tuple(s) for n, s in params.items()
        }
        assert _CODE.search(data) is None, "a phenotype or disease code left a site"
        assert not any(cid in data for cid in case_ids), "a case id left a site"
    # The counts are aggregates: a site's eval_n is its number of test cases, nothing finer.
    first = opened(from_sites[0])
    assert first.body["metrics"]["eval_n"] == len(test[first.header.sender])
