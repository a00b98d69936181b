"""The coordinator and its round loop, written once for every transport, store and strategy.

A round: the coordinator opens it for its participants and offers each a
:class:`~alliance.protocol.messages.TrainTask` (round, model version, plan, weights), pushed to
a mailbox (the simulation) or handed out when the site asks (:meth:`Coordinator.task_for`, the
HTTPS service). Sites train and submit a :class:`~alliance.protocol.messages.ModelUpdate`. Each
update is checked before it counts: bound to this federation, study and round, from a
participant that has not yet answered, with a fresh nonce, for the current model version, with
the model's parameter names, shapes, dtypes and finite values. A rejected message changes no
state; the reason is kept in :attr:`Coordinator.rejections` and in the store.

All state lives in a :class:`~alliance.store.state.CoordinatorStore` (in memory for the
simulation, SQL for the service), each change in one transaction. A coordinator built over a
store that already holds the study resumes it: same round, same model version, same strategy
state, updates already received still counted once. An update sent again (a retry after a lost
answer, or a site that retrained the same round after a crash) is recognised by its content
digest and acknowledged as a duplicate, never counted twice.

When every participant has answered (or, at :meth:`Coordinator.close_round`, at least the
quorum has), the strategy aggregates the updates, loaded one at a time in sorted site order,
into a new model version.

A site may decline a round with a :class:`~alliance.protocol.messages.Refusal` (its privacy
budget would be exceeded); it is then not waited for. In a study with secure aggregation the
round runs the stages of :class:`~alliance.coordinator.secure.SecureRound` instead: no update is
stored, the coordinator only ever holds masked vectors and finally their sum, from which the
strategy takes the weighted mean as if it were one site's update (privacy and secure aggregation
wrap aggregation; strategies do not know about them). :meth:`Coordinator.advance` moves the
stages on; :meth:`Coordinator.outgoing` is what a site receives next, whichever the stage.

A study with ``[aggregation] mode = "async"`` (:mod:`alliance.protocol.aggregation`) runs
buffered, staleness-aware rounds instead (:mod:`alliance.coordinator.buffered`): an update
trained on an older model version, up to ``max_staleness`` versions behind, still counts in the
open round, discounted by ``(1 + staleness) ** -a``; a round is complete once ``buffer`` updates
are in, and :meth:`Coordinator.close_round` needs only one. With a mailbox, a site whose task is
still unanswered and young enough to count gets no new task when the next round opens, so a
hospital waiting for its courier does not train superseded versions; the same holds for the
sites named ``offline`` (a courier carries their messages) whoever asks for their task. Each
:class:`RoundRecord` then lists the contributors' staleness and share of the aggregate.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from alliance.algorithms.strategies import SiteUpdate, Strategy, update_shares
from alliance.coordinator.buffered import buffered_updates, check_late_round, check_late_update
from alliance.coordinator.secure import BatchKeys, SecureRound
from alliance.core.errors import AllianceError, ConfigError, FederationError, ProtocolError
from alliance.core.faults import crash_point
from alliance.evaluation.ranking import topk_from_counts
from alliance.protocol.aggregation import AggregationPlan, check_combination
from alliance.protocol.codec import SignatureVerifier, content_digest
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import (
    ModelUpdate,
    Refusal,
    StudyEnd,
    TrainingPlan,
    TrainTask,
    check_same_shapes,
)
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.protocol.study import effective_quorum
from alliance.secagg import RoundContext
from alliance.store.memory import MemoryStore
from alliance.store.state import (
    CoordinatorStore,
    DuplicateUpdate,
    RoundStatus,
    StoredEvent,
    StoredRejection,
    StudyRecord,
    StudyStatus,
    UpdateMeta,
)
from alliance.transport.base import CoordinatorMailbox

__all__ = ["Coordinator", "Receipt", "Rejection", "RoundRecord"]

logger = logging.getLogger(__name__)
Weights = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Rejection:
    """A message the coordinator refused, and why."""

    round: int
    sender: str
    reason: str


class Receipt(enum.Enum):
    """What became of an update the coordinator accepted."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class RoundRecord:
    """What a closed round produced: contributors and the sites' aggregate metrics.

    In asynchronous rounds ``staleness`` gives each contributor's staleness (model versions
    between the one it trained on and the one this round improved) and ``shares`` its
    normalised weight in the aggregate; both are empty for synchronous rounds.
    """

    round: int
    model_version: int
    sites: tuple[str, ...]
    num_examples: int
    train_loss: float
    site_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    staleness: Mapping[str, int] = field(default_factory=dict)
    shares: Mapping[str, float] = field(default_factory=dict)

    def evaluation(self) -> dict[str, float | int | None]:
        """Top-k of the model version the sites received this round, pooled over their test sets."""
        return topk_from_counts([dict(m) for m in self.site_metrics.values()]).as_dict()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (the round summary kept in the store)."""
        return {
            "round": self.round,
            "model_version": self.model_version,
            "sites": list(self.sites),
            "num_examples": self.num_examples,
            "train_loss": self.train_loss,
            "site_metrics": {s: dict(m) for s, m in self.site_metrics.items()},
            # Only asynchronous rounds have these; synchronous summaries stay as they were.
            **({"staleness": dict(self.staleness)} if self.staleness else {}),
            **({"shares": dict(self.shares)} if self.shares else {}),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RoundRecord:
        """Inverse of :meth:`to_json`."""
        return cls(
            round=int(raw["round"]),
            model_version=int(raw["model_version"]),
            sites=tuple(raw["sites"]),
            num_examples=int(raw["num_examples"]),
            train_loss=float(raw["train_loss"]),
            site_metrics={s: dict(m) for s, m in raw["site_metrics"].items()},
            staleness={s: int(t) for s, t in raw.get("staleness", {}).items()},
            shares={s: float(w) for s, w in raw.get("shares", {}).items()},
        )


class Coordinator:
    """Runs a study's rounds with a strategy, its state kept in a store.

    Parameters
    ----------
    federation, study
        Names every message is bound to.
    sites
        Invited site ids (a round's default participants).
    weights
        Initial global weights (model version 0); ignored when the store already holds the study.
    strategy
        How updates become the next weights.
    plan
        Local training plan sent each round (after the strategy's ``configure``).
    mailbox
        Where tasks are pushed and updates collected (the simulation); ``None`` when sites
        fetch tasks through :meth:`task_for` and updates arrive through :meth:`accept`.
    quorum
        Fewest updates that may close a round at :meth:`close_round` (default: all participants).
    store
        The durable state (default: a fresh :class:`~alliance.store.memory.MemoryStore`).
    clock
        Time source for the store's timestamps.
    open_invitation
        Every site of the consortium may take part (a study with ``sites = "all"``): ``sites``
        may start empty and grows with :meth:`invite`; the quorum is not bounded by it.
    privacy, secagg
        The study's differential-privacy and secure-aggregation plans, sent with every task.
    peers
        Checks sites' signatures on secure-aggregation adverts and confirmations (the service
        passes the consortium's CA; ``None`` leaves the check to the sites alone).
    aggregation
        Synchronous rounds (default) or buffered, staleness-aware asynchronous ones; the
        latter cannot be combined with ``secagg``.
    offline
        Sites whose messages a courier carries (files transport). With secure aggregation key
        batches they are not asked to confirm or unmask when the other sites can
        (:class:`~alliance.coordinator.secure.SecureRound`); in asynchronous rounds they are
        handed no new task while the last one they were handed may still count.
    """

    def __init__(
        self,
        *,
        federation: str,
        study: str,
        sites: Sequence[str],
        weights: Mapping[str, npt.NDArray[np.float32]],
        strategy: Strategy,
        plan: TrainingPlan,
        mailbox: CoordinatorMailbox | None = None,
        quorum: int | None = None,
        store: CoordinatorStore | None = None,
        clock: Callable[[], float] = time.time,
        open_invitation: bool = False,
        privacy: PrivacyPlan | None = None,
        secagg: SecAggPlan | None = None,
        peers: SignatureVerifier | None = None,
        aggregation: AggregationPlan | None = None,
        offline: Collection[str] = (),
    ) -> None:
        if not sites and not open_invitation:
            raise ConfigError("a study needs at least one invited site")
        if len(set(sites)) != len(sites):
            raise ConfigError(f"site ids must be unique, got {sorted(sites)}")
        self.federation = federation
        self.study = study
        self.sites = tuple(sorted(sites))
        self.strategy = strategy
        self.plan = plan
        self.mailbox = mailbox
        self.open_invitation = open_invitation
        self.quorum = effective_quorum(
            len(self.sites), requested=quorum, secagg=secagg or SecAggPlan()
        )
        if self.quorum < 1 or (not open_invitation and self.quorum > len(self.sites)):
            raise ConfigError(f"quorum must be between 1 and {len(self.sites)} sites, got {quorum}")
        self.store: CoordinatorStore = MemoryStore() if store is None else store
        self.clock = clock
        self.rejections: list[Rejection] = []
        self.privacy = privacy or PrivacyPlan()
        self.secagg = secagg or SecAggPlan()
        self.aggregation = aggregation or AggregationPlan()
        check_combination(self.aggregation, self.secagg)
        #: Asynchronous rounds with a mailbox: site → model version of its unanswered task.
        self._outstanding: dict[str, int] = {}
        #: Sites that declined the open round (``site → reason``); they are not waited for.
        self.refusals: dict[str, str] = {}
        self.peers = peers
        if self.store.study(study) is None:
            self.store.add_study(
                StudyRecord(study, "", "", COORDINATOR, StudyStatus.RUNNING, clock())
            )
        self.store.save_initial_model(study, weights, strategy.state())
        self._secure: SecureRound | None = None
        #: Secure aggregation key batches: the batch the next attempts take their slots from.
        self._keys: BatchKeys | None = None
        self.offline = frozenset(offline)
        # Attempts are numbered from the clock so that a restarted coordinator never reuses one.
        self._attempt = int(clock() * 1000) % 2**31
        self._resume()
        if self._open and self.secagg.enabled:
            current = self.store.current_round(study)
            self._new_attempt(self.participants, None if current is None else current.deadline)

    def _resume(self) -> None:
        """Load the current model, strategy state and round from the store."""
        version, weights, strategy_state = self.store.latest_model(self.study)
        self.version = version
        self.weights: Weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.strategy.load_state(strategy_state)
        current = self.store.current_round(self.study)
        self.round = 0 if current is None else current.round
        self._open = current is not None and current.status is RoundStatus.OPEN
        self.participants: tuple[str, ...] = () if current is None else current.participants
        self.history = [
            RoundRecord.from_json(r.summary)
            for r in self.store.rounds(self.study)
            if r.status is RoundStatus.CLOSED
        ]

    def invite(self, site: str) -> None:
        """Invite one more site (open invitations only); it takes part from the next round."""
        if not self.open_invitation:
            raise FederationError(f"study {self.study!r} invites only {', '.join(self.sites)}")
        if site not in self.sites:
            self.sites = tuple(sorted((*self.sites, site)))

    def _header(self, kind: MessageKind, recipient: str) -> Header:
        return Header(kind, self.federation, self.study, self.round, COORDINATOR, recipient)

    @property
    def is_open(self) -> bool:
        """Whether a round is taking updates."""
        return self._open

    def start_round(
        self, *, participants: Sequence[str] | None = None, deadline: float | None = None
    ) -> int:
        """Open the next round for ``participants`` (default: every invited site).

        With a mailbox, the task is published to each participant. Returns the round number.
        """
        if self._open:
            raise FederationError(
                f"round {self.round} is still open; close it before starting another"
            )
        chosen = tuple(sorted(self.sites if participants is None else participants))
        strangers = sorted(set(chosen) - set(self.sites))
        if not chosen or strangers:
            raise FederationError(f"round participants must be invited sites, got {strangers}")
        self.store.open_round(
            self.study,
            self.round + 1,
            model_version=self.version,
            participants=chosen,
            deadline=deadline,
        )
        self.round += 1
        self._open = True
        self.participants = chosen
        self.refusals = {}
        self._event("round_opened", f"round {self.round} opened for {len(chosen)} sites")
        if self.secagg.enabled:
            self._new_attempt(chosen, deadline)
        if self.mailbox is not None:
            for site in chosen:
                if self._awaiting(site):
                    continue
                task = self.task_for(site)
                if task is not None:
                    self.mailbox.publish(task.to_envelope())
                    if self.aggregation.is_async:
                        self._outstanding[site] = self.version
        return self.round

    def _awaiting(self, site: str) -> bool:
        """Asynchronous rounds: ``site`` still holds a task whose answer could count (a new
        one would only make it train a superseded version and spend privacy budget twice)."""
        issued = self._outstanding.get(site)
        return issued is not None and self.version - issued <= self.aggregation.max_staleness

    def restore_issued_tasks(self, issued: Mapping[str, int]) -> None:
        """After a restart, asynchronous rounds: ``issued`` gives, for hospitals on files, the
        model version of the last task written for each (the coordinator's bundle ledger). A
        task whose answer the store does not hold is on the road again, so the hospital is
        handed no second one before its reply comes back or grows too old to count."""
        if not self.aggregation.is_async:
            return
        answered: dict[str, int] = {}
        for stored in self.store.rounds(self.study):
            for meta in self.store.updates(self.study, stored.round):
                base = -1 if meta.base_version is None else meta.base_version
                answered[meta.site] = max(answered.get(meta.site, -1), base)
        for site, version in issued.items():
            if site in self.offline and answered.get(site, -1) < version:
                self._outstanding[site] = version

    def _new_attempt(self, cohort: Sequence[str], deadline: float | None) -> None:
        """Start a fresh attempt of the open secure round (fresh keys at every site)."""
        self._attempt = (self._attempt + 1) % 2**31
        context = RoundContext(
            federation=self.federation, study=self.study, round=self.round, attempt=self._attempt
        )
        self._secure = SecureRound(
            context=context,
            cohort=cohort,
            plan=self.secagg,
            reference=self.weights,
            deadline=deadline,
            peers=self.peers,
            keys=self._keys,
            offline=self.offline,
        )
        self._keys = self._secure.keys

    def retry_secure_round(
        self, participants: Sequence[str] | None = None, *, deadline: float | None = None
    ) -> None:
        """After an aborted attempt, start another with ``participants`` (default: the cohort
        minus the sites that refused)."""
        if not self._open or self._secure is None:
            raise FederationError("no secure round is open")
        cohort = participants or [s for s in self.participants if s not in self.refusals]
        self._event(
            "secure_round_retried",
            f"round {self.round}: attempt aborted ({self._secure.aborted}); new attempt with "
            f"{len(cohort)} sites",
        )
        self._new_attempt(cohort, deadline)
        if self.mailbox is not None:
            for site in cohort:
                task = self.task_for(site)
                if task is not None:
                    self.mailbox.publish(task.to_envelope())

    @property
    def secure_round(self) -> SecureRound | None:
        """The open secure round's current attempt (``None`` in plaintext studies)."""
        return self._secure if self._open else None

    def outgoing(self, site: str) -> Envelope | None:
        """What ``site`` should receive now in the open round: its task or a stage message."""
        secure = self.secure_round
        if secure is not None and secure.stage != "train":
            msg = secure.message_for(site)
            return None if msg is None else msg.to_envelope()
        task = self.task_for(site)
        return None if task is None else task.to_envelope()

    def advance(self, *, now: float | None = None, force: bool = False) -> bool:
        """Move a secure round to its next stage when the current one is complete, past its
        deadline, or ``force``; publish the new stage's messages to the mailbox. Returns
        whether the stage changed (plaintext rounds have no stages: ``False``)."""
        secure = self.secure_round
        if secure is None:
            return False
        before = secure.stage
        changed = secure.advance(
            now=self.clock() if now is None else now,
            stage_timeout_s=self.secagg.stage_timeout_s,
            force=force,
        )
        if not changed:
            return False
        if secure.aborted is not None:
            self._event("secure_round_aborted", f"round {self.round}: {secure.aborted}")
            return True
        self._event(
            "secure_stage",
            f"round {self.round}: {before} done, {secure.stage} "
            + (
                f"with {len(secure.waiting)} sites"
                if secure.stage != "done"
                else f"unmasked the sum of {len(secure.survivors)} sites"
            ),
        )
        if self.mailbox is not None:
            for msg in secure.messages():
                self.mailbox.publish(msg.to_envelope())
        return True

    def task_for(self, site: str) -> TrainTask | None:
        """The open round's task for ``site``, or ``None`` if it has none (or already answered)."""
        if (
            not self._open
            or site not in self.participants
            or site in self.answered()
            or site in self.refusals
            or self._awaiting(site)
        ):
            return None
        if self.aggregation.is_async and site in self.offline:
            # A courier site keeps the task it was handed until its reply comes back.
            self._outstanding[site] = self.version
        secure = self._secure
        cohort: tuple[str, ...] = ()
        attempt = 0
        if self.secagg.enabled:
            if secure is None or secure.stage != "train" or site not in secure.waiting:
                return None
            cohort, attempt = secure.cohort, secure.context.attempt
        plan = self.strategy.configure(self.plan)
        header = self._header(MessageKind.TRAIN_TASK, site)
        return TrainTask(
            header,
            self.version,
            plan,
            self.weights,
            self.privacy,
            self.secagg,
            cohort,
            attempt,
            None if secure is None else secure.key_slot,
        )

    def end_for(self, site: str) -> StudyEnd:
        """The message telling ``site`` the study is over."""
        return StudyEnd(self._header(MessageKind.STUDY_END, site), self.version)

    def answered(self) -> set[str]:
        """Sites whose update for the open round is stored (secure rounds: sites that answered
        the current stage)."""
        if not self._open:
            return set()
        if self._secure is not None:
            return set(self._secure.cohort) - self._secure.waiting - self._secure.refused
        return {u.site for u in self.store.updates(self.study, self.round)}

    def receive(self) -> int:
        """Check and file every message in the mailbox; returns how many updates counted."""
        if self.mailbox is None:
            raise ConfigError("this coordinator has no mailbox; submit updates with accept()")
        accepted = 0
        for env in self.mailbox.collect():
            try:
                accepted += self.accept(env) is Receipt.ACCEPTED
            except AllianceError:
                continue
        return accepted

    def accept(self, env: Envelope) -> Receipt:
        """Check one message and store it as this round's update from its sender.

        Raises
        ------
        ProtocolError
            The message is refused (the reason is also recorded); nothing changed.
        """
        try:
            if env.header.kind is MessageKind.REFUSAL:
                return self._refusal(env)
            if env.header.kind is MessageKind.SECAGG:
                return self._secure_answer(env)
            if self.store.nonce_seen(env.header.nonce):
                if self._is_resend(env):
                    logger.info("update from %s sent again", env.header.sender)
                    return Receipt.DUPLICATE
                raise ProtocolError(
                    f"replayed message (nonce {env.header.nonce[:8]}... already seen)"
                )
            update = self._check(env)
            meta = UpdateMeta(
                env.header.sender,
                env.header.nonce,
                content_digest(env),
                update.num_examples,
                update.metrics,
                update.model_version,
            )
            try:
                self.store.add_update(self.study, self.round, meta, update.delta)
            except DuplicateUpdate:
                logger.info("update from %s round %d already stored", meta.site, self.round)
                return Receipt.DUPLICATE
        except AllianceError as exc:
            self._reject(env.header, str(exc))
            raise
        self._outstanding.pop(env.header.sender, None)
        return Receipt.ACCEPTED

    def _refusal(self, env: Envelope) -> Receipt:
        """A participant declines the open round; it is no longer waited for."""
        h = env.header
        self._check_binding(h)
        refusal = Refusal.from_envelope(env)
        if h.round != self.round:  # asynchronous: an earlier task declined; not this round
            self._outstanding.pop(h.sender, None)
            self._event("site_refused", f"{h.sender} declined round {h.round}: {refusal.reason}")
            return Receipt.ACCEPTED
        if h.sender in self.refusals:
            return Receipt.DUPLICATE
        self.refusals[h.sender] = refusal.reason
        if self._secure is not None:
            self._secure.decline(h.sender)
        self._event("site_refused", f"{h.sender} declined round {self.round}: {refusal.reason}")
        return Receipt.ACCEPTED

    def _secure_answer(self, env: Envelope) -> Receipt:
        """File one stage answer of the open secure round."""
        self._check_binding(env.header)
        if self._secure is None:
            raise ProtocolError(
                f"study {self.study!r} does not use secure aggregation; send a model update"
            )
        return Receipt.ACCEPTED if self._secure.accept(env) else Receipt.DUPLICATE

    def _reject(self, header: Header, reason: str) -> None:
        rejection = Rejection(header.round, header.sender, reason)
        self.rejections.append(rejection)
        self.store.add_rejection(
            StoredRejection(self.study, header.round, header.sender, reason, self.clock())
        )
        self._event("update_rejected", f"{header.sender} round {header.round}: {reason}")
        logger.warning("rejected message from %s: %s", header.sender, reason)

    def _check(self, env: Envelope) -> ModelUpdate:
        h = env.header
        self._check_binding(h)
        update = ModelUpdate.from_envelope(env)
        if self.secagg.enabled:
            raise ProtocolError(
                f"study {self.study!r} uses secure aggregation; a plaintext update from "
                f"{h.sender} is refused"
            )
        if self.aggregation.is_async:
            check_late_update(
                self.store,
                self.study,
                h,
                model_version=update.model_version,
                current_version=self.version,
                open_round=self.round,
                plan=self.aggregation,
            )
        elif update.model_version != self.version:
            raise ProtocolError(
                f"update trained on model version {update.model_version}, current is {self.version}"
            )
        check_same_shapes(
            update.delta, self.weights, what=f"update from {h.sender} round {h.round}"
        )
        return update

    def _check_binding(self, h: Header) -> None:
        """The message is for this study's open round, from one of its participants."""
        if (h.federation, h.study, h.recipient) != (self.federation, self.study, COORDINATOR):
            raise ProtocolError(
                f"message bound to federation {h.federation!r}, study {h.study!r}, recipient "
                f"{h.recipient!r}; this coordinator runs {self.federation!r}/{self.study!r}"
            )
        if h.sender not in self.sites:
            raise ProtocolError(f"sender {h.sender!r} is not invited to study {self.study!r}")
        if self._open and self.aggregation.is_async and h.round != self.round:
            check_late_round(self.store, self.study, h, open_round=self.round)
            return
        if not self._open or h.round != self.round:
            open_round = self.round if self._open else "none"
            raise ProtocolError(f"update for round {h.round}, but the open round is {open_round}")
        if h.sender not in self.participants:
            raise ProtocolError(f"site {h.sender!r} is not a participant of round {self.round}")

    def _is_resend(self, env: Envelope) -> bool:
        """Whether ``env`` is the very update already stored (same sender, round, nonce, content).

        A site whose answer was lost (coordinator killed, network cut) sends the same bytes again.
        """
        h = env.header
        if (h.federation, h.study) != (self.federation, self.study):
            return False
        if h.round < 1 or h.round > self.round:
            return False
        # An asynchronous round files a late update under the round open when it arrived.
        filed = range(h.round, self.round + 1) if self.aggregation.is_async else (h.round,)
        for round_ in filed:
            stored = {u.site: u for u in self.store.updates(self.study, round_)}.get(h.sender)
            if stored is not None and stored.nonce == h.nonce:
                return stored.digest == content_digest(env)
        return False

    @property
    def complete(self) -> bool:
        """Whether every participant has answered the open round (secure rounds: the sum is in)."""
        if self._open and self._secure is not None:
            return self._secure.stage == "done"
        if self._open and self.aggregation.is_async:
            buffer = self.aggregation.buffer_for(len(self.participants))
            if len(self.answered()) >= buffer:
                return True
        return self._open and self.answered() | set(self.refusals) >= set(self.participants)

    def close_round(self) -> RoundRecord:
        """Aggregate the updates received so far into a new model version.

        Raises
        ------
        FederationError
            If fewer than ``quorum`` sites answered; the round stays open and nothing changes.
        """
        if not self._open:
            raise FederationError("no round is open")
        if self._secure is not None:
            return self._close_secure(self._secure)
        if self.aggregation.is_async:
            return self._close_buffered()
        metas = self.store.updates(self.study, self.round)
        quorum = min(self.quorum, len(self.participants))
        if len(metas) < quorum:
            raise FederationError(
                f"round {self.round}: {len(metas)} of {len(self.participants)} sites answered, "
                f"quorum is {quorum}; wait for more sites or lower the quorum"
            )
        crash_point("coordinator.after_quorum")
        updates = [SiteUpdate(m.site, m.num_examples, self._loader(m.site)) for m in metas]
        record = self._record(metas)
        return self._apply(
            updates,
            record,
            f"round {self.round} closed with {len(metas)} of {len(self.participants)} sites "
            f"({record.num_examples} cases)",
        )

    def _record(
        self,
        metas: Sequence[UpdateMeta],
        *,
        staleness: Mapping[str, int] | None = None,
        shares: Mapping[str, float] | None = None,
    ) -> RoundRecord:
        """The summary of the open round closed with the plaintext updates ``metas``."""
        n = sum(m.num_examples for m in metas)
        return RoundRecord(
            round=self.round,
            model_version=self.version + 1,
            sites=tuple(m.site for m in metas),
            num_examples=n,
            train_loss=sum(m.num_examples * m.metrics.get("train_loss", 0.0) for m in metas) / n,
            site_metrics={m.site: dict(m.metrics) for m in metas},
            staleness=staleness or {},
            shares=shares or {},
        )

    def _apply(self, updates: list[SiteUpdate], record: RoundRecord, message: str) -> RoundRecord:
        """Aggregate with the strategy and store the new version, summary and strategy state
        in one transaction (the strategy's state is rolled back if that fails)."""
        before = self.strategy.state()
        weights = self.strategy.aggregate(self.weights, updates)
        crash_point("coordinator.before_checkpoint")
        try:
            self.store.close_round(
                self.study,
                self.round,
                new_version=self.version + 1,
                weights=weights,
                strategy_state=self.strategy.state(),
                summary=record.to_json(),
            )
        except BaseException:
            self.strategy.load_state(before)
            raise
        self.weights = weights
        self.version += 1
        self.history.append(record)
        self._open = False
        self._secure = None
        self._event("round_closed", f"{message}, model version {self.version}")
        return record

    def _close_buffered(self) -> RoundRecord:
        """Asynchronous: apply the buffer's updates, each discounted by its staleness."""
        metas = self.store.updates(self.study, self.round)
        if not metas:
            raise FederationError(
                f"round {self.round}: no update yet; an asynchronous round closes with at least one"
            )
        crash_point("coordinator.after_quorum")
        updates, staleness = buffered_updates(
            metas, version=self.version, plan=self.aggregation, loader=self._loader
        )
        record = self._record(metas, staleness=staleness, shares=update_shares(updates))
        late = sum(1 for tau in staleness.values() if tau > 0)
        return self._apply(
            updates,
            record,
            f"round {self.round} closed with {len(metas)} updates ({late} late, staleness up to "
            f"{max(staleness.values())}; {record.num_examples} cases)",
        )

    def _close_secure(self, secure: SecureRound) -> RoundRecord:
        """Apply the strategy to the unmasked weighted mean of the survivors' updates."""
        if secure.aborted is not None:
            raise FederationError(
                f"round {self.round}: secure aggregation aborted: {secure.aborted}"
            )
        if secure.result is None:
            raise FederationError(
                f"round {self.round}: secure aggregation is in stage {secure.stage!r}, waiting "
                f"for {', '.join(sorted(secure.waiting)) or 'nobody'}"
            )
        total = secure.result
        quorum = min(self.quorum, len(self.participants))
        if total.sites < quorum:
            # The attempt is spent: a new one (fresh keys) may gather more sites.
            secure.aborted = f"the sum holds {total.sites} sites, quorum is {quorum}"
            raise FederationError(f"round {self.round}: {secure.aborted}")
        crash_point("coordinator.after_quorum")
        mean = total.mean_delta
        summed = SiteUpdate(f"sum of {total.sites} sites", total.total_weight, lambda: mean)
        record = RoundRecord(
            round=self.round,
            model_version=self.version + 1,
            sites=secure.survivors,
            num_examples=total.total_weight,
            train_loss=total.mean_loss,
            site_metrics={"secure-sum": {**total.metrics, "train_loss": total.mean_loss}},
        )
        return self._apply(
            [summed],
            record,
            f"round {self.round} closed securely with the sum of {total.sites} of "
            f"{len(self.participants)} sites",
        )

    def _loader(self, site: str) -> Callable[[], Mapping[str, npt.NDArray[Any]]]:
        return lambda: self.store.load_delta(self.study, self.round, site)

    def finish(self) -> None:
        """Mark the study finished and, with a mailbox, tell every site."""
        self.store.set_study_status(self.study, StudyStatus.FINISHED)
        self._event("study_finished", f"study finished at model version {self.version}")
        if self.mailbox is not None:
            for site in self.sites:
                self.mailbox.publish(self.end_for(site).to_envelope())

    def cancel(self, reason: str) -> None:
        """Mark the study cancelled (its open round takes no more updates) and, with a mailbox,
        tell every site that it ended."""
        self.store.set_study_status(self.study, StudyStatus.CANCELLED, error=reason)
        self._open = False
        self._event("study_cancelled", f"study cancelled at model version {self.version}: {reason}")
        if self.mailbox is not None:
            for site in self.sites:
                self.mailbox.publish(self.end_for(site).to_envelope())

    def _event(self, kind: str, message: str) -> None:
        self.store.add_event(StoredEvent(self.study, self.clock(), kind, message))
        logger.info("study %s: %s", self.study, message)
