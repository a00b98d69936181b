"""The coordinator: what every round shares, written once for every mode, transport and store.

The :class:`Coordinator` keeps the study's state in a
:class:`~alliance.store.state.CoordinatorStore` (in memory for the simulation, SQL for the
service), each change in one transaction: the model versions, the strategy's state, the rounds
and their updates, the nonces seen, rejections and events. It opens each round through its
:class:`~alliance.coordinator.round.RoundMode` (plain, buffered or secure; the mode is chosen once,
by :func:`round_mode`, and the coordinator never asks which one it runs) and then only:

- hands out what a site should receive next (:meth:`Coordinator.outgoing`: pull only; the
  transports pump it to the sites, over HTTPS, in file bundles or in memory);
- checks every message before the round sees it (:meth:`Coordinator.accept`): bound to this
  federation, study and round, from an invited participant, with a fresh nonce — an update sent
  again (a retry after a lost answer) is recognised by its content digest and acknowledged as a
  duplicate, never counted twice; a rejected message changes no state, and the reason is kept in
  :attr:`Coordinator.rejections` and in the store;
- closes the round (:meth:`Coordinator.close_round`): the strategy aggregates what the round
  hands it into a new model version, stored with the round's record and the strategy's state.

A coordinator built over a store that already holds the study resumes it: same round, same
model version, same strategy state, updates already received still counted once (a secure
round starts a new attempt). When to open, advance, retry and close is the
:class:`~alliance.coordinator.driver.RoundDriver`'s business, the same in the service and the
simulation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from alliance.algorithms.strategies import Strategy, build_strategy
from alliance.coordinator.checks import check_binding, is_resend
from alliance.coordinator.modes import round_mode
from alliance.coordinator.round import Opening, Receipt, Round, RoundMode, RoundRecord, Weights
from alliance.core.errors import AllianceError, ConfigError, FederationError, ProtocolError
from alliance.core.faults import crash_point
from alliance.protocol.codec import SignatureVerifier
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import Refusal, StudyEnd, TrainTask
from alliance.protocol.study import StudySpec
from alliance.secagg import RoundContext
from alliance.store.memory import MemoryStore
from alliance.store.state import (
    CoordinatorStore,
    RoundStatus,
    StoredEvent,
    StoredRejection,
    StudyRecord,
    StudyStatus,
)

__all__ = ["Coordinator", "Receipt", "Rejection", "RoundRecord", "round_mode"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejection:
    """A message the coordinator refused, and why."""

    round: int
    sender: str
    reason: str


class Coordinator:
    """Runs a study's rounds with a strategy, its state kept in a store.

    Parameters
    ----------
    spec
        The study (id, invited sites, quorum, plan, privacy, secure and asynchronous
        aggregation), validated once when it was parsed or built.
    federation
        The consortium every message is bound to.
    weights
        Initial global weights (model version 0); ignored when the store already holds the study.
    strategy
        How updates become the next weights (default: the spec's ``[strategy]``).
    sites
        The invited sites, for a study open to every site (``sites = "all"``) resumed with the
        sites that took part so far; it grows with :meth:`invite`. Default: the spec's list.
    store
        The durable state (default: a fresh :class:`~alliance.store.memory.MemoryStore`).
    clock
        Time source for the store's timestamps.
    peers
        Checks sites' signatures on secure-aggregation adverts and confirmations.
    offline
        Hospitals on files (a courier carries their messages).
    mode
        The round mode (default: :func:`round_mode` of the spec's plans).
    """

    def __init__(
        self,
        spec: StudySpec,
        *,
        federation: str,
        weights: Mapping[str, npt.NDArray[np.float32]],
        strategy: Strategy | None = None,
        sites: Sequence[str] | None = None,
        store: CoordinatorStore | None = None,
        clock: Callable[[], float] = time.time,
        peers: SignatureVerifier | None = None,
        offline: Collection[str] = (),
        mode: RoundMode | None = None,
    ) -> None:
        self.spec = spec
        self.open_invitation = spec.sites is None
        invited = tuple(spec.sites or ()) if sites is None else tuple(sites)
        if not invited and not self.open_invitation:
            raise ConfigError("a study needs at least one invited site")
        if len(set(invited)) != len(invited):
            raise ConfigError(f"site ids must be unique, got {sorted(invited)}")
        self.federation = federation
        self.study = spec.study_id
        self.sites = tuple(sorted(invited))
        self.strategy = build_strategy(spec.strategy) if strategy is None else strategy
        self.plan = spec.plan
        self.privacy = spec.privacy
        self.secagg = spec.secagg
        self.aggregation = spec.aggregation
        self.mode = mode or round_mode(
            federation=federation,
            secagg=self.secagg,
            aggregation=self.aggregation,
            peers=peers,
            offline=offline,
            clock=clock,
        )
        self.quorum = spec.quorum_for(None if self.open_invitation else len(self.sites))
        if self.quorum < 1 or (not self.open_invitation and self.quorum > len(self.sites)):
            raise ConfigError(
                f"quorum must be between 1 and {len(self.sites)} sites, got {self.quorum}"
            )
        self.store: CoordinatorStore = MemoryStore() if store is None else store
        self.clock = clock
        self.rejections: list[Rejection] = []
        if self.store.study(self.study) is None:
            self.store.add_study(
                StudyRecord(self.study, "", "", COORDINATOR, StudyStatus.RUNNING, clock())
            )
        self.store.save_initial_model(self.study, weights, self.strategy.state())
        self._resume()

    def _resume(self) -> None:
        """Load the current model, strategy state and round from the store."""
        version, weights, strategy_state = self.store.latest_model(self.study)
        self.version = version
        self.weights: Weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.strategy.load_state(strategy_state)
        current = self.store.current_round(self.study)
        self.round = 0 if current is None else current.round
        self.history = [
            RoundRecord.from_json(r.summary)
            for r in self.store.rounds(self.study)
            if r.status is RoundStatus.CLOSED
        ]
        self.current: Round | None = None
        if current is not None and current.status is RoundStatus.OPEN:
            self.current = self.mode.open(self._opening(current.participants, current.deadline))

    def _opening(self, participants: tuple[str, ...], deadline: float | None) -> Opening:
        return Opening(
            study=self.study,
            number=self.round,
            version=self.version,
            weights=self.weights,
            participants=participants,
            store=self.store,
            task=self._task,
            deadline=deadline,
        )

    def invite(self, site: str) -> None:
        """Invite one more site (open invitations only); it takes part from the next round."""
        if not self.open_invitation:
            raise FederationError(f"study {self.study!r} invites only {', '.join(self.sites)}")
        if site not in self.sites:
            self.sites = tuple(sorted((*self.sites, site)))

    @property
    def is_open(self) -> bool:
        """Whether a round is taking answers."""
        return self.current is not None

    @property
    def participants(self) -> tuple[str, ...]:
        """The open (or last) round's participants."""
        return () if self.current is None else self.current.participants

    @property
    def refusals(self) -> dict[str, str]:
        """Sites that declined the open round, and why."""
        return {} if self.current is None else self.current.refusals

    def start_round(
        self, *, participants: Sequence[str] | None = None, deadline: float | None = None
    ) -> int:
        """Open the next round for ``participants`` (default: every invited site); returns its
        number."""
        if self.current is not None:
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
        self.log_event("round_opened", f"round {self.round} opened for {len(chosen)} sites")
        self.current = self.mode.open(self._opening(chosen, deadline))
        return self.round

    def restore_issued_tasks(self, issued: Mapping[str, int]) -> None:
        """After a restart: ``issued`` gives, for hospitals on files, the model version of the
        last task written for each (the coordinator's bundle ledger)."""
        self.mode.restore_issued(self.store, self.study, issued)

    def _task(
        self, site: str, cohort: tuple[str, ...], attempt: int, key_slot: RoundContext | None
    ) -> TrainTask:
        header = Header(
            MessageKind.TRAIN_TASK, self.federation, self.study, self.round, COORDINATOR, site
        )
        return TrainTask(
            header,
            self.version,
            self.strategy.configure(self.plan),
            self.weights,
            self.privacy,
            self.secagg,
            cohort,
            attempt,
            key_slot,
        )

    def outgoing(self, site: str) -> Envelope | None:
        """What ``site`` should receive now in the open round: its task or a stage message."""
        return None if self.current is None else self.current.outgoing(site)

    def task_for(self, site: str) -> TrainTask | None:
        """The open round's training task for ``site``, or ``None`` (it has none now)."""
        envelope = self.outgoing(site)
        if envelope is None or envelope.header.kind is not MessageKind.TRAIN_TASK:
            return None
        return TrainTask.from_envelope(envelope)

    def end_for(self, site: str) -> StudyEnd:
        """The message telling ``site`` the study is over."""
        header = Header(
            MessageKind.STUDY_END, self.federation, self.study, self.round, COORDINATOR, site
        )
        return StudyEnd(header, self.version)

    def answered(self) -> set[str]:
        """Sites that answered the open round (secure rounds: its current stage)."""
        return set() if self.current is None else self.current.answered()

    @property
    def complete(self) -> bool:
        """Whether the open round has every answer it waits for."""
        return self.current is not None and self.current.complete

    def advance(self, *, now: float | None = None, force: bool = False) -> bool:
        """Move the open round to its next stage when the current one is complete, past its
        deadline, or ``force``; whether anything changed (plaintext rounds: never)."""
        current = self.current
        if current is None or not current.advance(
            now=self.clock() if now is None else now,
            stage_timeout_s=self.secagg.stage_timeout_s,
            force=force,
        ):
            return False
        self.log_event(*current.stage_event())
        return True

    def retry(
        self, participants: Sequence[str] | None = None, *, deadline: float | None = None
    ) -> None:
        """After an aborted attempt, start another with ``participants`` (default: the
        participants that did not refuse)."""
        current = self.current
        if current is None or current.aborted is None:
            raise FederationError("no aborted round attempt to retry")
        cohort = tuple(sorted(participants or ()))
        reason = current.aborted
        current.retry(cohort, deadline)
        self.log_event(
            "secure_round_retried",
            f"round {self.round}: attempt aborted ({reason}); new attempt with "
            f"{len(current.waiting()) or len(cohort)} sites",
        )

    def accept(self, env: Envelope) -> Receipt:
        """Check one message and hand it to the open round.

        Raises
        ------
        ProtocolError
            The message is refused (the reason is also recorded); nothing changed.
        """
        h = env.header
        try:
            if h.kind is MessageKind.MODEL_UPDATE and self.store.nonce_seen(h.nonce):
                if self._is_resend(env):
                    logger.info("update from %s sent again", h.sender)
                    return Receipt.DUPLICATE
                raise ProtocolError(f"replayed message (nonce {h.nonce[:8]}... already seen)")
            current = self._check_binding(h)
            if h.kind is MessageKind.REFUSAL:
                return self._refusal(current, env)
            return current.accept(env)
        except AllianceError as exc:
            self._reject(h, str(exc))
            raise

    def _refusal(self, current: Round, env: Envelope) -> Receipt:
        """A participant declines a round; it is no longer waited for."""
        h = env.header
        refusal = Refusal.from_envelope(env)
        receipt = current.refuse(h, refusal.reason)
        if receipt is Receipt.ACCEPTED:
            self.log_event("site_refused", f"{h.sender} declined round {h.round}: {refusal.reason}")
        return receipt

    def _check_binding(self, h: Header) -> Round:
        """The message is for this study's open round, from one of its participants."""
        check_binding(h, federation=self.federation, study=self.study, sites=self.sites)
        if self.current is None:
            raise ProtocolError(f"update for round {h.round}, but the open round is none")
        self.current.check_round(h)
        return self.current

    def _is_resend(self, env: Envelope) -> bool:
        return is_resend(
            env, self.store, federation=self.federation, study=self.study, last_round=self.round
        )

    def _reject(self, header: Header, reason: str) -> None:
        self.rejections.append(Rejection(header.round, header.sender, reason))
        self.store.add_rejection(
            StoredRejection(self.study, header.round, header.sender, reason, self.clock())
        )
        self.log_event("update_rejected", f"{header.sender} round {header.round}: {reason}")
        logger.warning("rejected message from %s: %s", header.sender, reason)

    def close_round(self) -> RoundRecord:
        """Aggregate what the open round gathered into a new model version.

        Raises
        ------
        FederationError
            The round cannot close yet (too few answers, an aborted or unfinished secure
            attempt); it stays open and nothing changed.
        """
        if self.current is None:
            raise FederationError("no round is open")
        closing = self.current.close(self.quorum)
        before = self.strategy.state()
        weights = self.strategy.aggregate(self.weights, closing.updates)
        crash_point("coordinator.before_checkpoint")
        try:
            self.store.close_round(
                self.study,
                self.round,
                new_version=self.version + 1,
                weights=weights,
                strategy_state=self.strategy.state(),
                summary=closing.record.to_json(),
            )
        except BaseException:
            self.strategy.load_state(before)
            raise
        self.weights = weights
        self.version += 1
        self.history.append(closing.record)
        self.current = None
        self.log_event("round_closed", f"{closing.message}, model version {self.version}")
        return closing.record

    def finish(self) -> None:
        """Mark the study finished."""
        self.store.set_study_status(self.study, StudyStatus.FINISHED)
        self.log_event("study_finished", f"study finished at model version {self.version}")

    def cancel(self, reason: str) -> None:
        """Mark the study cancelled; its open round takes no more answers."""
        self.store.set_study_status(self.study, StudyStatus.CANCELLED, error=reason)
        self.current = None
        self.log_event(
            "study_cancelled", f"study cancelled at model version {self.version}: {reason}"
        )

    def log_event(self, kind: str, message: str) -> None:
        """Add a line to the study's log (the store's events)."""
        self.store.add_event(StoredEvent(self.study, self.clock(), kind, message))
        logger.info("study %s: %s", self.study, message)
