"""The site's side of secure rounds: it trains once, then answers each masking stage.

A secure round (see :mod:`alliance.secagg` for the protocol) reaches a site as a train task
naming the round's cohort and attempt. The site trains and privatises its update once per
``(study, round, model version)`` and keeps the encoded vector: if the coordinator restarts the
round (a new *attempt* with fresh keys), the very same privatised update is masked again, so a
retry releases nothing new and costs no extra privacy budget. Then, stage by stage:

``train task`` → signed key advertisement; ``keys`` → encrypted shares for every other member;
``shares`` → the masked vector; ``confirm`` → a signature over the list of survivors;
``unmask`` → shares of the survivors' self-mask seeds and of the dropped sites' mask keys.

Every refusal of the :class:`~alliance.secagg.SecAggClient` (a forged advertisement, a site listed
as both alive and dropped, a second unmask request, a message of another round) is logged and
answered with nothing: the coordinator then sees this site as dropped, which reveals nothing.

Per-round keys (``key_batch = 1``) are a :class:`~alliance.secagg.KeyBatchClient` of one slot
bound to the attempt itself, set up by every attempt: the same code answers both, with the typed
messages of :mod:`alliance.protocol.secagg_messages`. A task delivered again is answered with the
same message (its answer was lost), never with fresh keys.

With key batches (``[secure_aggregation] key_batch > 1``, :mod:`alliance.secagg.batched`) the
train task names a key slot. A slot of the batch set up in this very attempt means *set up*: the
site trains, then answers the ``train``, ``keys`` and ``shares`` stages for every slot of a new
:class:`~alliance.secagg.KeyBatchClient` at once (its previous batch, and the secrets in it, are
dropped) and masks with the named slot. A slot of the batch the site holds means *use it*: the
site trains, masks with that slot and answers the task with its masked input, one message. A
slot the site does not hold (it joined, refused or missed the set-up), a batch it does not hold,
or a slot already spent is declined before training, so no privacy budget is spent on a round the
site cannot take part in. The share routing of a set-up is taken even when it arrives after its
round moved on (a late courier: the set-up attempt is kept until the site begins another one,
which it cannot do on this batch without the routing), so the site can use the later slots.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from alliance.core.errors import AllianceError, ConfigError, ProtocolError, SecAggAbort
from alliance.protocol.codec import MessageSigner, SignatureVerifier
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import TrainTask
from alliance.protocol.secagg_messages import (
    CohortKeys,
    Confirmation,
    ConfirmRequest,
    KeyAdverts,
    MaskedInput,
    RoutedShares,
    SealedShares,
    SecAggMessage,
    UnmaskCall,
    UnmaskShares,
)
from alliance.protocol.secure_update import UpdateLayout
from alliance.secagg import KeyBatchClient, KeyBatchSetup, RoundContext, SecAggClient
from alliance.site.privatize import LocalUpdate

__all__ = ["SecureRounds"]

logger = logging.getLogger(__name__)


@dataclass
class _Encoded:
    vector: npt.NDArray[Any]
    model_version: int


@dataclass
class _Attempt:
    task: TrainTask
    #: The keys (a batch of one slot for per-round keys), the slot this attempt masks with, and
    #: the answer to its task.
    batch: KeyBatchClient
    slot: int
    reply: SecAggMessage | None = None

    @property
    def client(self) -> SecAggClient:
        """The slot's protocol state (its consistency check and unmasking)."""
        return self.batch.slot(self.slot)


class SecureRounds:
    """One site's secure-aggregation state across rounds.

    Parameters
    ----------
    site_id
        The site's id (must be the signer's name).
    signer
        Signs key advertisements and consistency confirmations (the site's certificate key).
    peers
        Verifies other sites' signatures against the consortium's CA.
    """

    def __init__(
        self,
        site_id: str,
        *,
        signer: MessageSigner | None,
        peers: SignatureVerifier | None,
    ) -> None:
        self.site_id = site_id
        self.signer = signer
        self.peers = peers
        self._encoded: dict[tuple[str, int], _Encoded] = {}
        self._attempts: dict[tuple[str, int, int], _Attempt] = {}
        self._certificates: dict[tuple[str, int, int], dict[str, bytes]] = {}
        #: Each study's current keys (per-round keys: the last attempt's batch of one slot).
        self._batches: dict[str, KeyBatchClient] = {}
        #: How many coordinates of the last update were clipped by the quantiser's range.
        self.last_clipped = 0

    def has_update(self, task: TrainTask) -> bool:
        """Whether this round's privatised update is already computed (a restarted attempt)."""
        cached = self._encoded.get((task.header.study, task.header.round))
        return cached is not None and cached.model_version == task.model_version

    def begin(
        self,
        task: TrainTask,
        train: Callable[[], tuple[LocalUpdate, dict[str, float]]],
    ) -> list[SecAggMessage]:
        """Train (once per round), keep the encoded vector, and answer the task: the key
        adverts of new keys (per-round keys, or a new key batch), or the masked input (a slot
        of the batch already set up). The same answer again for the same task; an empty list
        when the site cannot take part (nothing trained).
        """
        if self.signer is None or self.peers is None:
            raise ConfigError(
                f"site {self.site_id}: this study uses secure aggregation, which needs the "
                "site's signing identity and the consortium's CA to check other sites"
            )
        if self.site_id not in task.cohort:
            raise AllianceError(f"round {task.header.round}: this site is not in the cohort")
        h = task.header
        done = self._attempts.get((h.study, h.round, task.attempt))
        if done is not None and done.reply is not None and done.task.key_slot == task.key_slot:
            return [done.reply]  # the same task again (its answer was lost)
        try:
            base, slot = self._slot_of(task)
        except ProtocolError as exc:
            logger.warning("site %s takes no part in round %d: %s", self.site_id, h.round, exc)
            return []
        layout = self._encode(task, train)
        if slot is not None:
            attempt = _Attempt(task, self._batches[h.study], slot)
            self._keep(task, attempt)
            try:
                attempt.reply = self._masked(attempt)
            except SecAggAbort as exc:
                logger.warning("site %s refused to mask round %d: %s", self.site_id, h.round, exc)
                return []
            return [attempt.reply]
        batch = self._batches.get(h.study)
        if batch is None or batch.setup.context != base:
            setup = KeyBatchSetup(
                context=base,
                size=task.secagg.key_batch,
                sites=task.cohort,
                vector_length=layout.length,
                modulus_bits=layout.quantizer.modulus_bits,
                threshold=task.secagg.share_threshold(len(task.cohort)),
                neighbours=task.secagg.neighbours or None,
            )
            verify = self._verify_for((h.study, base.round, base.attempt))
            batch = KeyBatchClient(setup, self.site_id, sign=self.signer.sign, verify=verify)
            # The previous keys, and the shares held for others, go with them.
            self._batches[h.study] = batch
        attempt = _Attempt(task, batch, 0)
        self._keep(task, attempt)
        attempt.reply = KeyAdverts(
            self._header(task), task.attempt, batch.advertise(), self.signer.certificate_der
        )
        return [attempt.reply]

    def _slot_of(self, task: TrainTask) -> tuple[RoundContext, int | None]:
        """The context of the task's keys, and the slot to mask with (``None``: set up new
        keys in this attempt, a batch of ``key_batch`` slots).

        Raises
        ------
        ProtocolError
            The site cannot take part: the slot is inconsistent with the task, or names a batch
            or slot this site does not hold (it joined, refused or missed that set-up), or a
            spent slot.
        """
        h, slot = task.header, task.key_slot
        if task.secagg.key_batch == 1 and slot is None:
            return _context(task), None  # per-round keys
        if slot is None or slot.slot is None or task.secagg.key_batch == 1:
            raise ProtocolError("the task's key slot and the study's key_batch disagree")
        if (slot.federation, slot.study) != (h.federation, h.study):
            raise ProtocolError(f"the task names {slot.describe()}")
        base = RoundContext(slot.federation, slot.study, slot.round, slot.attempt)
        if base == _context(task):
            if slot.slot != 0:
                raise ProtocolError(f"a new key batch starts at slot 0, not {slot.slot}")
            return base, None
        batch = self._batches.get(h.study)
        if batch is None or batch.setup.context != base:
            raise ProtocolError(f"it holds no keys of {slot.describe()}; it sits the batch out")
        if tuple(sorted(task.cohort)) != batch.setup.sites:
            raise ProtocolError("the task's cohort is not its key batch's")
        if slot.slot not in batch.usable:
            raise ProtocolError(f"{slot.describe()} is spent or was not set up at this site")
        return base, slot.slot

    def _encode(
        self, task: TrainTask, train: Callable[[], tuple[LocalUpdate, dict[str, float]]]
    ) -> UpdateLayout:
        """Train and encode this round's update unless it is already (a restarted attempt)."""
        key = (task.header.study, task.header.round)
        layout = UpdateLayout(task.weights, task.secagg, len(task.cohort))
        if not self.has_update(task):
            local, metrics = train()
            vector, clipped = layout.encode(local.delta, local.num_examples, metrics)
            self.last_clipped = clipped
            if clipped:
                logger.warning(
                    "site %s round %d: %d update coordinates clipped to ±%g for secure aggregation",
                    self.site_id,
                    task.header.round,
                    clipped,
                    task.secagg.clip_range,
                )
            # Older rounds' vectors are no longer needed.
            self._encoded = {k: v for k, v in self._encoded.items() if k[0] != key[0]}
            self._encoded[key] = _Encoded(vector, task.model_version)
        return layout

    def _keep(self, task: TrainTask, attempt: _Attempt) -> None:
        """File ``attempt``; earlier attempts and rounds, and their certificates, are dropped."""
        study, round_ = task.header.study, task.header.round
        self._attempts = {
            k: v
            for k, v in self._attempts.items()
            if k[:2] == (study, round_) and k[2] >= task.attempt
        }
        self._attempts[(study, round_, task.attempt)] = attempt
        batches = {
            (s, b.setup.context.round, b.setup.context.attempt) for s, b in self._batches.items()
        }
        self._certificates = {
            k: v for k, v in self._certificates.items() if k in self._attempts or k in batches
        }

    def _masked(self, attempt: _Attempt) -> MaskedInput:
        """The masked input of ``attempt``'s slot (the slot is then spent)."""
        h = attempt.task.header
        encoded = self._encoded[(h.study, h.round)]
        masked = attempt.batch.mask(attempt.slot, encoded.vector)
        return MaskedInput(self._header(attempt.task), attempt.task.attempt, masked)

    def handle(self, msg: SecAggMessage) -> list[SecAggMessage]:
        """Answer one stage message; an empty list when this site refuses or is not in it."""
        h = msg.header
        attempt = self._attempts.get((h.study, h.round, msg.attempt))
        if attempt is None:
            logger.warning(
                "site %s: %s message for study %s round %d attempt %d, which this site is not "
                "taking part in; ignored",
                self.site_id,
                msg.stage,
                h.study,
                h.round,
                msg.attempt,
            )
            return []
        try:
            return [self._answer(attempt, msg)]
        except AllianceError as exc:
            logger.warning(
                "site %s refused %s stage of round %d: %s", self.site_id, msg.stage, h.round, exc
            )
            return []

    def _answer(self, attempt: _Attempt, msg: SecAggMessage) -> SecAggMessage:
        """This site's answer to one stage of ``attempt`` (every slot of a set-up at once)."""
        batch, task = attempt.batch, attempt.task
        if isinstance(msg, CohortKeys):
            self._certificates[(msg.header.study, msg.header.round, msg.attempt)] = dict(
                msg.certificates
            )
            sealed = batch.share_keys(msg.slots)
            self._log_refused(batch)
            return SealedShares(self._header(task), task.attempt, tuple(sealed))
        if isinstance(msg, RoutedShares):
            batch.receive_shares(msg.slots)
            self._log_refused(batch)
            return self._masked(attempt)
        if isinstance(msg, ConfirmRequest):
            signature = attempt.client.confirm(msg.survivors)
            return Confirmation(self._header(task), task.attempt, signature)
        if isinstance(msg, UnmaskCall):
            response = attempt.client.answer(msg.request)
            return UnmaskShares(self._header(task), task.attempt, response)
        raise AllianceError(f"a site does not answer a {msg.stage!r} stage message")

    def _log_refused(self, batch: KeyBatchClient) -> None:
        for slot, reason in sorted(batch.refused.items()):
            logger.warning("site %s will not use key slot %d: %s", self.site_id, slot, reason)

    def _verify_for(self, key: tuple[str, int, int]) -> Callable[[str, bytes, bytes], bool]:
        def verify(site: str, data: bytes, signature: bytes) -> bool:
            certificate = self._certificates.get(key, {}).get(site)
            if certificate is None or self.peers is None:
                return False
            try:
                self.peers(site, certificate, data, signature)
            except AllianceError:
                return False
            return True

        return verify

    def _header(self, task: TrainTask) -> Header:
        """The header of this site's answers in ``task``'s round."""
        h = task.header
        return Header(MessageKind.SECAGG, h.federation, h.study, h.round, self.site_id, COORDINATOR)


def _context(task: TrainTask) -> RoundContext:
    h = task.header
    return RoundContext(federation=h.federation, study=h.study, round=h.round, attempt=task.attempt)
