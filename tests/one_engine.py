"""Two drivers playing one script: the simulation and an in-process coordinator service.

:class:`Scenario` is a study (plain, buffered, secure, hospitals on files, DP-SGD) and the script
both drivers play: which site vanishes at which stage of which round, where the clock jumps when
nothing moves, and when the courier brings a file reply back. :func:`simulate` runs it with
:class:`~alliance.sim.simulation.Simulation`; :class:`ServiceRun` with a
:class:`~alliance.coordinator.service.CoordinatorService` (memory store, a clock it advances,
certificates from a consortium CA), real :class:`~alliance.site.agent.Site` objects answering
what ``next_message`` hands them with signed ``submit_update`` calls, and the hospitals on files
exchanging sealed bundles through the service's
:class:`~alliance.coordinator.offline.OfflineSites`, a
:class:`~alliance.transport.files.FileSiteLink` and a courier
(:func:`~alliance.transport.files.carry`). Each gives an :class:`Outcome`: the round records,
the study log, the rejected messages and the final weights. ``tests/integration/test_one_engine``
compares them.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ed25519
from torch import nn
from torch.utils.data import TensorDataset

from alliance.coordinator.offline import OfflineSites, message_key
from alliance.coordinator.service import CoordinatorService
from alliance.core.errors import AllianceError, ConfigError
from alliance.crypto.authority import CertificateAuthority
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.signing import Signer
from alliance.crypto.verifier import MessageVerifier
from alliance.models.training import get_weights
from alliance.privacy.ledger import PrivacyLedger
from alliance.protocol.aggregation import AggregationMode, AggregationPlan
from alliance.protocol.bundles import peek_header
from alliance.protocol.codec import decode_signed, encode_signed
from alliance.protocol.envelope import COORDINATOR, Envelope, MessageKind
from alliance.protocol.messages import TrainingPlan
from alliance.protocol.model_spec import NoOptions, register_model_options
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.sim.simulation import ROUND_TIMEOUT_S, Simulation
from alliance.site.agent import Site
from alliance.store.audit import AuditLog
from alliance.store.memory import MemoryStore
from alliance.transport.files import BUNDLE_SUFFIX, BundleLedger, FileSiteLink, carry

FED = "one-engine"
STUDY = "equiv"
SEED = 1
SITES = ("a", "b", "c", "d")
PLAN = TrainingPlan(local_epochs=1, batch_size=10, learning_rate=0.1, seed=SEED)
STAGE_TIMEOUT_S = SecAggPlan().stage_timeout_s
DELTA = PrivacyPlan().delta
ROUNDS_LOGGER = "alliance.coordinator.rounds"

Weights = dict[str, npt.NDArray[np.float32]]


def cases(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, 0] - x[:, 2] > 0).long()


TRAIN = {s: cases(i, 20) for i, s in enumerate(SITES)}
TEST = {s: cases(10 + i, 8) for i, s in enumerate(SITES)}


class TinyKind:
    """The study's model kind: ``nn.Linear(5, 2)`` seeded as the simulation seeds its model."""

    kind = "tiny"

    @staticmethod
    def check(table: Mapping[str, object]) -> None:
        """The tiny model takes no options."""
        if dict(table) != {"kind": "tiny"}:
            raise ConfigError(f"[model] the tiny model takes no options, got {dict(table)}")

    @staticmethod
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return tiny()


def tiny() -> nn.Module:
    return nn.Linear(5, 2)


register_model_options(TinyKind.kind, NoOptions.from_table)


@dataclass(frozen=True)
class Scenario:
    """A study and the script both drivers play."""

    name: str
    rounds: int = 3
    quorum: int | None = None
    secure: bool = False
    key_batch: int = 1
    asynchronous: bool = False
    max_staleness: int = 10
    offline: tuple[str, ...] = ()
    courier_delay: int = 0
    #: ``(site, round, stage)``: the site ignores that message and the rest of its round.
    drops: frozenset[tuple[str, int, str]] = field(default_factory=frozenset)
    #: Where the clock jumps, in order, each time nothing moves.
    jumps: tuple[float, ...] = ()
    #: Patient-level DP-SGD with this ε per study, and each site's budget (default: none).
    target_epsilon: float | None = None
    budgets: Mapping[str, float] = field(default_factory=dict)
    #: What the script must produce: each round's contributors, and who was refused.
    expect_sites: tuple[str, ...] = ()
    expect_rejected: tuple[str, ...] = ()
    expect_declined: tuple[str, ...] = ()

    @property
    def privacy(self) -> PrivacyPlan | None:
        if self.target_epsilon is None:
            return None
        return PrivacyPlan("dp-sgd", target_epsilon=self.target_epsilon, rounds=self.rounds)

    def drop(self, site: str, round_: int, stage: str) -> bool:
        return (site, round_, stage) in self.drops

    def study_toml(self) -> str:
        sites = ", ".join(f'"{s}"' for s in SITES)
        lines = [
            "[study]",
            f'id = "{STUDY}"',
            f"rounds = {self.rounds}",
            f"seed = {SEED}",
            f"sites = [{sites}]",
            f"round_timeout_s = {ROUND_TIMEOUT_S}",
            *([f"quorum = {self.quorum}"] if self.quorum is not None else []),
            "[model]",
            'kind = "tiny"',
            "[plan]",
            f"local_epochs = {PLAN.local_epochs}",
            f"batch_size = {PLAN.batch_size}",
            f"learning_rate = {PLAN.learning_rate}",
        ]
        if self.asynchronous:
            lines += ["[aggregation]", 'mode = "async"', f"max_staleness = {self.max_staleness}"]
        if self.secure:
            lines += ["[secure_aggregation]", "enabled = true", f"key_batch = {self.key_batch}"]
        if self.target_epsilon is not None:
            lines += [
                "[privacy]",
                'mechanism = "dp-sgd"',
                f"target_epsilon = {self.target_epsilon}",
            ]
        return "\n".join(lines) + "\n"


@dataclass
class Outcome:
    """What a driver produced."""

    history: list[dict[str, Any]]
    log: list[str]
    rejections: list[tuple[str, str]]
    weights: Weights


def stage_of(env: Envelope) -> str:
    """The stage a coordinator message asks a site to answer (as ``drop`` names it)."""
    if env.header.kind is MessageKind.SECAGG:
        return str(env.body.get("stage", ""))
    return "train" if env.header.kind is MessageKind.TRAIN_TASK else env.header.kind.value


def captured(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[tuple[str, str]]]:
    """The study log and the rejected messages, as the coordinator wrote them to its logger
    (a simulation keeps its coordinator and store to itself; its log lines are these)."""
    records = [r for r in caplog.records if r.name == ROUNDS_LOGGER]
    log = [str(r.args[1]) for r in records if r.msg == "study %s: %s" and r.args[0] == STUDY]
    rejected = [
        (str(r.args[0]), str(r.args[1])) for r in records if r.msg.startswith("rejected message")
    ]
    return log, rejected


# --- (a) the simulation -----------------------------------------------------------------------
def simulate(sc: Scenario, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    """Play ``sc`` with a :class:`Simulation` (``caplog`` must capture INFO of
    :data:`ROUNDS_LOGGER`)."""
    caplog.clear()
    result = Simulation(
        model_fn=tiny,
        sites=TRAIN,
        test=TEST,
        rounds=sc.rounds,
        plan=PLAN,
        seed=SEED,
        federation=FED,
        study=STUDY,
        secagg=SecAggPlan(enabled=True, key_batch=sc.key_batch) if sc.secure else None,
        drop=sc.drop,
        quorum=sc.quorum,
        offline=sc.offline,
        files_dir=tmp_path / "sim" if sc.offline else None,
        aggregation=AggregationPlan(AggregationMode.ASYNC, max_staleness=sc.max_staleness)
        if sc.asynchronous
        else None,
        courier_delay=sc.courier_delay,
        privacy=sc.privacy,
        budget_epsilon=sc.budgets,
        ledger_dir=tmp_path / "sim-ledgers",
    ).run()
    log, rejected = captured(caplog)
    return Outcome([r.to_json() for r in result.history], log, rejected, get_weights(result.model))


# --- (b) the service ------------------------------------------------------------------------
class ServiceRun:
    """An in-process coordinator service, its sites and a courier, playing a scenario."""

    def __init__(self, sc: Scenario, root: Path) -> None:
        self.sc = sc
        self.root = root
        self.now = 0.0
        ca = CertificateAuthority.create(FED)
        coordinator = ca.issue(COORDINATOR, Role.COORDINATOR, hosts=("localhost",))
        self.trust = TrustStore(ca.certificate)
        self.parties = {s: ca.issue(s, Role.SITE) for s in SITES}
        self.signers = {s: Signer(p.signing_key, p.certificate) for s, p in self.parties.items()}
        signer = Signer(coordinator.signing_key, coordinator.certificate)
        self.from_coordinator = MessageVerifier(self.trust, role=Role.COORDINATOR)
        self.offline: OfflineSites | None = None
        if sc.offline:
            self.offline = OfflineSites(
                federation=FED,
                root=root / "coordinator",
                site_keys={s: self.parties[s].signing_key.public_key() for s in sc.offline},
                signer=signer,
                key=coordinator.signing_key,
                verify=MessageVerifier(self.trust, role=Role.SITE),
            )
        self.bundles = {s: BundleLedger(root / s / "state" / "bundles.db") for s in sc.offline}
        self.privacy = {
            s: PrivacyLedger.open(
                root / s / "privacy.ledger", budget_epsilon=sc.budgets.get(s, math.inf), delta=DELTA
            )
            for s in (SITES if sc.privacy is not None else ())
        }
        self.links = {s: self._link(s, coordinator.signing_key.public_key()) for s in sc.offline}
        self.sites = [self._site(s) for s in SITES]
        self.service = CoordinatorService(
            federation=FED,
            store=MemoryStore(),
            signer=signer,
            trust=self.trust,
            audit=AuditLog(root / "audit.log", actor=COORDINATOR),
            model_kind=lambda table: TinyKind(),  # type: ignore[arg-type,return-value]
            model_check=TinyKind.check,
            clock=lambda: self.now,
            offline=self.offline,
        )
        #: Sites that vanished in the open round; messages already handed to each site.
        self.gone: set[str] = set()
        self.handed: set[tuple[str, str]] = set()
        self.closed = 0
        self.seq = 0
        #: Uploads the service refused, as the sites were told.
        self.rejections: list[tuple[str, str]] = []

    def _link(self, site: str, coordinator_key: ed25519.Ed25519PublicKey) -> FileSiteLink:
        """The folders of a hospital on files."""
        return FileSiteLink(
            site,
            federation=FED,
            inbox=self.root / site / "inbox",
            outbox=self.root / site / "outbox",
            signer=self.signers[site],
            key=self.parties[site].signing_key,
            coordinator_key=coordinator_key,
            verify=self.from_coordinator,
            ledger=self.bundles[site],
        )

    def _site(self, site: str) -> Site:
        return Site(
            site,
            federation=FED,
            model=TinyKind.build(SEED),
            train=TensorDataset(*TRAIN[site]),
            test=TensorDataset(*TEST[site]),
            link=self.links.get(site),
            ledger=self.privacy.get(site),
            signer=self.signers[site],
            peers=MessageVerifier(self.trust, role=Role.SITE),
        )

    def run(self) -> Outcome:
        """Submit the study and play the script until the study finished and every site was
        told so."""
        self.service.submit_study("operator", self.sc.study_toml())
        jumps = list(self.sc.jumps)
        try:
            while self.service.study_status(STUDY)["status"] != "finished":
                moved = self.exchange()
                self.service.tick()
                moved |= self.after_tick()
                if moved:
                    continue
                assert jumps, f"stalled at t={self.now}: {self.service.study_status(STUDY)}"
                self.now = jumps.pop(0)
            assert not jumps, f"the study finished before the clock jumped to {jumps}"
            self.exchange()  # every site is told the study ended, at its final version
            ended = {site.id: site.final_version for site in self.sites if site.finished}
            assert ended == dict.fromkeys(SITES, self.sc.rounds)
        finally:
            self.close()
        version, weights, _ = self.service.store.latest_model(STUDY)
        history = self.service.study_status(STUDY)["history"]
        assert version == len(history)
        # Status adds the version each round's metrics measured: the one the round trained.
        for entry in history:
            assert entry.pop("evaluated_version") == entry["model_version"] - 1
        log = [line["message"] for line in self.service.study_logs(STUDY, 0)]
        stored = [(r.sender, r.reason) for r in self.service.store.rejections(STUDY)]
        # Every upload refused over the API was recorded (refused bundles are recorded only).
        assert set(self.rejections) <= set(stored)
        return Outcome(history, log, stored, {k: np.asarray(v) for k, v in weights.items()})

    def after_tick(self) -> bool:
        """Whether the tick changed the study (its log grew); a closed round brings back the
        sites that vanished in it."""
        lines = self.service.study_logs(STUDY, self.seq)
        if lines:
            self.seq = lines[-1]["seq"]
        closed = self.service.study_status(STUDY)["rounds_closed"]
        if closed != self.closed:
            self.closed = closed
            self.gone = set()
        return bool(lines)

    def exchange(self) -> bool:
        """The courier takes the bundles out, every site handles what it is offered, and the
        courier brings back the replies that are due; whether anything moved."""
        moved = False
        for s in self.sc.offline:
            assert self.offline is not None
            moved |= bool(list(carry(self.offline.outbox(s), self.root / s / "inbox")))
        for site in self.sites:
            moved |= self.on_files(site) if site.id in self.links else self.online(site)
        for s in self.sc.offline:
            moved |= self.courier_back(s)
        return moved

    def vanishes(self, site: str, env: Envelope) -> bool:
        """Whether ``site`` ignores ``env``: it vanished earlier in the round or does now."""
        if site in self.gone or self.sc.drop(site, env.header.round, stage_of(env)):
            self.gone.add(site)
            return True
        return False

    def online(self, site: Site) -> bool:
        """The site polls and answers over the service's API; whether it got a new message."""
        data = self.service.next_message(site.id, 0)
        if data is None:
            return False
        env = decode_signed(data, self.from_coordinator).envelope
        key = (site.id, message_key(env))
        if key in self.handed:
            return False  # offered again until answered: a long-poll hands it out once
        self.handed.add(key)
        if self.vanishes(site.id, env):
            return True
        for reply in site.handle(env):
            try:
                self.service.submit_update(site.id, encode_signed(reply, self.signers[site.id]))
            except AllianceError as exc:
                self.rejections.append((site.id, str(exc)))
        return True

    def on_files(self, site: Site) -> bool:
        """The site handles every bundle in its inbox; whether there was one."""
        link = self.links[site.id]
        moved = False
        while (env := link.fetch(site.id)) is not None:
            moved = True
            if self.vanishes(site.id, env):
                continue
            for reply in site.handle(env):
                link.submit(reply)
        return moved

    def courier_back(self, site: str) -> bool:
        """Carry the site's replies to the coordinator; in an asynchronous study only those
        answering a round at least ``courier_delay`` rounds before the open one."""
        assert self.offline is not None
        source = self.root / site / "outbox"
        if self.sc.asynchronous:
            bag, source = self.root / site / "bag", self.root / site / "bag" / "due"
            source.mkdir(parents=True, exist_ok=True)
            for _ in carry(self.root / site / "outbox", bag):
                pass
            status = self.service.study_status(STUDY)
            open_round = (status["open_round"] or {}).get("round", 0)
            for file in sorted(bag.glob(f"*{BUNDLE_SUFFIX}")):
                if open_round - peek_header(file.read_bytes()).round >= self.sc.courier_delay:
                    shutil.move(file, source / file.name)
        return bool(list(carry(source, self.offline.inbox)))

    def close(self) -> None:
        for ledger in self.bundles.values():
            ledger.close()
        for private in self.privacy.values():
            private.close()
        if self.offline is not None:
            self.offline.close()
