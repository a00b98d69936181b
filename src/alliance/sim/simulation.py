"""A whole federation in one process: the real site and coordinator code, in-memory transport.

:class:`Simulation` takes any PyTorch model factory and per-site datasets (tensors or a
``Dataset``), builds one :class:`~alliance.site.Site` per hospital and one
:class:`~alliance.coordinator.Coordinator`, and drives rounds over an
:class:`~alliance.transport.InMemoryTransport` that encodes and decodes every message, so the
bytes exercised are those that travel over HTTPS or in a file bundle::

    sim = Simulation(
        model_fn=lambda: nn.Linear(13, 2),
        sites={"cleveland": (x1, y1), "hungary": (x2, y2)},
        strategy="fedavg",
        rounds=20,
    )
    result = sim.run()
    result.model        # the final global model
    result.history      # one RoundRecord per round

The same seed gives the same final model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from alliance.algorithms.strategies import Strategy, StrategyName, make_strategy
from alliance.coordinator.rounds import Coordinator, RoundRecord
from alliance.core.errors import ConfigError, FederationError
from alliance.models.training import get_weights, set_weights
from alliance.protocol.messages import TrainingPlan
from alliance.site.agent import Site
from alliance.transport.memory import InMemoryTransport

__all__ = ["Simulation", "SimulationResult", "SiteData", "as_dataset"]

SiteData = Dataset[Any] | tuple[torch.Tensor, torch.Tensor]


def as_dataset(data: SiteData | None, *, where: str) -> Dataset[Any] | None:
    """Accept a ``Dataset`` or an ``(inputs, targets)`` pair of tensors."""
    if data is None or isinstance(data, Dataset):
        return data
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        if len(data[0]) != len(data[1]):
            raise ConfigError(f"{where}: {len(data[0])} inputs but {len(data[1])} targets")
        return TensorDataset(data[0], data[1])
    raise ConfigError(f"{where}: expected a torch Dataset or a pair (inputs, targets) of tensors")


@dataclass
class SimulationResult:
    """The outcome of a simulated study."""

    model: nn.Module
    history: list[RoundRecord]
    seconds: float
    bytes_sent: Mapping[str, int] = field(default_factory=dict)


class Simulation:
    """Federated training of ``model_fn()`` across ``sites`` in one process.

    Parameters
    ----------
    model_fn
        Builds the model; called once per site and once for the coordinator's initial weights,
        after seeding torch with ``seed`` each time, so every copy starts identical.
    sites
        Site id → training data (a ``Dataset`` or ``(inputs, targets)`` tensors).
    strategy
        A registered strategy name (``"fedavg"``, ``"fedprox"``, ``"fedadam"``) or an instance.
    rounds
        Number of rounds.
    plan
        Local training plan (epochs, batch size, learning rate...).
    test
        Optional site id → held-out data; sites report top-k counts on it each round.
    collate_fn
        Batch builder shared by all sites' datasets.
    seed
        Seeds model initialisation and each site's shuffling.
    on_round
        Called after each round with its :class:`RoundRecord`.
    encode
        Pass messages through the codec (default); off only to measure the codec's cost.
    """

    def __init__(
        self,
        *,
        model_fn: Callable[[], nn.Module],
        sites: Mapping[str, SiteData],
        strategy: str | StrategyName | Strategy = "fedavg",
        rounds: int = 10,
        plan: TrainingPlan | None = None,
        test: Mapping[str, SiteData] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        seed: int = 0,
        federation: str = "simulation",
        study: str = "study",
        on_round: Callable[[RoundRecord], None] | None = None,
        encode: bool = True,
        tap: Callable[[str, str, bytes], None] | None = None,
    ) -> None:
        if rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {rounds}")
        if not sites:
            raise FederationError("a simulation needs at least one site")
        self.model_fn = model_fn
        self.train = {s: as_dataset(d, where=f"site {s!r} training data") for s, d in sites.items()}
        self.test = {
            s: as_dataset(d, where=f"site {s!r} test data") for s, d in (test or {}).items()
        }
        for s in self.test:
            if s not in self.train:
                raise ConfigError(
                    f"test data given for {s!r}, which is not a site of this simulation"
                )
        self.strategy = (
            make_strategy(strategy) if isinstance(strategy, str | StrategyName) else strategy
        )
        self.rounds = rounds
        self.plan = plan or TrainingPlan(seed=seed)
        self.collate_fn = collate_fn
        self.seed = seed
        self.federation = federation
        self.study = study
        self.on_round = on_round
        self.encode = encode
        self.tap = tap

    def _model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return self.model_fn()

    def run(self) -> SimulationResult:
        """Run every round and return the final global model and the round history."""
        start = time.perf_counter()
        transport = InMemoryTransport(encode=self.encode, tap=self.tap)
        global_model = self._model()
        coordinator = Coordinator(
            federation=self.federation,
            study=self.study,
            sites=list(self.train),
            weights=get_weights(global_model),
            strategy=self.strategy,
            plan=self.plan,
            mailbox=transport,
        )
        sites = [
            Site(
                name,
                federation=self.federation,
                model=self._model(),
                train=data,
                test=self.test.get(name),
                link=transport,
                collate_fn=self.collate_fn,
            )
            for name, data in sorted(self.train.items())
            if data is not None
        ]
        for _ in range(self.rounds):
            coordinator.start_round()
            for site in sites:
                site.step()
            coordinator.receive()
            record = coordinator.close_round()
            if self.on_round is not None:
                self.on_round(record)
        coordinator.finish()
        for site in sites:
            site.step()
        set_weights(global_model, coordinator.weights)
        return SimulationResult(
            model=global_model,
            history=coordinator.history,
            seconds=time.perf_counter() - start,
            bytes_sent=dict(transport.bytes_sent),
        )
