"""One round engine: the simulation and the service drive rounds the same way.

Each scenario is run twice over the same scripted sequence of messages, clock jumps and
dropouts: (a) by :class:`~alliance.sim.simulation.Simulation`, (b) by an in-process
:class:`~alliance.coordinator.service.CoordinatorService` (memory store, a clock this test
advances, certificates from a consortium CA) whose hospitals are real
:class:`~alliance.site.agent.Site` objects answering what ``next_message`` hands them with
``submit_update``, and whose hospitals on files exchange sealed bundles through the service's
:class:`~alliance.coordinator.offline.OfflineSites`, a :class:`FileSiteLink` and a courier
(:func:`~alliance.transport.files.carry`). Both must produce the same rounds (every field of
every :class:`RoundRecord`), the same study log (rounds opened and closed, stages, refusals,
rejections), the same rejected messages and bit-identical final weights.

The script, as both sides play it:

- every site fetches what it is offered and answers it at once; ``drops`` makes a site ignore
  every message of a round from the named stage on (it vanishes for the rest of the round and is
  back for the next one: in the service it keeps polling, so it counts as alive);
- the clock stands still while messages move and jumps, when nothing moves, to the times in
  ``jumps`` (the simulation jumps to its driver's next deadline; the script says where that
  deadline must fall);
- the courier carries the bundles of the sites on files at every exchange, and in asynchronous
  studies brings a reply back ``courier_delay`` rounds after the round it answers.
"""

from __future__ import annotations

import logging
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


@dataclass(frozen=True)
class Scenario:
    """A study and the script both drivers play."""

    name: str
    rounds: int = 3
    quorum: int | None = None
    secure: bool = False
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
            lines += ["[secure_aggregation]", "enabled = true"]
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
    """The study log and the rejections the coordinator wrote to its logger."""
    records = [r for r in caplog.records if r.name == ROUNDS_LOGGER]
    log = [str(r.args[1]) for r in records if r.msg == "study %s: %s" and r.args[0] == STUDY]
    rejected = [
        (str(r.args[0]), str(r.args[1])) for r in records if r.msg.startswith("rejected message")
    ]
    return log, rejected


# --- (a) the simulation -----------------------------------------------------------------------
def simulate(sc: Scenario, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
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
        secagg=SecAggPlan(enabled=True) if sc.secure else None,
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
        trust = TrustStore(ca.certificate)
        parties = {s: ca.issue(s, Role.SITE) for s in SITES}
        self.signers = {s: Signer(p.signing_key, p.certificate) for s, p in parties.items()}
        coordinator_signer = Signer(coordinator.signing_key, coordinator.certificate)
        self.from_coordinator = MessageVerifier(trust, role=Role.COORDINATOR)
        self.offline: OfflineSites | None = None
        if sc.offline:
            self.offline = OfflineSites(
                federation=FED,
                root=root / "coordinator",
                site_keys={s: parties[s].signing_key.public_key() for s in sc.offline},
                signer=coordinator_signer,
                key=coordinator.signing_key,
                verify=MessageVerifier(trust, role=Role.SITE),
            )
        self.ledgers = {s: BundleLedger(root / s / "state" / "bundles.db") for s in sc.offline}
        self.links = {
            s: FileSiteLink(
                s,
                federation=FED,
                inbox=root / s / "inbox",
                outbox=root / s / "outbox",
                signer=self.signers[s],
                key=parties[s].signing_key,
                coordinator_key=coordinator.signing_key.public_key(),
                verify=self.from_coordinator,
                ledger=self.ledgers[s],
            )
            for s in sc.offline
        }
        self.ledgers_dp = {
            s: PrivacyLedger.open(
                root / s / "privacy.ledger", budget_epsilon=sc.budgets.get(s, math.inf), delta=DELTA
            )
            for s in (SITES if sc.privacy is not None else ())
        }
        self.sites = [
            Site(
                s,
                federation=FED,
                model=TinyKind.build(SEED),
                train=TensorDataset(*TRAIN[s]),
                test=TensorDataset(*TEST[s]),
                link=self.links.get(s),
                ledger=self.ledgers_dp.get(s),
                signer=self.signers[s],
                peers=MessageVerifier(trust, role=Role.SITE),
            )
            for s in SITES
        ]
        self.service = CoordinatorService(
            federation=FED,
            store=MemoryStore(),
            signer=coordinator_signer,
            trust=trust,
            audit=AuditLog(root / "audit.log", actor=COORDINATOR),
            model_kind=lambda table: TinyKind(),  # type: ignore[arg-type,return-value]
            model_check=TinyKind.check,
            clock=lambda: self.now,
            offline=self.offline,
        )
        self.gone: set[str] = set()
        self.handed: set[tuple[str, str]] = set()
        self.closed = 0
        self.seq = 0
        self.rejections: list[tuple[str, str]] = []

    def run(self) -> Outcome:
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
        if site in self.gone or self.sc.drop(site, env.header.round, stage_of(env)):
            self.gone.add(site)
            return True
        return False

    def online(self, site: Site) -> bool:
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
        for ledger in self.ledgers.values():
            ledger.close()
        for private in self.ledgers_dp.values():
            private.close()
        if self.offline is not None:
            self.offline.close()


SCENARIOS = [
    # Plain FedAvg: c is silent in round 2, which closes at its deadline with the quorum.
    Scenario(
        "plain",
        quorum=3,
        drops=frozenset({("c", 2, "train")}),
        jumps=(ROUND_TIMEOUT_S,),
        expect_sites=("abcd", "abd", "abcd"),
    ),
    # Buffered: b is on files and its courier brings its reply one version late (it counts,
    # discounted); the online sites make a version per pass, waiting for nobody.
    Scenario(
        "buffered",
        asynchronous=True,
        offline=("b",),
        courier_delay=1,
        expect_sites=("acd", "abcd", "acd"),
    ),
    # Buffered with a courier slower than max_staleness: b's reply is refused as too old.
    Scenario(
        "buffered-too-late",
        rounds=4,
        asynchronous=True,
        max_staleness=1,
        offline=("b",),
        courier_delay=2,
        expect_sites=("acd", "acd", "acd", "acd"),
        expect_rejected=("b",),
    ),
    # Secure aggregation: in round 1 b vanishes when the shares come, after sharing its keys:
    # the stage times out and b's masks are removed with the others' shares. In round 2 d
    # vanishes at the unmask stage, after its masked vector is in: the sum holds it.
    Scenario(
        "secure",
        rounds=2,
        secure=True,
        drops=frozenset({("b", 1, "shares"), ("d", 2, "unmask")}),
        jumps=(STAGE_TIMEOUT_S, 2 * STAGE_TIMEOUT_S),
        expect_sites=("acd", "abcd"),
    ),
    # A site on files in synchronous rounds: every round waits for its courier; d is silent in
    # round 2.
    Scenario(
        "files",
        quorum=3,
        offline=("b",),
        drops=frozenset({("d", 2, "train")}),
        jumps=(ROUND_TIMEOUT_S,),
        expect_sites=("abcd", "abc", "abcd"),
    ),
]

# DP-SGD: d's budget cannot pay for the study, so it declines every task ("budget"); the others
# train under DP-SGD, whose batches and noise come from a CSPRNG (different on every run), so
# here rounds, log and refusals are compared, not the weights.
PRIVATE = Scenario(
    "private",
    rounds=2,
    quorum=3,
    target_epsilon=1.0,
    budgets={"d": 0.1},
    expect_sites=("abc", "abc"),
    expect_declined=("d", "d"),
)


def check_script(sc: Scenario, outcome: Outcome) -> None:
    """The script played out as written (else both drivers could agree on a script unplayed)."""
    assert ["".join(r["sites"]) for r in outcome.history] == list(sc.expect_sites)
    assert [r["model_version"] for r in outcome.history] == list(range(1, sc.rounds + 1))
    assert [r["num_examples"] for r in outcome.history] == [20 * len(s) for s in sc.expect_sites]
    assert [site for site, _ in outcome.rejections] == list(sc.expect_rejected)
    declined = [line.split()[0] for line in outcome.log if " declined round " in line]
    assert declined == list(sc.expect_declined)


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_the_simulation_and_the_service_drive_the_same_rounds(
    sc: Scenario, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ROUNDS_LOGGER)
    simulated = simulate(sc, tmp_path, caplog)
    check_script(sc, simulated)
    served = ServiceRun(sc, tmp_path / "service").run()

    assert served.history == simulated.history
    assert served.log == simulated.log
    assert served.rejections == simulated.rejections
    assert served.weights.keys() == simulated.weights.keys()
    for name, value in simulated.weights.items():
        assert served.weights[name].dtype == value.dtype
        assert served.weights[name].tobytes() == value.tobytes(), name


def test_a_site_over_budget_declines_the_same_tasks_in_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ROUNDS_LOGGER)
    simulated = simulate(PRIVATE, tmp_path, caplog)
    check_script(PRIVATE, simulated)
    served = ServiceRun(PRIVATE, tmp_path / "service").run()

    def rounds(outcome: Outcome) -> list[tuple[int, int, list[str], int]]:
        return [
            (r["round"], r["model_version"], r["sites"], r["num_examples"]) for r in outcome.history
        ]

    assert rounds(served) == rounds(simulated)
    assert served.log == simulated.log
    assert served.rejections == simulated.rejections
