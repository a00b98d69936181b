"""A site's side of key batches (alliance.site.secure), against the coordinator's SecureRound.

- a set-up task or a slot's task delivered twice is answered with the same message, trained once;
  so is a task with per-round keys (a key batch of one slot, bound to the attempt itself);
- a task naming a spent slot, or a batch the site does not hold, is declined before training;
- a set-up's share routing that arrives after its round moved on is still taken, so the site
  masks with the batch's later slots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from alliance.coordinator.secure import BatchKeys, SecureRound
from alliance.core.errors import ProtocolError
from alliance.crypto.authority import CertificateAuthority
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.signing import Signer
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import TrainingPlan, TrainTask
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.protocol.secagg_messages import KeyAdverts, SecAggMessage
from alliance.secagg import RoundContext
from alliance.site.privatize import LocalUpdate
from alliance.site.secure import SecureRounds

SITES = ("a", "b", "c")
PLAN = SecAggPlan(enabled=True, key_batch=3)
WEIGHTS = {"w": np.zeros(4, dtype=np.float32)}


@pytest.fixture(scope="module")
def identities() -> tuple[dict[str, Signer], MessageVerifier]:
    ca = CertificateAuthority.create("fed")
    issued = {s: ca.issue(s, Role.SITE) for s in SITES}
    signers = {s: Signer(p.signing_key, p.certificate) for s, p in issued.items()}
    return signers, MessageVerifier(TrustStore(ca.certificate), role=Role.SITE)


class Federation:
    """Three sites' SecureRounds and the coordinator's attempts, messages passed by hand."""

    def __init__(
        self, identities: tuple[dict[str, Signer], MessageVerifier], plan: SecAggPlan = PLAN
    ) -> None:
        signers, peers = identities
        self.plan = plan
        self.peers = peers
        self.sites = {s: SecureRounds(s, signer=signers[s], peers=peers) for s in SITES}
        self.trained: list[tuple[str, int]] = []
        self.keys: BatchKeys | None = None

    def attempt(self, round_: int, attempt: int) -> SecureRound:
        secure = SecureRound(
            context=RoundContext("fed", "study", round_, attempt),
            cohort=SITES,
            plan=self.plan,
            reference=WEIGHTS,
            deadline=None,
            peers=self.peers,
            keys=self.keys,
        )
        self.keys = secure.keys
        return secure

    def task(self, secure: SecureRound, site: str) -> TrainTask:
        ctx = secure.context
        header = Header(MessageKind.TRAIN_TASK, "fed", "study", ctx.round, COORDINATOR, site)
        return TrainTask(
            header,
            0,
            TrainingPlan(),
            WEIGHTS,
            PrivacyPlan(),
            self.plan,
            secure.cohort,
            ctx.attempt,
            secure.key_slot,
        )

    def train(self, site: str, round_: int) -> Callable[[], tuple[LocalUpdate, dict[str, float]]]:
        def run() -> tuple[LocalUpdate, dict[str, float]]:
            self.trained.append((site, round_))
            delta = {"w": np.full(4, 0.01 * (SITES.index(site) + 1), dtype=np.float32)}
            return LocalUpdate(delta, 10, 0.5, None), {"train_loss": 0.5}

        return run

    def begin(self, secure: SecureRound, site: str) -> list[SecAggMessage]:
        task = self.task(secure, site)
        return self.sites[site].begin(task, self.train(site, task.header.round))

    def finish(
        self, secure: SecureRound, *, skip: Callable[[SecAggMessage], bool] = lambda _: False
    ) -> None:
        while secure.stage != "done":
            assert secure.advance(now=0.0, stage_timeout_s=1.0, force=True)
            assert secure.aborted is None, secure.aborted
            for msg in secure.messages():
                if not skip(msg):
                    for reply in self.sites[msg.header.recipient].handle(msg):
                        secure.accept(reply.to_envelope())


def test_a_task_delivered_twice_is_answered_once_and_trained_once(
    identities: tuple[dict[str, Signer], MessageVerifier],
) -> None:
    fed = Federation(identities)
    set_up = fed.attempt(1, 10)
    for site in SITES:
        first, again = fed.begin(set_up, site), fed.begin(set_up, site)
        assert first == again
        assert first[0].stage == "advert"
        assert set_up.accept(first[0].to_envelope())
        assert not set_up.accept(again[0].to_envelope())  # the very bytes: a resend
    fed.finish(set_up)
    assert set_up.result is not None
    assert set_up.result.sites == 3
    use = fed.attempt(2, 11)
    assert use.key_slot == RoundContext("fed", "study", 1, 10, 1)
    for site in SITES:
        first, again = fed.begin(use, site), fed.begin(use, site)
        assert first == again
        assert first[0].stage == "masked"
        assert use.accept(first[0].to_envelope())
    fed.finish(use)
    assert use.result is not None
    np.testing.assert_allclose(use.result.mean_delta["w"], 0.02, atol=1e-4)
    assert sorted(fed.trained) == sorted((s, r) for s in SITES for r in (1, 2))


def test_per_round_keys_take_the_same_path_and_answer_a_task_twice_with_the_same_advert(
    identities: tuple[dict[str, Signer], MessageVerifier],
) -> None:
    fed = Federation(identities, SecAggPlan(enabled=True))
    for round_ in (1, 2):
        secure = fed.attempt(round_, 5)
        assert (secure.keys, secure.key_slot) == (None, None)
        for site in SITES:
            first, again = fed.begin(secure, site), fed.begin(secure, site)
            assert first == again
            assert isinstance(first[0], KeyAdverts)
            assert [a.context for a in first[0].adverts] == [secure.context]  # no slot
            assert "advert" in first[0].to_envelope().body["payload"]  # the single form
            assert secure.accept(first[0].to_envelope())
            assert not secure.accept(again[0].to_envelope())
        fed.finish(secure)
        assert secure.result is not None
        assert secure.survivors == SITES
        np.testing.assert_allclose(secure.result.mean_delta["w"], 0.02, atol=1e-4)
    assert sorted(fed.trained) == sorted((s, r) for s in SITES for r in (1, 2))
    # A per-round study's task that names a key slot is declined before training.
    secure = fed.attempt(3, 5)
    task = fed.task(secure, "a")
    slotted = dataclasses.replace(task, key_slot=secure.context.with_slot(0))
    assert fed.sites["a"].begin(slotted, fed.train("a", 3)) == []
    assert ("a", 3) not in fed.trained


def test_a_spent_slot_or_a_batch_not_held_is_declined_before_training(
    identities: tuple[dict[str, Signer], MessageVerifier],
) -> None:
    fed = Federation(identities)
    set_up = fed.attempt(1, 20)
    for site in SITES:
        set_up.accept(fed.begin(set_up, site)[0].to_envelope())
    fed.finish(set_up)
    # A lying coordinator names slot 0 again in round 2: every site declines, none trains.
    replay = fed.attempt(2, 21)
    replay_task = fed.task(replay, "a")
    stale = TrainTask(
        replay_task.header,
        0,
        TrainingPlan(),
        WEIGHTS,
        PrivacyPlan(),
        PLAN,
        replay.cohort,
        replay_task.attempt,
        set_up.key_slot,
    )
    assert fed.sites["a"].begin(stale, fed.train("a", 2)) == []
    # A batch the site never held.
    foreign = RoundContext("fed", "study", 1, 99, 1)
    other = TrainTask(
        replay_task.header,
        0,
        TrainingPlan(),
        WEIGHTS,
        PrivacyPlan(),
        PLAN,
        replay.cohort,
        replay_task.attempt,
        foreign,
    )
    assert fed.sites["a"].begin(other, fed.train("a", 2)) == []
    assert ("a", 2) not in fed.trained


def test_a_late_share_routing_is_kept_for_the_later_slots(
    identities: tuple[dict[str, Signer], MessageVerifier],
) -> None:
    fed = Federation(identities)
    set_up = fed.attempt(1, 30)
    for site in SITES:
        set_up.accept(fed.begin(set_up, site)[0].to_envelope())
    late: list[SecAggMessage] = []

    def courier_late(msg: SecAggMessage) -> bool:
        if msg.stage == "shares" and msg.header.recipient == "c":
            late.append(msg)
            return True
        return False

    fed.finish(set_up, skip=courier_late)
    assert set_up.survivors == ("a", "b")  # c never got its routing in time: dropped
    use = fed.attempt(2, 31)
    assert fed.begin(use, "c") == []  # without its shares c cannot mask yet
    # The courier arrives: c takes the shares of every slot, and its masked input of round 1
    # comes too late to count (the coordinator has moved on and refuses it).
    (answer,) = fed.sites["c"].handle(late[0])
    assert (answer.stage, answer.header.round) == ("masked", 1)
    with pytest.raises(ProtocolError, match="stage"):
        set_up.accept(answer.to_envelope())
    after = fed.attempt(3, 32)
    replies = fed.begin(after, "c")
    assert [m.stage for m in replies] == ["masked"]
