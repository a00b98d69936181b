"""Secure rounds: the coordinator only ever holds masked vectors and finally their sum.

A :class:`SecureAggregationRound` runs one :class:`~alliance.coordinator.secure.SecureRound`
*attempt* at a time through the stages of secure aggregation; an attempt that aborts (too few
survivors) reveals nothing, and the driver may :meth:`~SecureAggregationRound.retry` with fresh
keys (sites re-mask the update they already privatised, so a retry costs no privacy budget).
When the sum is in, the strategy takes the weighted mean as if it were one site's update
(privacy and secure aggregation wrap aggregation; strategies do not know about them).

:class:`SecureMode` keeps what outlives a round: the key batch the next attempts take their
slots from (``[secure_aggregation] key_batch``) and the attempt counter, numbered from the clock
so that a restarted coordinator never reuses an attempt number. No attempt state is stored
durably; a restarted coordinator starts a new attempt of the open round.
"""

from __future__ import annotations

from collections.abc import Collection

from alliance.algorithms.strategies import SiteUpdate
from alliance.coordinator.round import Closing, Opening, Receipt, Round, RoundMode, RoundRecord
from alliance.coordinator.secure import BatchKeys, SecureRound
from alliance.core.errors import FederationError, ProtocolError
from alliance.core.faults import crash_point
from alliance.protocol.codec import SignatureVerifier
from alliance.protocol.envelope import Envelope, Header, MessageKind
from alliance.protocol.messages import ModelUpdate
from alliance.protocol.privacy import SecAggPlan
from alliance.secagg import RoundContext

__all__ = ["SecureAggregationRound", "SecureMode"]


class SecureMode(RoundMode):
    """Opens secure rounds; keeps the key batch and numbers the attempts.

    Parameters
    ----------
    federation
        Bound into every attempt's context.
    plan
        The study's ``[secure_aggregation]`` plan.
    peers
        Checks sites' signatures on adverts and confirmations (``None``: the sites check).
    offline
        Hospitals on files (with key batches they are not asked to confirm or unmask when the
        others can complete the round).
    first_attempt
        The number before the first attempt's.
    """

    def __init__(
        self,
        *,
        federation: str,
        plan: SecAggPlan,
        peers: SignatureVerifier | None,
        offline: Collection[str],
        first_attempt: int,
    ) -> None:
        self.federation = federation
        self.plan = plan
        self.peers = peers
        self.offline = frozenset(offline)
        self._attempt = first_attempt % 2**31
        #: The key batch the next attempts take their slots from (key batches only).
        self.keys: BatchKeys | None = None

    def open(self, opening: Opening) -> Round:
        """A secure round, its first attempt started for every participant."""
        return SecureAggregationRound(opening, self)

    def attempt(
        self, opening: Opening, cohort: tuple[str, ...], deadline: float | None
    ) -> SecureRound:
        """A fresh attempt of round ``opening.number`` for ``cohort``."""
        self._attempt = (self._attempt + 1) % 2**31
        context = RoundContext(
            federation=self.federation,
            study=opening.study,
            round=opening.number,
            attempt=self._attempt,
        )
        attempt = SecureRound(
            context=context,
            cohort=cohort,
            plan=self.plan,
            reference=opening.weights,
            deadline=deadline,
            peers=self.peers,
            keys=self.keys,
            offline=self.offline,
        )
        self.keys = attempt.keys
        return attempt


class SecureAggregationRound(Round):
    """A round run by secure-aggregation attempts (see the module docstring)."""

    def __init__(self, opening: Opening, mode: SecureMode) -> None:
        super().__init__(opening)
        self.mode = mode
        #: The current attempt.
        self.attempt = mode.attempt(opening, opening.participants, opening.deadline)

    @property
    def stage(self) -> str:
        """The current attempt's stage."""
        return str(self.attempt.stage)

    @property
    def aborted(self) -> str | None:
        """Why the current attempt failed, if it did."""
        return self.attempt.aborted

    @property
    def stage_deadline(self) -> float | None:
        """The current stage's deadline (``inf`` once the sum is in or the attempt aborted)."""
        deadline = self.attempt.deadline
        return float("inf") if deadline is None else deadline

    def check_round(self, header: Header) -> None:
        """The message names this round and comes from one of its participants."""
        if header.round != self.number:
            raise ProtocolError(
                f"update for round {header.round}, but the open round is {self.number}"
            )
        if header.sender not in self.participants:
            raise ProtocolError(
                f"site {header.sender!r} is not a participant of round {self.number}"
            )

    def accept(self, env: Envelope) -> Receipt:
        """File a stage answer of the current attempt; a plaintext update is refused."""
        if env.header.kind is not MessageKind.SECAGG:
            ModelUpdate.from_envelope(env)
            raise ProtocolError(
                f"study {env.header.study!r} uses secure aggregation; a plaintext update from "
                f"{env.header.sender} is refused"
            )
        return Receipt.ACCEPTED if self.attempt.accept(env) else Receipt.DUPLICATE

    def refuse(self, header: Header, reason: str) -> Receipt:
        """The site is out of the attempt's cohort."""
        receipt = super().refuse(header, reason)
        if receipt is Receipt.ACCEPTED:
            self.attempt.decline(header.sender)
        return receipt

    def outgoing(self, site: str) -> Envelope | None:
        """The site's training task (training stage) or its stage message."""
        attempt = self.attempt
        if attempt.stage != "train":
            message = attempt.message_for(site)
            return None if message is None else message.to_envelope()
        if site not in self.participants or site in self.refusals or site not in attempt.waiting:
            return None
        task = self.opening.task(site, attempt.cohort, attempt.context.attempt, attempt.key_slot)
        return task.to_envelope()

    def answered(self) -> set[str]:
        """Sites that answered the current stage."""
        attempt = self.attempt
        return set(attempt.cohort) - attempt.waiting - attempt.refused

    def waiting(self) -> set[str]:
        """Sites the current stage waits for."""
        return set(self.attempt.waiting)

    @property
    def complete(self) -> bool:
        """The sum is in."""
        return self.attempt.stage == "done"

    def advance(self, *, now: float, stage_timeout_s: float, force: bool = False) -> bool:
        """Close the current stage when it is complete, past its deadline, or ``force``."""
        return self.attempt.advance(now=now, stage_timeout_s=stage_timeout_s, force=force)

    def stage_event(self) -> tuple[str, str]:
        """The log line for the stage just reached (or the abort)."""
        attempt = self.attempt
        if attempt.aborted is not None:
            return "secure_round_aborted", f"round {self.number}: {attempt.aborted}"
        if attempt.stage == "done":
            done = f"unmasked the sum of {len(attempt.survivors)} sites"
            return "secure_stage", f"round {self.number}: {done}"
        return "secure_stage", (
            f"round {self.number}: {attempt.stage} with {len(attempt.waiting)} sites"
        )

    def retry(self, participants: tuple[str, ...], deadline: float | None) -> None:
        """A new attempt (fresh keys or the batch's next slot) for ``participants``."""
        cohort = participants or tuple(s for s in self.participants if s not in self.refusals)
        self.attempt = self.mode.attempt(self.opening, cohort, deadline)

    def close(self, quorum: int) -> Closing:
        """The unmasked weighted mean of the survivors' updates, as one update."""
        attempt = self.attempt
        if attempt.aborted is not None:
            raise FederationError(
                f"round {self.number}: secure aggregation aborted: {attempt.aborted}"
            )
        if attempt.result is None:
            raise FederationError(
                f"round {self.number}: secure aggregation is in stage {attempt.stage!r}, waiting "
                f"for {', '.join(sorted(attempt.waiting)) or 'nobody'}"
            )
        total = attempt.result
        quorum = min(quorum, len(self.participants))
        if total.sites < quorum:
            # The attempt is spent: a new one (fresh keys) may gather more sites.
            attempt.aborted = f"the sum holds {total.sites} sites, quorum is {quorum}"
            raise FederationError(f"round {self.number}: {attempt.aborted}")
        crash_point("coordinator.after_quorum")
        mean = total.mean_delta
        summed = SiteUpdate(f"sum of {total.sites} sites", total.total_weight, lambda: mean)
        record = RoundRecord(
            round=self.number,
            model_version=self.opening.version + 1,
            sites=attempt.survivors,
            num_examples=total.total_weight,
            train_loss=total.mean_loss,
            site_metrics={"secure-sum": {**total.metrics, "train_loss": total.mean_loss}},
        )
        return Closing(
            [summed],
            record,
            f"round {self.number} closed securely with the sum of {total.sites} of "
            f"{len(self.participants)} sites",
        )
