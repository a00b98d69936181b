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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from alliance.core.errors import AllianceError, ConfigError, ProtocolError, SecAggAbort
from alliance.protocol.codec import MessageSigner, SignatureVerifier
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.key_batch import advert_payload, read_keys, read_shares, share_out_payload
from alliance.protocol.messages import SecAggMessage, TrainTask
from alliance.protocol.secure_update import UpdateLayout
from alliance.secagg import (
    KeyAdvert,
    KeyBatchClient,
    KeyBatchSetup,
    RoundContext,
    RoundSetup,
    SecAggClient,
    UnmaskRequest,
)
from alliance.site.privatize import LocalUpdate

__all__ = ["SecureRounds"]

logger = logging.getLogger(__name__)


@dataclass
class _Encoded:
    vector: npt.NDArray[Any]
    model_version: int


@dataclass
class _Attempt:
    client: SecAggClient
    task: TrainTask
    #: Key batches: the batch, the slot this attempt masks with, and the answer to its task.
    batch: KeyBatchClient | None = None
    slot: int = 0
    reply: SecAggMessage | None = None


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
        #: Each study's current key batch (key batches only).
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
        """Train (once per round), keep the encoded vector, and answer the task: this attempt's
        key advert, or with key batches the batch's adverts (set-up) or the masked input (a
        slot already set up). An empty list when the site cannot take part (nothing trained).
        """
        if self.signer is None or self.peers is None:
            raise ConfigError(
                f"site {self.site_id}: this study uses secure aggregation, which needs the "
                "site's signing identity and the consortium's CA to check other sites"
            )
        if self.site_id not in task.cohort:
            raise AllianceError(f"round {task.header.round}: this site is not in the cohort")
        if task.key_slot is not None or task.secagg.key_batch > 1:
            return self._begin_slot(task, train)
        layout = self._encode(task, train)
        key = (task.header.study, task.header.round)
        setup = RoundSetup(context=_context(task), **_parameters(task, layout))
        client = SecAggClient(
            setup,
            self.site_id,
            sign=self.signer.sign,
            verify=self._verify_for((*key, task.attempt)),
        )
        self._keep(task, _Attempt(client, task))
        advert = client.advertise()
        payload = {"advert": advert.to_json(), "certificate": self.signer.certificate_der.hex()}
        return [self._message(task, "advert", payload)]

    def _begin_slot(
        self, task: TrainTask, train: Callable[[], tuple[LocalUpdate, dict[str, float]]]
    ) -> list[SecAggMessage]:
        """Key batches: set up a new batch, or mask with a slot of the one held."""
        assert self.signer is not None
        h = task.header
        done = self._attempts.get((h.study, h.round, task.attempt))
        if done is not None and done.reply is not None and done.task.key_slot == task.key_slot:
            return [done.reply]  # the same task again (its answer was lost)
        try:
            slot, sets_up = self._slot_of(task)
        except ProtocolError as exc:
            logger.warning("site %s takes no part in round %d: %s", self.site_id, h.round, exc)
            return []
        layout = self._encode(task, train)
        base = RoundContext(slot.federation, slot.study, slot.round, slot.attempt)
        batch = self._batches.get(h.study)
        if not sets_up:
            assert batch is not None
            assert slot.slot is not None
            attempt = _Attempt(batch.slot(slot.slot), task, batch, slot.slot)
            self._keep(task, attempt)
            try:
                attempt.reply = self._masked(attempt)
            except SecAggAbort as exc:
                logger.warning("site %s refused to mask round %d: %s", self.site_id, h.round, exc)
                return []
            return [attempt.reply]
        if batch is None or batch.setup.context != base:
            batch_setup = KeyBatchSetup(
                context=base, size=task.secagg.key_batch, **_parameters(task, layout)
            )
            verify = self._verify_for((h.study, base.round, base.attempt))
            batch = KeyBatchClient(batch_setup, self.site_id, sign=self.signer.sign, verify=verify)
            # The previous batch's unused keys and the shares held for others go with it.
            self._batches[h.study] = batch
        attempt = _Attempt(batch.slot(0), task, batch, 0)
        self._keep(task, attempt)
        payload = advert_payload(batch.advertise(), self.signer.certificate_der)
        attempt.reply = self._message(task, "advert", payload)
        return [attempt.reply]

    def _slot_of(self, task: TrainTask) -> tuple[RoundContext, bool]:
        """The task's key slot and whether it asks for a new batch.

        Raises
        ------
        ProtocolError
            The site cannot take part: the slot is inconsistent with the task, or names a batch
            or slot this site does not hold (it joined, refused or missed that set-up), or a
            spent slot.
        """
        h, slot = task.header, task.key_slot
        if slot is None or slot.slot is None or task.secagg.key_batch == 1:
            raise ProtocolError("the task's key slot and the study's key_batch disagree")
        if (slot.federation, slot.study) != (h.federation, h.study):
            raise ProtocolError(f"the task names {slot.describe()}")
        base = RoundContext(slot.federation, slot.study, slot.round, slot.attempt)
        if base == _context(task):
            if slot.slot != 0:
                raise ProtocolError(f"a new key batch starts at slot 0, not {slot.slot}")
            return slot, True
        batch = self._batches.get(h.study)
        if batch is None or batch.setup.context != base:
            raise ProtocolError(f"it holds no keys of {slot.describe()}; it sits the batch out")
        if tuple(sorted(task.cohort)) != batch.setup.sites:
            raise ProtocolError("the task's cohort is not its key batch's")
        if slot.slot not in batch.usable:
            raise ProtocolError(f"{slot.describe()} is spent or was not set up at this site")
        return slot, False

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

    def _masked(self, attempt: _Attempt) -> SecAggMessage:
        """Key batches: the masked input of ``attempt``'s slot."""
        assert attempt.batch is not None
        h = attempt.task.header
        encoded = self._encoded[(h.study, h.round)]
        masked = attempt.batch.mask(attempt.slot, encoded.vector)
        return self._message(attempt.task, "masked", {}, {"masked": masked})

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
            return self._answer(attempt, msg)
        except AllianceError as exc:
            logger.warning(
                "site %s refused %s stage of round %d: %s", self.site_id, msg.stage, h.round, exc
            )
            return []

    def _answer(self, attempt: _Attempt, msg: SecAggMessage) -> list[SecAggMessage]:
        client, task, p = attempt.client, attempt.task, msg.payload
        key = (msg.header.study, msg.header.round, msg.attempt)
        if attempt.batch is not None and msg.stage in ("keys", "shares"):
            return self._answer_batch(attempt, msg)
        if msg.stage == "keys":
            adverts = {s: KeyAdvert.from_json(a) for s, a in _mapping(p, "adverts").items()}
            self._certificates[key] = {
                s: bytes.fromhex(str(c)) for s, c in _mapping(p, "certificates").items()
            }
            ciphertexts = client.share_keys(adverts)
            hexed = {v: c.hex() for v, c in ciphertexts.items()}
            return [self._message(task, "share_out", {"ciphertexts": hexed})]
        if msg.stage == "shares":
            client.receive_shares(
                {u: bytes.fromhex(str(c)) for u, c in _mapping(p, "ciphertexts").items()}
            )
            encoded = self._encoded[(msg.header.study, msg.header.round)]
            masked = client.mask(encoded.vector, survivors=_sites(p, "survivors"))
            return [self._message(task, "masked", {}, {"masked": masked})]
        if msg.stage == "confirm":
            signature = client.confirm(_sites(p, "survivors"))
            return [self._message(task, "confirmation", {"signature": signature.hex()})]
        if msg.stage == "unmask":
            response = client.answer(UnmaskRequest.from_json(p.get("request")))
            return [self._message(task, "unmask_out", {"response": response.to_json()})]
        raise AllianceError(f"a site does not answer a {msg.stage!r} stage message")

    def _answer_batch(self, attempt: _Attempt, msg: SecAggMessage) -> list[SecAggMessage]:
        """Key batch set-up: seal every slot's shares, or take every slot's and mask."""
        batch, task, p = attempt.batch, attempt.task, msg.payload
        assert batch is not None
        if msg.stage == "shares":
            batch.receive_shares(read_shares(p))
            self._log_refused(batch)
            return [self._masked(attempt)]
        adverts, certificates = read_keys(p)
        self._certificates[(msg.header.study, msg.header.round, msg.attempt)] = certificates
        sealed = batch.share_keys(adverts)
        self._log_refused(batch)
        return [self._message(task, "share_out", share_out_payload(sealed))]

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

    def _message(
        self,
        task: TrainTask,
        stage: str,
        payload: Mapping[str, Any],
        arrays: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> SecAggMessage:
        header = Header(
            MessageKind.SECAGG,
            task.header.federation,
            task.header.study,
            task.header.round,
            self.site_id,
            COORDINATOR,
        )
        return SecAggMessage(header, stage, task.attempt, payload, dict(arrays or {}))


def _context(task: TrainTask) -> RoundContext:
    h = task.header
    return RoundContext(federation=h.federation, study=h.study, round=h.round, attempt=task.attempt)


def _parameters(task: TrainTask, layout: UpdateLayout) -> dict[str, Any]:
    """The public parameters of the task's keys, besides their context."""
    return {
        "sites": task.cohort,
        "vector_length": layout.length,
        "modulus_bits": layout.quantizer.modulus_bits,
        "threshold": task.secagg.share_threshold(len(task.cohort)),
        "neighbours": task.secagg.neighbours or None,
    }


def _mapping(payload: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = payload.get(key)
    if not isinstance(value, dict):
        raise AllianceError(f"secure aggregation payload field {key!r} must be an object")
    return value


def _sites(payload: Mapping[str, Any], key: str) -> list[str]:
    value = payload.get(key)
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise AllianceError(f"secure aggregation payload field {key!r} must be a list of site ids")
    return list(value)
