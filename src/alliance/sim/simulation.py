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

The same seed gives the same final model (without differential privacy, whose noise comes from
a cryptographically secure source and is therefore different on every run).

Privacy is the deployment's, not a simulation of it: with ``privacy`` each site trains with
DP-SGD and charges its own :class:`~alliance.privacy.ledger.PrivacyLedger` (kept in
``ledger_dir``, a temporary folder by default); with ``secagg`` the simulation issues every site a
certificate from an in-memory consortium CA and the rounds run the full secure-aggregation
protocol over the same encoded messages, so the coordinator only ever holds the sum.
``drop(site, round, stage)`` lets a test make a site vanish at any stage of a round.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from alliance.algorithms.strategies import Strategy, StrategyName, make_strategy
from alliance.coordinator.rounds import Coordinator, RoundRecord
from alliance.core.errors import ConfigError, FederationError
from alliance.crypto.authority import CertificateAuthority
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.signing import Signer
from alliance.crypto.verifier import MessageVerifier
from alliance.models.training import get_weights, set_weights
from alliance.privacy.ledger import PrivacyLedger
from alliance.protocol.envelope import Envelope, MessageKind
from alliance.protocol.messages import TrainingPlan
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
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
    #: Each site's privacy spending (ε at the study's δ) at the end, when DP was on.
    epsilon: Mapping[str, float] = field(default_factory=dict)


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
    privacy, secagg
        The study's differential-privacy and secure-aggregation plans (default: neither).
    budget_epsilon
        Each site's privacy budget (ε) in its ledger, or one budget per site id.
    ledger_dir
        Where the sites' ledgers are kept (default: a temporary folder removed after the run).
    drop
        ``drop(site, round, stage) → True`` makes the site ignore that message, as if it had
        gone offline (stages: ``"train"``, ``"keys"``, ``"shares"``, ``"confirm"``,
        ``"unmask"``).
    quorum
        Fewest sites that close a round (default: all; with secure aggregation, the threshold).
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
        privacy: PrivacyPlan | None = None,
        secagg: SecAggPlan | None = None,
        budget_epsilon: float | Mapping[str, float] = math.inf,
        ledger_dir: Path | None = None,
        drop: Callable[[str, int, str], bool] | None = None,
        quorum: int | None = None,
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
        self.privacy = privacy or PrivacyPlan()
        if self.privacy.rounds != rounds and self.privacy.patient_level:
            self.privacy = PrivacyPlan(**{**self.privacy.to_json(), "rounds": rounds})
        self.secagg = secagg or SecAggPlan()
        self.budget_epsilon = budget_epsilon
        self.ledger_dir = ledger_dir
        self.drop = drop
        self.quorum = quorum

    def _model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return self.model_fn()

    def run(self) -> SimulationResult:
        """Run every round and return the final global model and the round history."""
        if self.ledger_dir is not None or not self.privacy.patient_level:
            return self._run(self.ledger_dir)
        with tempfile.TemporaryDirectory(prefix="alliance-ledgers-") as tmp:
            return self._run(Path(tmp))

    def _identities(self) -> tuple[dict[str, Signer], MessageVerifier] | None:
        """Certificates from an in-memory consortium CA, for secure aggregation's signatures."""
        if not self.secagg.enabled:
            return None
        ca = CertificateAuthority.create(self.federation)
        signers = {}
        for name in sorted(self.train):
            party = ca.issue(name, Role.SITE)
            signers[name] = Signer(party.signing_key, party.certificate)
        return signers, MessageVerifier(TrustStore(ca.certificate), role=Role.SITE)

    def _run(self, ledger_dir: Path | None) -> SimulationResult:
        start = time.perf_counter()
        transport = InMemoryTransport(encode=self.encode, tap=self.tap)
        identities = self._identities()
        global_model = self._model()
        coordinator = Coordinator(
            federation=self.federation,
            study=self.study,
            sites=list(self.train),
            weights=get_weights(global_model),
            strategy=self.strategy,
            plan=self.plan,
            mailbox=transport,
            privacy=self.privacy,
            secagg=self.secagg,
            quorum=self.quorum,
            peers=None if identities is None else identities[1],
        )
        ledgers: dict[str, PrivacyLedger] = {}
        sites = []
        for name, data in sorted(self.train.items()):
            if data is None:
                continue
            if ledger_dir is not None and self.privacy.patient_level:
                budget = (
                    self.budget_epsilon.get(name, math.inf)
                    if isinstance(self.budget_epsilon, Mapping)
                    else self.budget_epsilon
                )
                ledgers[name] = PrivacyLedger.open(
                    ledger_dir / f"{name}.ledger",
                    budget_epsilon=budget,
                    delta=self.privacy.delta,
                )
            sites.append(
                Site(
                    name,
                    federation=self.federation,
                    model=self._model(),
                    train=data,
                    test=self.test.get(name),
                    link=transport,
                    collate_fn=self.collate_fn,
                    ledger=ledgers.get(name),
                    signer=None if identities is None else identities[0][name],
                    peers=None if identities is None else identities[1],
                )
            )
        try:
            for _ in range(self.rounds):
                coordinator.start_round()
                self._drive(coordinator, sites, transport)
                record = coordinator.close_round()
                if self.on_round is not None:
                    self.on_round(record)
            coordinator.finish()
            for site in sites:
                site.step()
            epsilon = {name: ledger.spent().epsilon for name, ledger in ledgers.items()}
        finally:
            for ledger in ledgers.values():
                ledger.close()
        set_weights(global_model, coordinator.weights)
        return SimulationResult(
            model=global_model,
            history=coordinator.history,
            seconds=time.perf_counter() - start,
            bytes_sent=dict(transport.bytes_sent),
            epsilon=epsilon,
        )

    def _drive(
        self, coordinator: Coordinator, sites: list[Site], transport: InMemoryTransport
    ) -> None:
        """Deliver messages until the open round can close (every stage of a secure round)."""
        for _ in range(16):
            for site in sites:
                while True:
                    env = transport.fetch(site.id)
                    if env is None:
                        break
                    if self.drop is not None and self.drop(site.id, env.header.round, _stage(env)):
                        continue
                    for reply in site.handle(env):
                        transport.submit(reply)
            coordinator.receive()
            secure = coordinator.secure_round
            if coordinator.complete or (secure is not None and secure.aborted is not None):
                return  # close_round reports an aborted secure round
            # Every site that could answer has: the silent ones are dropped at this stage.
            coordinator.advance(force=True)
        raise FederationError(f"round {coordinator.round} did not complete")


def _stage(env: Envelope) -> str:
    if env.header.kind is MessageKind.SECAGG:
        return str(env.body.get("stage", ""))
    return "train" if env.header.kind is MessageKind.TRAIN_TASK else env.header.kind.value
