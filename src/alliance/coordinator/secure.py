"""The coordinator's side of a secure round: the stages, who is waited for, and the sum.

One :class:`SecureRound` drives one *attempt* of a round through the stages of
:mod:`alliance.secagg`, over the same message path as a plaintext round (pushed to a mailbox in
the simulation, handed out on the sites' long-polls in the service)::

    train    → each cohort member trains, privatises, encodes and answers with a signed key advert
    keys     → every advert (and the certificate that signs it) to every member that advertised
    shares   → each member's sealed shares, routed to their recipients, and the survivor list U2
    confirm  → the list U3 of sites whose masked vector arrived, to be signed by each of them
    unmask   → U3, U2 \\ U3 and the confirmations; members answer with shares
    done     → the exact modular sum of U3's vectors, decoded by the study's
               :class:`~alliance.protocol.secure_update.UpdateLayout`

A stage ends when every site still in it has answered, or at its deadline (the round's deadline
for training, ``stage_timeout_s`` after that), and then whoever is silent is dropped: a site
that vanished before sharing keys is simply out of the cohort, one that vanished later has its
masks removed with the others' shares. With fewer than the threshold left the attempt aborts,
having revealed nothing; the coordinator may start a new attempt with fresh keys (sites re-mask
their cached privatised update, so a retry costs no privacy).

The coordinator holds only what :mod:`alliance.secagg` lets it: public keys, sealed shares it
cannot open, masked vectors, and finally the sum. No attempt state is stored durably; a restarted
coordinator starts a new attempt. Every message is one of
:mod:`alliance.protocol.secagg_messages`, one type per stage and direction.

**Per-round keys** (``key_batch = 1``, the default) are a key batch of one slot bound to the
attempt itself (:class:`~alliance.secagg.KeyBatchSetup`): every attempt sets one up, so the
stages above are a set-up attempt of the one code path below, with the messages of
:mod:`alliance.secagg` unchanged.

**Key batches** (``[secure_aggregation] key_batch = R > 1``, :mod:`alliance.secagg.batched`). An
attempt either sets up a new batch of ``R`` key slots and uses its first slot, or uses the next
unused slot of the current batch (:class:`BatchKeys`, which the coordinator keeps between rounds).
The set-up attempt runs the stages above, its ``train``, ``keys`` and ``shares`` messages
carrying every slot at once (the ``shares`` message routes every slot's shares, so the later
rounds need none). An attempt on a batch that is already set up starts at the masked input::

    train    → each member of the slot's U2 trains, masks with the slot named in its task and
               answers with its masked input
    confirm, unmask, done   as above, for that slot

A new batch is set up when there is none, every slot is taken, the last set-up failed, or fewer
than the quorum of the attempt's participants hold the batch; otherwise participants that do not
hold it (they joined, refused or missed the set-up) sit the attempt out. With key batches, sites
named ``offline`` (a courier carries their messages) are not asked to confirm or unmask when the
other survivors hold enough shares (:meth:`~alliance.secagg.SecAggServer.recoverable_by`), so
after the set-up they exchange one message per round. Should too few of the others then confirm,
the excused sites are asked as well before the attempt is given up; a site that vanishes after
confirming still aborts the attempt (its retry takes the next slot). Without batches every
survivor is asked, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from alliance.core.errors import AllianceError, IntegrityError, ProtocolError, SecAggAbort
from alliance.protocol.codec import SignatureVerifier, content_digest
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.privacy import SecAggPlan
from alliance.protocol.secagg_messages import (
    CohortKeys,
    Confirmation,
    ConfirmRequest,
    KeyAdverts,
    MaskedInput,
    RoutedShares,
    SealedShares,
    SecAggMessage,
    SecAggStage,
    SlotShares,
    UnmaskCall,
    UnmaskShares,
)
from alliance.protocol.secure_update import SecureSum, UpdateLayout
from alliance.secagg import (
    KeyBatchServer,
    KeyBatchSetup,
    RoundContext,
    RoundSetup,
    SecAggServer,
)

__all__ = ["STAGES", "BatchKeys", "SecureRound"]

logger = logging.getLogger(__name__)

#: The stages of an attempt, in order.
STAGES = tuple(SecAggStage)
#: What a site sends in answer to each stage (a slot already set up: a masked input to ``train``).
_REPLY: dict[SecAggStage, type[SecAggMessage]] = {
    SecAggStage.TRAIN: KeyAdverts,
    SecAggStage.KEYS: SealedShares,
    SecAggStage.SHARES: MaskedInput,
    SecAggStage.CONFIRM: Confirmation,
    SecAggStage.UNMASK: UnmaskShares,
}


@dataclass
class BatchKeys:
    """A key batch at the coordinator, kept from one secure round to the next.

    Parameters
    ----------
    server
        The batch's secure-aggregation state (one server per slot).
    certificates
        Each member's certificate (DER), sent with its adverts: the signatures of the
        batch's later confirmations are checked against it.
    """

    server: KeyBatchServer
    certificates: dict[str, bytes] = field(default_factory=dict)

    def serves(self, participants: Collection[str], *, vector_length: int) -> bool:
        """Whether the next slot can run an attempt with ``participants``: the set-up stands,
        a slot is left, the vector has not changed, and at least the quorum of the
        participants hold the slot."""
        keys = self.server
        return (
            keys.ready
            and keys.remaining > 0
            and keys.setup.vector_length == vector_length
            and len(keys.members(keys.setup.size - keys.remaining) & set(participants))
            >= keys.setup.quorum
        )


class SecureRound:
    """One attempt of a secure round at the coordinator.

    Parameters
    ----------
    context
        Federation, study, round and attempt.
    cohort
        The sites asked to train in this round.
    plan
        The study's secure-aggregation plan.
    reference
        The current model's weights (fix the layout of the masked vector).
    deadline
        When the training stage gives up on silent sites (``None``: only when forced).
    peers
        Checks a site's signature against the certificate it sent with its advert (the
        consortium CA, the site role): a forged advert or confirmation is refused here, before
        it could make every honest site refuse the round.
    keys
        Key batches only: the coordinator's current batch (``None``: none yet). The attempt
        uses its next slot or sets up a new batch; :attr:`keys` is the batch it uses.
    offline
        Key batches only: sites on files, not asked to confirm or unmask when the others hold
        enough shares.
    """

    def __init__(
        self,
        *,
        context: RoundContext,
        cohort: Sequence[str],
        plan: SecAggPlan,
        reference: Mapping[str, npt.NDArray[Any]],
        deadline: float | None,
        peers: SignatureVerifier | None = None,
        keys: BatchKeys | None = None,
        offline: Collection[str] = (),
    ) -> None:
        self.context = context
        self.plan = plan
        self.peers = peers
        #: Key batches only: the batch this attempt uses and the slot it masks with (per-round
        #: keys are a batch of one slot, bound to the attempt itself: both ``None``).
        self.keys: BatchKeys | None = None
        self.key_slot: RoundContext | None = None
        self.offline = frozenset(offline) if plan.key_batch > 1 else frozenset()
        # Set by _use_slot or _set_up:
        self.cohort: tuple[str, ...]
        self.layout: UpdateLayout
        self.setup: RoundSetup
        self.server: SecAggServer
        #: Whether this attempt sets up keys (always with per-round keys).
        self.sets_up: bool
        #: Sites still expected to answer the current stage.
        self.waiting: set[str]
        self._batch: BatchKeys
        self._slot: int
        participants = tuple(sorted(cohort))
        if plan.key_batch > 1 and keys is not None:
            layout = UpdateLayout(reference, plan, len(keys.server.setup.sites))
            if keys.serves(participants, vector_length=layout.length):
                self._use_slot(keys, layout, participants)
        if self.keys is None:
            self._set_up(UpdateLayout(reference, plan, len(participants)), participants)
        self.stage = SecAggStage.TRAIN
        self.deadline = deadline
        #: Content digest of each site's answer to the current stage (recognises resends).
        self._answers: dict[str, str] = {}
        self._accepted: set[str] = set()
        self._outgoing: dict[str, SecAggMessage] = {}
        self.refused: set[str] = set()
        #: U3, the sites that confirmed it, and those not (yet) asked to (sites on files).
        self._u3: tuple[str, ...] = ()
        self._confirmed: set[str] = set()
        self._excused: list[str] = []
        self.aborted: str | None = None
        self.result: SecureSum | None = None
        self.survivors: tuple[str, ...] = ()

    def _use_slot(self, keys: BatchKeys, layout: UpdateLayout, participants: Sequence[str]) -> None:
        """Mask with the batch's next slot; participants outside it sit this attempt out."""
        self.layout, self.sets_up = layout, False
        self.cohort = keys.server.setup.sites
        self._take_slot(keys)
        self.waiting = set(keys.server.members(self._slot) & set(participants))

    def _set_up(self, layout: UpdateLayout, participants: tuple[str, ...]) -> None:
        """Set up keys: a batch of ``key_batch`` slots whose first slot this attempt uses (one
        slot, bound to this attempt, for per-round keys)."""
        plan, self.layout, self.sets_up = self.plan, layout, True
        self.cohort = participants
        self.waiting = set(participants)
        certificates: dict[str, bytes] = {}
        verify = None if self.peers is None else _verifier(self.peers, certificates)
        setup = KeyBatchSetup(
            context=self.context,
            size=plan.key_batch,
            sites=participants,
            vector_length=layout.length,
            modulus_bits=layout.quantizer.modulus_bits,
            threshold=plan.share_threshold(len(participants)),
            neighbours=plan.neighbours or None,
        )
        self._take_slot(BatchKeys(KeyBatchServer(setup, verify=verify), certificates))

    def _take_slot(self, batch: BatchKeys) -> None:
        self._batch = batch
        self._slot = batch.server.take()
        self.server = batch.server.server(self._slot)
        self.setup = self.server.setup
        if batch.server.setup.size > 1:  # a key batch, kept for the next rounds
            self.keys, self.key_slot = batch, self.setup.context

    # --- what sites receive ---------------------------------------------------------------------
    def message_for(self, site: str) -> SecAggMessage | None:
        """The current stage's message for ``site`` (``None`` if it has none or answered)."""
        if site in self._answers:
            return None
        return self._outgoing.get(site)

    def messages(self) -> list[SecAggMessage]:
        """Every message of the current stage (what a mailbox publishes)."""
        return [self._outgoing[s] for s in sorted(self._outgoing)]

    # --- what sites send ------------------------------------------------------------------------
    def decline(self, site: str) -> None:
        """``site`` refused to train this round: it is out of the cohort."""
        self.refused.add(site)
        self.waiting.discard(site)

    def accept(self, env: Envelope, sender_certificate: bytes | None = None) -> bool:
        """File one stage answer; ``False`` for an exact resend of an answer already filed.

        Raises
        ------
        ProtocolError
            The message is for another attempt or stage, from a site not in this stage, or its
            content is refused by the secure-aggregation server; nothing changed.
        """
        msg = SecAggMessage.from_envelope(env)
        site = env.header.sender
        if msg.attempt != self.context.attempt:
            raise ProtocolError(
                f"secure aggregation message of attempt {msg.attempt}, the open attempt is "
                f"{self.context.attempt}"
            )
        digest = content_digest(env)
        if digest in self._accepted:
            return False  # an answer sent again (lost acknowledgement), in this stage or before
        expected = _REPLY.get(self.stage)
        if self.stage is SecAggStage.TRAIN and not self.sets_up:
            expected = MaskedInput
        if expected is None or not isinstance(msg, expected):
            raise ProtocolError(
                f"{msg.stage!r} message from {site} while the round is in stage "
                f"{self.stage.value!r} (expects {expected.stage if expected else None!r})"
            )
        if site not in self.waiting:
            raise ProtocolError(f"{site} is not expected to answer stage {self.stage.value!r}")
        try:
            self._file(site, msg)
        except SecAggAbort as exc:
            raise ProtocolError(str(exc)) from None
        self._answers[site] = digest
        self._accepted.add(digest)
        self.waiting.discard(site)
        return True

    def _file(self, site: str, msg: SecAggMessage) -> None:
        if isinstance(msg, KeyAdverts):
            self._file_adverts(site, msg)
        elif isinstance(msg, SealedShares):
            self._batch.server.receive_shares(site, msg.slots)
        elif isinstance(msg, MaskedInput):
            self._file_masked(site, msg)
        elif isinstance(msg, Confirmation):
            self.server.receive_confirmation(site, msg.signature)
            self._confirmed.add(site)
        elif isinstance(msg, UnmaskShares):
            self.server.receive_unmask(msg.response)

    def _file_adverts(self, site: str, msg: KeyAdverts) -> None:
        """Every slot's advert of ``site``, and the certificate that signs them."""
        if any(a.site != site for a in msg.adverts):
            raise ProtocolError(f"key adverts of another site sent by {site}")
        self._batch.certificates[site] = msg.certificate
        try:
            self._batch.server.receive_adverts(site, msg.adverts)
        except BaseException:
            del self._batch.certificates[site]
            raise

    def _file_masked(self, site: str, msg: MaskedInput) -> None:
        vector = msg.vector
        if vector.shape != (self.layout.length,) or vector.dtype != self.setup.dtype:
            raise IntegrityError(
                f"masked input of {site}: shape {vector.shape} {vector.dtype}, the study "
                f"expects ({self.layout.length},) {self.setup.dtype}"
            )
        self.server.receive_masked(site, vector)

    # --- stage transitions ------------------------------------------------------------------------
    @property
    def stage_complete(self) -> bool:
        """Whether every site still in the current stage has answered."""
        return self.stage is not SecAggStage.DONE and not self.waiting

    def advance(self, *, now: float, stage_timeout_s: float, force: bool = False) -> bool:
        """Close the current stage if it is complete, past its deadline, or ``force``; return
        whether the stage changed. An abort is recorded in :attr:`aborted`."""
        if self.stage is SecAggStage.DONE or self.aborted is not None:
            return False
        due = self.deadline is not None and now >= self.deadline
        if not (self.stage_complete or due or force):
            return False
        try:
            self._next(now + stage_timeout_s)
        except SecAggAbort as exc:
            self.aborted = str(exc)
            self._outgoing = {}
            logger.warning("secure round %s aborted: %s", self.context.describe(), exc)
        return True

    def _next(self, deadline: float) -> None:
        self._answers = {}
        self.deadline = deadline
        if self.stage is SecAggStage.TRAIN and self.sets_up:
            self._close_adverts()
        elif self.stage is SecAggStage.KEYS:
            self._close_shares()
        elif self.stage in (SecAggStage.TRAIN, SecAggStage.SHARES):
            self._close_masked()
        elif self.stage is SecAggStage.CONFIRM and self._ask_excused():
            return
        elif self.stage is SecAggStage.CONFIRM:
            request = self.server.close_confirmations()
            self._broadcast(
                SecAggStage.UNMASK,
                sorted(request.confirmations),
                lambda h: UnmaskCall(h, self.context.attempt, request),
            )
        elif self.stage is SecAggStage.UNMASK:
            total, survivors = self.server.result()
            self.survivors = tuple(survivors)
            self.result = self.layout.decode(total)
            self.stage = SecAggStage.DONE
            self.waiting = set()
            self._outgoing = {}

    def _close_adverts(self) -> None:
        """Every slot's adverts (U1) and the members' certificates, to every member."""
        slots = tuple(self._batch.server.close_adverts())
        members = sorted(set().union(*slots))
        certificates = {s: self._batch.certificates[s] for s in members}
        self._broadcast(
            SecAggStage.KEYS,
            members,
            lambda h: CohortKeys(h, self.context.attempt, slots, certificates),
        )

    def _close_shares(self) -> None:
        """Every slot's routed shares and U2 to each of its members; this attempt's slot's
        members then mask."""
        routing = self._batch.server.close_shares()
        members = sorted(set().union(*(r.survivors for r in routing)))

        def shares(h: Header) -> RoutedShares:
            slots = tuple(
                SlotShares(r.sealed[h.recipient], r.survivors) if h.recipient in r.sealed else None
                for r in routing
            )
            return RoutedShares(h, self.context.attempt, slots)

        self._broadcast(SecAggStage.SHARES, members, shares)
        self.waiting = set(self._batch.server.members(self._slot))

    def _close_masked(self) -> None:
        """U3 is known: ask its members to confirm it (with key batches, only the online ones
        when they can complete the round alone)."""
        u3 = self.server.close_masked()
        self._u3 = tuple(u3)
        asked = [s for s in u3 if s not in self.offline]
        if len(asked) == len(u3) or not self.server.recoverable_by(asked):
            asked = list(u3)
        self._excused = sorted(set(u3) - set(asked))
        self._broadcast(SecAggStage.CONFIRM, asked, self._confirm_request)

    def _confirm_request(self, header: Header) -> ConfirmRequest:
        return ConfirmRequest(header, self.context.attempt, self._u3)

    def _ask_excused(self) -> bool:
        """Too few of the sites asked to confirm did: ask the excused ones (a courier trip)
        rather than abort; ``False`` when there is nobody left to ask or no need."""
        if not self._excused or self.server.recoverable_by(self._confirmed):
            return False
        late, self._excused = self._excused, []
        logger.info(
            "secure round %s: %d confirmations are too few; asking %s as well",
            self.context.describe(),
            len(self._confirmed),
            ", ".join(late),
        )
        self._broadcast(SecAggStage.CONFIRM, late, self._confirm_request)
        return True

    def _broadcast(
        self,
        stage: SecAggStage,
        sites: Sequence[str],
        message: Callable[[Header], SecAggMessage],
    ) -> None:
        """Move to ``stage``: send ``message(header)`` to each of ``sites`` and wait for them."""
        ctx = self.context
        self._outgoing = {
            s: message(
                Header(MessageKind.SECAGG, ctx.federation, ctx.study, ctx.round, COORDINATOR, s)
            )
            for s in sites
        }
        self.waiting = set(sites)
        self.stage = stage


def _verifier(
    peers: SignatureVerifier, certificates: Mapping[str, bytes]
) -> Callable[[str, bytes, bytes], bool]:
    """``verify(site, data, signature)`` against the certificate ``site`` sent with its advert."""

    def verify(site: str, data: bytes, signature: bytes) -> bool:
        certificate = certificates.get(site)
        if certificate is None:
            return False
        try:
            peers(site, certificate, data, signature)
        except (AllianceError, ValueError):
            return False
        return True

    return verify
