"""Under secure aggregation a restarted round re-masks the recorded update, never a new one.

Three real sites (:class:`~alliance.site.agent.Site`, DP-SGD, each with its own privacy ledger)
and the coordinator's :class:`~alliance.coordinator.secure.SecureRound`, messages passed by
hand. Attempt 1 of round 1 dies after the key adverts (the coordinator crashed); site ``a`` is
restarted too, so its in-memory state is gone. Attempt 2 of the same round, with fresh keys,
must sum exactly the updates the sites recorded in their ledgers in attempt 1: a second
training would be a second noisy release of the round under one charge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from alliance.coordinator.secure import SecureRound
from alliance.crypto.authority import CertificateAuthority
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.signing import Signer
from alliance.crypto.verifier import MessageVerifier
from alliance.models.training import get_weights
from alliance.privacy.ledger import PrivacyLedger
from alliance.protocol.codec import decode
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import ModelUpdate, TrainingPlan, TrainTask
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.secagg import RoundContext
from alliance.site.agent import Site

SITES = ("a", "b", "c")
FED, STUDY = "fed", "study"
PLAN = TrainingPlan(local_epochs=1, batch_size=16, learning_rate=0.1, seed=1)
PRIVACY = PrivacyPlan(mechanism="dp-sgd", noise_multiplier=1.5, rounds=2)
SECAGG = SecAggPlan(enabled=True)


def model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Linear(5, 2)


def cases(seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())


class Consortium:
    def __init__(self, root: Path) -> None:
        ca = CertificateAuthority.create(FED)
        self.signers = {}
        for s in SITES:
            issued = ca.issue(s, Role.SITE)
            self.signers[s] = Signer(issued.signing_key, issued.certificate)
        self.peers = MessageVerifier(TrustStore(ca.certificate), role=Role.SITE)
        self.root = root
        self.ledgers: dict[str, PrivacyLedger] = {}
        self.sites: dict[str, Site] = {}
        self.weights = get_weights(model())
        for s in SITES:
            self.start(s)

    def start(self, site: str) -> None:
        """Open (or reopen, after a restart) the site and its ledger."""
        if site in self.ledgers:
            self.ledgers[site].close()
        path = self.root / site / "privacy.ledger"
        self.ledgers[site] = PrivacyLedger.open(path, budget_epsilon=50.0, delta=1e-5)
        self.sites[site] = Site(
            site,
            federation=FED,
            model=model(),
            train=cases(SITES.index(site)),
            test=None,
            link=None,
            ledger=self.ledgers[site],
            signer=self.signers[site],
            peers=self.peers,
        )

    def attempt(self, attempt: int) -> SecureRound:
        """The coordinator opens an attempt of round 1 and every site answers its task."""
        secure = SecureRound(
            context=RoundContext(FED, STUDY, 1, attempt),
            cohort=SITES,
            plan=SECAGG,
            reference=self.weights,
            deadline=None,
            peers=self.peers,
        )
        for s in SITES:
            header = Header(MessageKind.TRAIN_TASK, FED, STUDY, 1, COORDINATOR, s)
            task = TrainTask(header, 0, PLAN, self.weights, PRIVACY, SECAGG, secure.cohort, attempt)
            for reply in self.sites[s].handle(task.to_envelope()):
                assert secure.accept(reply)
        return secure

    def finish(self, secure: SecureRound) -> None:
        while secure.stage != "done":
            assert secure.advance(now=0.0, stage_timeout_s=1.0, force=True)
            assert secure.aborted is None, secure.aborted
            for msg in secure.messages():
                for reply in self.sites[msg.header.recipient].handle(msg.to_envelope()):
                    secure.accept(reply)

    def recorded(self, site: str) -> ModelUpdate:
        release = self.ledgers[site].release(study=STUDY, round=1)
        assert release is not None
        return ModelUpdate.from_envelope(decode(release.reply))

    def close(self) -> None:
        for ledger in self.ledgers.values():
            ledger.close()


def test_a_new_attempt_after_a_restart_masks_the_recorded_update(tmp_path: Path) -> None:
    fed = Consortium(tmp_path)
    try:
        fed.attempt(1)  # adverts in; then the coordinator crashes
        first = {s: fed.recorded(s) for s in SITES}
        fed.start("a")  # site a restarts: only its ledger remembers round 1
        second = fed.attempt(2)
        fed.finish(second)
        assert second.result is not None
        assert second.result.sites == 3
        for s in SITES:
            assert [c.round for c in fed.ledgers[s].entries()] == [1]
            assert fed.recorded(s).header == first[s].header  # recorded once, kept
        for name, got in second.result.mean_delta.items():
            want = np.mean([first[s].delta[name] for s in SITES], axis=0)
            np.testing.assert_allclose(got, want, atol=2e-4)
    finally:
        fed.close()
