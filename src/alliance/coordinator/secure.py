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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy.typing as npt

from alliance.core.errors import AllianceError, IntegrityError, ProtocolError, SecAggAbort
from alliance.protocol.codec import SignatureVerifier, content_digest
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import SecAggMessage
from alliance.protocol.privacy import SecAggPlan
from alliance.protocol.secure_update import SecureSum, UpdateLayout
from alliance.secagg import (
    KeyAdvert,
    RoundContext,
    RoundSetup,
    SecAggServer,
    UnmaskResponse,
)

__all__ = ["STAGES", "SecureRound"]

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
    ) -> None:
        self.context = context
        self.cohort = tuple(sorted(cohort))
        self.plan = plan
        self.layout = UpdateLayout(reference, plan, len(self.cohort))
        self.setup = RoundSetup(
            context=context,
            sites=self.cohort,
            vector_length=self.layout.length,
            modulus_bits=self.layout.quantizer.modulus_bits,
            threshold=plan.share_threshold(len(self.cohort)),
            neighbours=plan.neighbours or None,
        )
        self.peers = peers
        self.server = SecAggServer(self.setup, verify=None if peers is None else self._verify)
        self.stage = "train"
        self.deadline = deadline
        #: Sites still expected to answer the current stage.
        self.waiting: set[str] = set(self.cohort)
        #: Content digest of each site's answer to the current stage (recognises resends).
        self._answers: dict[str, str] = {}
        self._accepted: set[str] = set()
        self._outgoing: dict[str, SecAggMessage] = {}
        self._certificates: dict[str, str] = {}
        self.refused: set[str] = set()
        self.aborted: str | None = None
        self.result: SecureSum | None = None
        self.survivors: tuple[str, ...] = ()

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
        if self.stage == "train":
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
        elif self.stage == "shares":
            vector = msg.arrays.get("masked")
            if vector is None or set(msg.arrays) != {"masked"}:
                raise ProtocolError("masked input: exactly one array 'masked' expected")
            if vector.shape != (self.layout.length,) or vector.dtype != self.setup.dtype:
                raise IntegrityError(
                    f"masked input of {site}: shape {vector.shape} {vector.dtype}, the study "
                    f"expects ({self.layout.length},) {self.setup.dtype}"
                )
            self.server.receive_masked(site, vector)
        elif self.stage == "confirm":
            self.server.receive_confirmation(site, _hex(p.get("signature")))
        elif self.stage == "unmask":
            self.server.receive_unmask(UnmaskResponse.from_json(p.get("response")))

    def _verify(self, site: str, data: bytes, signature: bytes) -> bool:
        certificate = self._certificates.get(site)
        if certificate is None or self.peers is None:
            return False
        try:
            self.peers(site, bytes.fromhex(certificate), data, signature)
        except (AllianceError, ValueError):
            return False
        return True

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
        if self.stage == "train":
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
            u3 = self.server.close_masked()
            self._broadcast("confirm", u3, lambda _: {"survivors": list(u3)})
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


def _hex(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError("secure aggregation: expected a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ProtocolError("secure aggregation: invalid hex string") from None
