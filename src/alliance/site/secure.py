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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from alliance.core.errors import AllianceError, ConfigError
from alliance.protocol.codec import MessageSigner, SignatureVerifier
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import SecAggMessage, TrainTask
from alliance.protocol.secure_update import UpdateLayout
from alliance.secagg import KeyAdvert, RoundContext, RoundSetup, SecAggClient, UnmaskRequest
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
    ) -> SecAggMessage:
        """Train (once per round), keep the encoded vector, and advertise this attempt's keys."""
        if self.signer is None or self.peers is None:
            raise ConfigError(
                f"site {self.site_id}: this study uses secure aggregation, which needs the "
                "site's signing identity and the consortium's CA to check other sites"
            )
        if self.site_id not in task.cohort:
            raise AllianceError(f"round {task.header.round}: this site is not in the cohort")
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
        context = RoundContext(
            federation=task.header.federation,
            study=task.header.study,
            round=task.header.round,
            attempt=task.attempt,
        )
        setup = RoundSetup(
            context=context,
            sites=task.cohort,
            vector_length=layout.length,
            modulus_bits=layout.quantizer.modulus_bits,
            threshold=task.secagg.share_threshold(len(task.cohort)),
            neighbours=task.secagg.neighbours or None,
        )
        client = SecAggClient(
            setup,
            self.site_id,
            sign=self.signer.sign,
            verify=self._verify_for((*key, task.attempt)),
        )
        self._attempts = {
            k: v for k, v in self._attempts.items() if k[:2] == key and k[2] >= task.attempt
        }
        self._attempts[(*key, task.attempt)] = _Attempt(client, task)
        advert = client.advertise()
        payload = {"advert": advert.to_json(), "certificate": self.signer.certificate_der.hex()}
        return self._message(task, "advert", payload)

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
