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

Hospitals that allow no network connection are simulated too: the sites named in ``offline``
talk to the coordinator through the files transport (:mod:`alliance.transport.files`), every
message a bundle signed by its sender and sealed to its recipient, written into folders under
``files_dir`` and carried between them by a courier step between the protocol's stages, as a
USB key would. The other sites stay on the in-memory channel; the coordinator serves both.

With synchronous rounds (the default) every round waits for the courier, so the result is the
very model of an all-online run. With ``aggregation`` in ``async`` mode
(:mod:`alliance.protocol.aggregation`) rounds do not wait: each model version is one pass in
which every online site answers the open round, and the courier brings an offline site's reply
back ``courier_delay`` versions after the task it answers was handed out; the coordinator
counts it then, discounted by its staleness, and hands that site no new task while its reply
is on the road.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric import ed25519
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from alliance.algorithms.strategies import Strategy, StrategyName, make_strategy
from alliance.coordinator.driver import RoundDriver, Schedule, Step
from alliance.coordinator.offline import OfflineSites, message_key
from alliance.coordinator.rounds import Coordinator, RoundRecord
from alliance.core.errors import AllianceError, ConfigError, FederationError
from alliance.crypto.authority import CertificateAuthority
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.signing import Signer
from alliance.crypto.verifier import MessageVerifier
from alliance.models.steps import EvalStep, TrainStep
from alliance.models.training import get_weights, set_weights
from alliance.privacy.ledger import PrivacyLedger
from alliance.protocol.aggregation import AggregationPlan
from alliance.protocol.bundles import OpenedBundle, peek_header
from alliance.protocol.codec import MessageSigner
from alliance.protocol.envelope import COORDINATOR, Envelope, MessageKind
from alliance.protocol.messages import FinalEvaluation, TrainingPlan
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.protocol.strategy_spec import STRATEGY_DEFAULTS, StrategySpec, strategy_name
from alliance.protocol.study import StudySpec
from alliance.sim.homecoming import FinalModel
from alliance.site.hospital import Hospital
from alliance.site.model_store import ModelStore
from alliance.site.simulated import simulated_hospital
from alliance.transport.base import SiteLink
from alliance.transport.files import BUNDLE_SUFFIX, BundleLedger, FileSiteLink, carry
from alliance.transport.memory import InMemoryTransport, Signing

__all__ = ["Simulation", "SimulationResult", "SiteData", "as_dataset"]

#: A simulated round's deadline, on the simulation's virtual clock (seconds).
ROUND_TIMEOUT_S = 600.0

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
    #: Each hospital's evaluation of the final model it received and verified (top-k counts),
    #: as it reports it to the coordinator (:mod:`alliance.sim.homecoming`).
    final_evaluation: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


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
    offline
        Sites that exchange signed, sealed file bundles instead of in-memory messages.
    files_dir
        Where their bundles are written (default: a temporary folder removed after the run).
    aggregation
        Synchronous rounds (default) or buffered, staleness-aware asynchronous ones.
    courier_delay
        Asynchronous rounds: model versions between an offline site's task and the courier
        bringing its answer back (the answer's staleness); 0 brings it within the same version.
    train_step
        How each site trains a round (:class:`~alliance.models.steps.TrainStep`); the default,
        cross-entropy with the plan's optimiser, refuses a model that is not a classifier.
        Under DP-SGD only the step's loss is used.
    eval_step
        What each site reports on its ``test`` data (:class:`~alliance.models.steps.EvalStep`;
        default top-k counts, e.g. :class:`~alliance.evaluation.regression.RegressionEvaluation`
        for regression).
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
        offline: Collection[str] = (),
        files_dir: Path | None = None,
        aggregation: AggregationPlan | None = None,
        courier_delay: int = 3,
        train_step: TrainStep | None = None,
        eval_step: EvalStep | None = None,
    ) -> None:
        if rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {rounds}")
        if (
            isinstance(courier_delay, bool)
            or not isinstance(courier_delay, int)
            or courier_delay < 0
        ):
            raise ConfigError(
                f"courier_delay must be an integer >= 0 versions, got {courier_delay!r}"
            )
        if not sites:
            raise FederationError("a simulation needs at least one site")
        self.model_fn = model_fn
        self.train = {s: as_dataset(d, where=f"site {s!r} training data") for s, d in sites.items()}
        self.test = {
            s: as_dataset(d, where=f"site {s!r} test data") for s, d in (test or {}).items()
        }
        for s, data in self.train.items():
            if data is not None and len(data) == 0:  # type: ignore[arg-type]
                raise FederationError(
                    f"site {s!r} has no training cases; load its data before joining"
                )
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
        unknown = sorted(set(offline) - set(self.train))
        if unknown:
            raise ConfigError(f"offline sites {unknown} are not sites of this simulation")
        self.offline = frozenset(offline)
        self.files_dir = files_dir
        self.aggregation = aggregation or AggregationPlan()
        self.courier_delay = courier_delay
        self.train_step = train_step
        self.eval_step = eval_step
        #: The study every hospital approves and the coordinator runs, validated once.
        self.spec = StudySpec.build(
            study_id=study,
            rounds=rounds,
            seed=seed,
            sites=sorted(self.train),
            quorum=quorum,
            round_timeout_s=ROUND_TIMEOUT_S,
            strategy=_strategy_spec(self.strategy),
            plan=self.plan,
            privacy=self.privacy,
            secagg=self.secagg,
            aggregation=self.aggregation,
        )

    def _model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return self.model_fn()

    def run(self) -> SimulationResult:
        """Run every round and return the final global model and the round history."""
        with contextlib.ExitStack() as stack:
            ledgers = self.ledger_dir
            if ledgers is None and self.privacy.patient_level:
                ledgers = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ga-led-")))
            files = self.files_dir
            if files is None and self.offline:
                files = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ga-files-")))
            return self._run(ledgers, files)

    def _identities(self) -> _Identities:
        """Certificates from an in-memory consortium CA: every message is signed with them, as
        over HTTPS or in a bundle."""
        ca = CertificateAuthority.create(self.federation)
        keys = {}
        for name in sorted(self.train):
            keys[name] = ca.issue(name, Role.SITE)
        coordinator = ca.issue(COORDINATOR, Role.COORDINATOR, hosts=("localhost",))
        trust = TrustStore(ca.certificate)
        return _Identities(
            signers={n: Signer(p.signing_key, p.certificate) for n, p in keys.items()},
            keys={n: p.signing_key for n, p in keys.items()},
            coordinator=Signer(coordinator.signing_key, coordinator.certificate),
            coordinator_key=coordinator.signing_key,
            sites=MessageVerifier(trust, role=Role.SITE),
            coordinators=MessageVerifier(trust, role=Role.COORDINATOR),
        )

    def _run(self, ledger_dir: Path | None, files_dir: Path | None) -> SimulationResult:
        start = time.perf_counter()
        identities = self._identities()
        signing = Signing(
            signers={**identities.signers, COORDINATOR: identities.coordinator},
            from_coordinator=identities.coordinators,
            from_sites=identities.sites,
        )
        transport = InMemoryTransport(
            encode=self.encode, tap=self.tap, signing=signing if self.encode else None
        )
        files = None
        if self.offline:
            assert files_dir is not None
            files = _FilesChannel(self.federation, files_dir, sorted(self.offline), identities)
        global_model = self._model()
        coordinator = Coordinator(
            self.spec,
            federation=self.federation,
            weights=get_weights(global_model),
            strategy=self.strategy,
            peers=identities.sites,
            offline=self.offline,
            clock=lambda: 0.0,
        )
        audit_dir = Path(tempfile.mkdtemp(prefix="ga-audit-"))
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
            model = self._model()  # every copy starts from the seed, in site order
            hospital = simulated_hospital(
                name,
                federation=self.federation,
                spec=self.spec,
                train=data,
                test=self.test.get(name),
                model_fn=lambda model=model: model,  # type: ignore[misc]
                ledger=ledgers.get(name),
                folder=audit_dir,
                collate_fn=self.collate_fn,
                signer=identities.signers[name],
                peers=identities.sites,
                train_step=self.train_step,
                eval_step=self.eval_step,
                models=ModelStore(audit_dir / name),
                coordinator=identities.coordinators,
            )
            link = transport if files is None else files.link_for(name, transport)
            sites.append(_Hospital(hospital, link))
        network = _Network(coordinator, sites, transport, files, self)
        network.signer = identities.coordinator
        network.cases = {
            name: len(data)  # type: ignore[arg-type]
            for name, data in self.train.items()
            if data is not None
        }
        try:
            network.run()
            epsilon = {name: ledger.spent().epsilon for name, ledger in ledgers.items()}
        finally:
            for ledger in ledgers.values():
                ledger.close()
            if files is not None:
                files.close()
            shutil.rmtree(audit_dir, ignore_errors=True)
        set_weights(global_model, coordinator.weights)
        return SimulationResult(
            model=global_model,
            history=coordinator.history,
            seconds=time.perf_counter() - start,
            bytes_sent=dict(transport.bytes_sent + (files.bytes_sent if files else Counter())),
            epsilon=epsilon,
            final_evaluation=network.final_evaluation,
        )


class _Network:
    """The simulated network: the coordinator's round driver on a virtual clock, and the
    transports pumping what the coordinator hands out to the sites and their answers back.

    The clock stands still while messages move, and jumps to the driver's next deadline when
    none does (a site that vanished is then left out at that stage, as at a real deadline). A
    ``drop(site, round, stage)`` makes the site vanish for the rest of that round.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        sites: list[_Hospital],
        transport: InMemoryTransport,
        files: _FilesChannel | None,
        sim: Simulation,
    ) -> None:
        self.coordinator = coordinator
        self.sites = sites
        self.transport = transport
        self.files = files
        self.sim = sim
        self.now = 0.0
        #: The coordinator's identity (it signs the final model's card), each hospital's
        #: training cases, and each hospital's evaluation of the final model.
        self.signer: MessageSigner | None = None
        self.cases: dict[str, int] = {}
        self.final_evaluation: dict[str, dict[str, float]] = {}
        #: Sites that vanished in the open round.
        self.gone: set[str] = set()
        self._handed: set[tuple[str, str]] = set()
        asynchronous = sim.aggregation.is_async
        self.driver = RoundDriver(
            coordinator,
            Schedule(
                rounds=sim.rounds,
                round_timeout_s=ROUND_TIMEOUT_S,
                open_quorum=1,
                asynchronous=asynchronous,
            ),
            alive=lambda _now: {s.id for s in sites} - self.gone,
            started=0.0,
            report=self._report,
        )

    def _report(self, event: str, details: dict[str, Any]) -> None:
        if event == "round_closed":
            self.gone = set()
            if self.sim.on_round is not None:
                self.sim.on_round(self.coordinator.history[-1])

    def run(self) -> None:
        """Drive every round, then tell every site that the study ended."""
        stalled = False
        while not self.driver.finished:
            step = self.driver.step(self.now)
            moved = self._exchange()
            if moved or step not in (Step.IDLE, Step.WAITING):
                stalled = False
                continue
            deadline = self.driver.next_deadline()
            if stalled or deadline is None or deadline <= self.now:
                raise FederationError(
                    self.driver.waiting or f"round {self.coordinator.round} did not complete"
                )
            stalled = step is Step.WAITING
            self.now = deadline
        final = None
        contributed = {s for record in self.coordinator.history for s in record.sites}
        if self.signer is not None and self.coordinator.version > 0:
            final = FinalModel(
                self.sim.spec,
                federation=self.coordinator.federation,
                version=self.coordinator.version,
                weights=self.coordinator.weights,
                cases={s: n for s, n in self.cases.items() if s in contributed},
                signer=self.signer,
            )
        for site in self.sites:
            end = self.coordinator.end_for(site.id).to_envelope()
            self._hand(end if final is None else final.end_for(site.id))
        self._exchange()
        if self.files is not None:
            self.files.settle()

    def _hand(self, envelope: Envelope) -> None:
        """Send a coordinator message to its site once (the coordinator offers it until it is
        answered, as a long-poll would)."""
        site = envelope.header.recipient
        if self.files is not None and site in self.files.sites:
            self.files.offline.publish(envelope)
            return
        key = (site, message_key(envelope))
        if key not in self._handed:
            self._handed.add(key)
            self.transport.publish(envelope)

    def _exchange(self) -> bool:
        """Hand out what the coordinator offers, let each site answer, count the answers;
        whether any answer arrived."""
        for site in self.sites:
            envelope = self.coordinator.outgoing(site.id)
            if envelope is not None:
                self._hand(envelope)
        if self.files is not None:
            self.files.to_sites()
        self._deliver()
        arrived = 0
        if self.files is not None:
            open_round, delay = self.coordinator.round, self.sim.courier_delay
            due = (
                (lambda answered: open_round - answered >= delay)
                if self.sim.aggregation.is_async
                else None
            )
            self.files.to_coordinator(due=due)
            arrived += self.files.count(self._accept)
        for envelope in self.transport.collect():
            arrived += 1
            self._accept(envelope)
        return arrived > 0

    def _accept(self, envelope: Envelope) -> None:
        if envelope.header.kind is MessageKind.FINAL_EVALUATION:
            evaluation = FinalEvaluation.from_envelope(envelope)
            self.final_evaluation[envelope.header.sender] = dict(evaluation.metrics)
            return
        # A refused message is recorded in the coordinator's rejections, as in the service.
        with contextlib.suppress(AllianceError):
            self.coordinator.accept(envelope)

    def _deliver(self) -> None:
        """Each site handles every message waiting for it and sends its replies."""
        drop = self.sim.drop
        for site in self.sites:
            link = site.link
            while (env := link.fetch(site.id)) is not None:
                if site.id in self.gone:
                    continue
                if drop is not None and drop(site.id, env.header.round, _stage(env)):
                    self.gone.add(site.id)
                    continue
                for reply in site.hospital.handle(env).replies:
                    link.submit(reply)


@dataclass(frozen=True)
class _Hospital:
    """A simulated hospital (the deployment's core) and its end of the transport."""

    hospital: Hospital
    link: SiteLink

    @property
    def id(self) -> str:
        return self.hospital.id


def _strategy_spec(strategy: Strategy) -> StrategySpec:
    """The study's ``[strategy]`` for a strategy object: its registered name and options (a
    strategy of the researcher's own, registered under no name, is approved as FedAvg's plan)."""
    try:
        name = strategy_name(strategy.name)
    except ConfigError:
        return StrategySpec()
    options = {k: getattr(strategy, k) for k in STRATEGY_DEFAULTS[name] if hasattr(strategy, k)}
    return StrategySpec(name=name, **options)


@dataclass(frozen=True)
class _Identities:
    """Every party's certificate-bound signing key, from the simulation's consortium CA."""

    signers: dict[str, Signer]
    keys: dict[str, ed25519.Ed25519PrivateKey]
    coordinator: Signer
    coordinator_key: ed25519.Ed25519PrivateKey
    sites: MessageVerifier
    coordinators: MessageVerifier


class _FilesChannel:
    """The offline sites' folders, the coordinator's side of them (the service's
    :class:`~alliance.coordinator.offline.OfflineSites`), and the courier between them."""

    def __init__(
        self, federation: str, root: Path, sites: list[str], identities: _Identities
    ) -> None:
        self.root = root
        self.sites = frozenset(sites)
        self._ledgers = {name: BundleLedger(root / name / "state" / "bundles.db") for name in sites}
        self.offline = OfflineSites(
            federation=federation,
            root=root / "coordinator",
            site_keys={n: identities.keys[n].public_key() for n in sites},
            signer=identities.coordinator,
            key=identities.coordinator_key,
            verify=identities.sites,
        )
        self.links = {
            name: FileSiteLink(
                name,
                federation=federation,
                inbox=root / name / "inbox",
                outbox=root / name / "outbox",
                signer=identities.signers[name],
                key=identities.keys[name],
                coordinator_key=identities.coordinator_key.public_key(),
                verify=identities.coordinators,
                ledger=self._ledgers[name],
            )
            for name in sites
        }
        self.bytes_sent: Counter[str] = Counter()

    def link_for(self, site: str, online: SiteLink) -> SiteLink:
        return self.links.get(site, online)

    def to_sites(self) -> None:
        """The courier takes the coordinator's bundles to each offline site."""
        for name in sorted(self.sites):
            for file in carry(self.offline.outbox(name), self.root / name / "inbox"):
                self.bytes_sent[COORDINATOR] += file.stat().st_size

    def to_coordinator(self, *, due: Callable[[int], bool] | None = None) -> None:
        """... and brings their replies back: all of them, or those answering a round for
        which ``due(round)`` holds (the others stay in the courier's bag)."""
        for name in sorted(self.sites):
            source = self.root / name / "outbox"
            if due is not None:
                source = self._unpack(name, due)
            for file in carry(source, self.offline.inbox):
                self.bytes_sent[name] += file.stat().st_size

    def count(self, accept: Callable[[Envelope], None]) -> int:
        """Open every bundle the courier brought and hand its message to ``accept``; how many."""
        opened = 0

        def handle(bundle: OpenedBundle, _name: str, _size: int) -> None:
            nonlocal opened
            opened += 1
            accept(bundle.envelope)

        self.offline.collect(handle)
        return opened

    def _unpack(self, site: str, due: Callable[[int], bool]) -> Path:
        """Collect ``site``'s outbox into the courier's bag; a folder of the bundles now due."""
        bag = self.root / site / "courier"
        ready = bag / "due"
        ready.mkdir(parents=True, exist_ok=True)
        for _ in carry(self.root / site / "outbox", bag):
            pass
        for file in sorted(bag.glob(f"*{BUNDLE_SUFFIX}")):
            if due(peek_header(file.read_bytes()).round):
                file.replace(ready / file.name)
        return ready

    def settle(self) -> None:
        """Each site on files handled the message it fetched last: its bundle is done."""
        for link in self.links.values():
            link.settle()

    def close(self) -> None:
        for ledger in self._ledgers.values():
            ledger.close()
        self.offline.close()


def _stage(env: Envelope) -> str:
    if env.header.kind is MessageKind.SECAGG:
        return str(env.body.get("stage", ""))
    return "train" if env.header.kind is MessageKind.TRAIN_TASK else env.header.kind.value
