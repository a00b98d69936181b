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
coordinator starts a new attempt.

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
from alliance.protocol.key_batch import keys_payload, read_advert, read_share_out, shares_payload
from alliance.protocol.messages import SecAggMessage
from alliance.protocol.privacy import SecAggPlan
from alliance.protocol.secure_update import SecureSum, UpdateLayout
from alliance.secagg import (
    KeyAdvert,
    KeyBatchServer,
    KeyBatchSetup,
    RoundContext,
    RoundSetup,
    SecAggServer,
    UnmaskResponse,
)

__all__ = ["STAGES", "BatchKeys", "SecureRound"]

logger = logging.getLogger(__name__)

#: The stages of an attempt, in order.
STAGES = ("train", "keys", "shares", "confirm", "unmask", "done")
#: What a site sends in answer to each stage.
_REPLY = {
    "train": "advert",
    "keys": "share_out",
    "shares": "masked",
    "confirm": "confirmation",
    "unmask": "unmask_out",
}


@dataclass
class BatchKeys:
    """A key batch at the coordinator, kept from one secure round to the next.

    Parameters
    ----------
    server
        The batch's secure-aggregation state (one server per slot).
    certificates
        Each member's certificate (hex DER), sent with its adverts: the signatures of the
        batch's later confirmations are checked against it.
    """

    server: KeyBatchServer
    certificates: dict[str, str] = field(default_factory=dict)

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
        #: Key batches only: the batch this attempt uses and the slot it masks with.
        self.keys: BatchKeys | None = None
        self.key_slot: RoundContext | None = None
        self.offline = frozenset(offline) if plan.key_batch > 1 else frozenset()
        # Set by _use_slot or _set_up:
        self.cohort: tuple[str, ...]
        self.layout: UpdateLayout
        self.setup: RoundSetup
        self.server: SecAggServer
        #: Whether this attempt sets up keys (always without key batches).
        self.sets_up: bool
        #: Sites still expected to answer the current stage.
        self.waiting: set[str]
        self._certificates: dict[str, str]
        participants = tuple(sorted(cohort))
        if plan.key_batch > 1 and keys is not None:
            layout = UpdateLayout(reference, plan, len(keys.server.setup.sites))
            if keys.serves(participants, vector_length=layout.length):
                self._use_slot(keys, layout, participants)
        if self.keys is None:
            self._set_up(UpdateLayout(reference, plan, len(participants)), participants)
        self.stage = "train"
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
        batch = keys.server
        slot = batch.take()
        self.keys, self.layout, self.sets_up = keys, layout, False
        self.cohort = batch.setup.sites
        self.server = batch.server(slot)
        self.setup = self.server.setup
        self.key_slot = self.setup.context
        self._certificates = keys.certificates
        self.waiting = set(batch.members(slot) & set(participants))

    def _set_up(self, layout: UpdateLayout, participants: tuple[str, ...]) -> None:
        """Set up keys: this attempt's alone, or a new batch whose first slot it uses."""
        plan, self.layout, self.sets_up = self.plan, layout, True
        self.cohort = participants
        self.waiting = set(participants)
        self._certificates = {}
        verify = None if self.peers is None else _verifier(self.peers, self._certificates)
        parameters: dict[str, Any] = {
            "sites": participants,
            "vector_length": layout.length,
            "modulus_bits": layout.quantizer.modulus_bits,
            "threshold": plan.share_threshold(len(participants)),
            "neighbours": plan.neighbours or None,
        }
        if plan.key_batch == 1:
            self.setup = RoundSetup(context=self.context, **parameters)
            self.server = SecAggServer(self.setup, verify=verify)
            return
        setup = KeyBatchSetup(context=self.context, size=plan.key_batch, **parameters)
        self.keys = BatchKeys(KeyBatchServer(setup, verify=verify), self._certificates)
        self.server = self.keys.server.server(self.keys.server.take())
        self.setup = self.server.setup
        self.key_slot = self.setup.context

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
        expected = (
            "masked" if self.stage == "train" and not self.sets_up else _REPLY.get(self.stage)
        )
        if msg.stage != expected:
            raise ProtocolError(
                f"{msg.stage!r} message from {site} while the round is in stage "
                f"{self.stage!r} (expects {expected!r})"
            )
        if site not in self.waiting:
            raise ProtocolError(f"{site} is not expected to answer stage {self.stage!r}")
        try:
            self._file(site, msg)
        except SecAggAbort as exc:
            raise ProtocolError(str(exc)) from None
        self._answers[site] = digest
        self._accepted.add(digest)
        self.waiting.discard(site)
        return True

    def _file(self, site: str, msg: SecAggMessage) -> None:
        p = msg.payload
        if msg.stage == "masked":
            self._file_masked(site, msg)
        elif self.keys is not None and self.stage in ("train", "keys"):
            self._file_batch(site, p)
        elif self.stage == "train":
            advert = KeyAdvert.from_json(p.get("advert"))
            if advert.site != site or advert.context != self.context:
                raise ProtocolError(f"key advert of {advert.site!r} sent by {site}")
            certificate = p.get("certificate")
            if not isinstance(certificate, str):
                raise ProtocolError("key advert: the signer's certificate is missing")
            self._certificates[site] = certificate
            try:
                self.server.receive_advert(advert)
            except BaseException:
                del self._certificates[site]
                raise
        elif self.stage == "keys":
            ciphertexts = p.get("ciphertexts")
            if not isinstance(ciphertexts, dict):
                raise ProtocolError("shares: 'ciphertexts' must be an object")
            self.server.receive_shares(site, {v: _hex(c) for v, c in ciphertexts.items()})
        elif self.stage == "confirm":
            self.server.receive_confirmation(site, _hex(p.get("signature")))
            self._confirmed.add(site)
        elif self.stage == "unmask":
            self.server.receive_unmask(UnmaskResponse.from_json(p.get("response")))

    def _file_masked(self, site: str, msg: SecAggMessage) -> None:
        vector = msg.arrays.get("masked")
        if vector is None or set(msg.arrays) != {"masked"}:
            raise ProtocolError("masked input: exactly one array 'masked' expected")
        if vector.shape != (self.layout.length,) or vector.dtype != self.setup.dtype:
            raise IntegrityError(
                f"masked input of {site}: shape {vector.shape} {vector.dtype}, the study "
                f"expects ({self.layout.length},) {self.setup.dtype}"
            )
        self.server.receive_masked(site, vector)

    def _file_batch(self, site: str, p: Mapping[str, Any]) -> None:
        """A set-up answer: every slot's advert (``train``) or sealed shares (``keys``)."""
        assert self.keys is not None
        if self.stage == "keys":
            self.keys.server.receive_shares(site, read_share_out(p))
            return
        adverts, certificate = read_advert(p)
        if any(a.site != site for a in adverts):
            raise ProtocolError(f"key adverts of another site sent by {site}")
        self._certificates[site] = certificate
        try:
            self.keys.server.receive_adverts(site, adverts)
        except BaseException:
            del self._certificates[site]
            raise

    # --- stage transitions ------------------------------------------------------------------------
    @property
    def stage_complete(self) -> bool:
        """Whether every site still in the current stage has answered."""
        return self.stage != "done" and not self.waiting

    def advance(self, *, now: float, stage_timeout_s: float, force: bool = False) -> bool:
        """Close the current stage if it is complete, past its deadline, or ``force``; return
        whether the stage changed. An abort is recorded in :attr:`aborted`."""
        if self.stage == "done" or self.aborted is not None:
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
        if self.stage == "train" and self.keys is not None:
            if self.sets_up:
                self._close_batch_adverts()
            else:
                self._close_masked()
        elif self.stage == "keys" and self.keys is not None:
            self._close_batch_shares()
        elif self.stage == "train":
            adverts = self.server.close_adverts()
            payload = {
                "adverts": {s: a.to_json() for s, a in adverts.items()},
                "certificates": {s: self._certificates[s] for s in adverts},
            }
            self._broadcast("keys", sorted(adverts), lambda _: payload)
        elif self.stage == "keys":
            routed, survivors = self.server.close_shares()
            self._broadcast(
                "shares",
                survivors,
                lambda s: {
                    "ciphertexts": {u: c.hex() for u, c in routed.get(s, {}).items()},
                    "survivors": list(survivors),
                },
            )
        elif self.stage == "shares":
            self._close_masked()
        elif self.stage == "confirm" and self._ask_excused():
            return
        elif self.stage == "confirm":
            request = self.server.close_confirmations()
            body = {"request": request.to_json()}
            self._broadcast("unmask", sorted(request.confirmations), lambda _: body)
        elif self.stage == "unmask":
            total, survivors = self.server.result()
            self.survivors = tuple(survivors)
            self.result = self.layout.decode(total)
            self.stage = "done"
            self.waiting = set()
            self._outgoing = {}

    def _close_masked(self) -> None:
        """U3 is known: ask its members to confirm it (with key batches, only the online ones
        when they can complete the round alone)."""
        u3 = self.server.close_masked()
        self._u3 = tuple(u3)
        asked = [s for s in u3 if s not in self.offline]
        if len(asked) == len(u3) or not self.server.recoverable_by(asked):
            asked = list(u3)
        self._excused = sorted(set(u3) - set(asked))
        self._broadcast("confirm", asked, lambda _: {"survivors": list(u3)})

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
        self._broadcast("confirm", late, lambda _: {"survivors": list(self._u3)})
        return True

    def _close_batch_adverts(self) -> None:
        """Every slot's adverts (U1) and the members' certificates, to every member."""
        assert self.keys is not None
        slots = self.keys.server.close_adverts()
        members = sorted(set().union(*slots))
        payload = keys_payload(slots, {s: self._certificates[s] for s in members})
        self._broadcast("keys", members, lambda _: payload)

    def _close_batch_shares(self) -> None:
        """Every slot's routed shares and U2 to each of its members; this attempt's slot's
        members then mask."""
        assert self.keys is not None
        routing = self.keys.server.close_shares()
        members = sorted(set().union(*(r.survivors for r in routing)))
        self._broadcast("shares", members, lambda site: shares_payload(routing, site))
        self.waiting = set(self.keys.server.members(self.setup.context.slot or 0))

    def _broadcast(self, stage: str, sites: Sequence[str], body: Any) -> None:
        self.stage = stage
        self.waiting = set(sites)
        self._outgoing = {
            s: SecAggMessage(
                Header(
                    MessageKind.SECAGG,
                    self.context.federation,
                    self.context.study,
                    self.context.round,
                    COORDINATOR,
                    s,
                ),
                stage,
                self.context.attempt,
                body(s),
            )
            for s in sites
        }


def _verifier(
    peers: SignatureVerifier, certificates: Mapping[str, str]
) -> Callable[[str, bytes, bytes], bool]:
    """``verify(site, data, signature)`` against the certificate ``site`` sent with its advert."""

    def verify(site: str, data: bytes, signature: bytes) -> bool:
        certificate = certificates.get(site)
        if certificate is None:
            return False
        try:
            peers(site, bytes.fromhex(certificate), data, signature)
        except (AllianceError, ValueError):
            return False
        return True

    return verify


def _hex(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError("secure aggregation: expected a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ProtocolError("secure aggregation: invalid hex string") from None
