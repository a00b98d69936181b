"""The model card: what a study's final model is, how it was made and how well it did, signed.

A finished study's model goes home with a card (:class:`ModelCard`): what it is for and what it
is not for ("research use, not a medical device"), the model kind and its ``[model]`` table, the
HPO release and catalogue it was trained with, strategy and rounds, the participating hospitals
and their case counts, the hospitals' own evaluation of the final model on their held-out cases,
each hospital's ε and δ spent in the study (when it is private), the study hash the hospitals
approved, the SHA-256 of the model file, when it was issued and its revision number.

Small counts are suppressed with the quality report's rule (:func:`alliance.data.quality.protect`
and :func:`~alliance.data.quality.suppress`, threshold :data:`MIN_COUNT`): a hospital's case count
between 1 and 4 shows as ``"<5"``; a hospital's evaluation shows its rates only when it held at
least :data:`MIN_COUNT` test cases. Raw counts stay at the coordinator.

Bytes. A card file is canonical JSON (keys sorted, no spaces, UTF-8)::

    {"card": {...the card...},
     "signature": {"signer": "coordinator", "certificate": <base64 DER>, "ed25519": <base64>}}

The coordinator signs ``DOMAIN + canonical(card)`` with its message-signing key (the one that
signs every message it sends), through the same :class:`~alliance.protocol.codec.MessageSigner`;
since the card holds the model file's SHA-256, the signature covers the model too. The model file
itself stays the plain codec frame :func:`alliance.store.modelfile.load_model` reads (a signed
frame would not load there), so the card is what vouches for it.

:func:`verify_card` is what a hospital (and the operator's ``alliance study model``) runs before
trusting a model: the signer's certificate and signature through a
:class:`~alliance.protocol.codec.SignatureVerifier` (the consortium's trust store, role
coordinator), the model's hash, the study hash the hospital approved, and optionally the study and
version it expects. Each refusal is an :class:`~alliance.core.errors.IntegrityError` naming what
was wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from alliance.core.errors import IntegrityError, ProtocolError
from alliance.data.quality import Shown, protect, suppress
from alliance.protocol.codec import MessageSigner, SignatureVerifier
from alliance.protocol.envelope import COORDINATOR

__all__ = [
    "CARD_FORMAT",
    "INTENDED_USE",
    "MAX_CARD_BYTES",
    "MIN_COUNT",
    "NOT_INTENDED_USE",
    "EvaluationCounts",
    "ModelCard",
    "canonical_json",
    "case_counts",
    "evaluation_summary",
    "model_sha256",
    "read_card",
    "sign_card",
    "verify_card",
]

CARD_FORMAT = "alliance.model-card/1"
DOMAIN = b"GA-MODEL-CARD/1\n"
MAX_CARD_BYTES = 1 << 20
#: Counts below this are suppressed, as in the data-quality report's default.
MIN_COUNT = 5
INTENDED_USE = (
    "Research use: ranking candidate rare diseases from a patient's observed and excluded HPO "
    "phenotypes, to support a clinician's differential diagnosis in research settings."
)
NOT_INTENDED_USE = (
    "Not a medical device. Not for making or excluding a diagnosis, or choosing a treatment, "
    "without a clinician's independent judgement and confirmatory testing; not validated on "
    "populations or coding practices other than the participating hospitals'."
)
_TOP = (1, 3, 10)


def canonical_json(value: Any) -> bytes:
    """Keys sorted, no spaces, UTF-8: the same value gives the same bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def model_sha256(model: bytes) -> str:
    """``sha256:`` and the hex digest of a model file's bytes."""
    return "sha256:" + hashlib.sha256(model).hexdigest()


@dataclass(frozen=True)
class EvaluationCounts:
    """One hospital's evaluation of the final model: test cases, and how many had the true
    disease ranked in the top 1, 3 and 10 (counts only)."""

    n: int
    top1: int
    top3: int
    top10: int

    def __post_init__(self) -> None:
        values = (self.n, self.top1, self.top3, self.top10)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ProtocolError(f"evaluation counts must be integers >= 0, got {values}")
        if not self.top1 <= self.top3 <= self.top10 <= self.n:
            raise ProtocolError(
                f"evaluation counts must satisfy top1 <= top3 <= top10 <= n, got {values}"
            )

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float]) -> EvaluationCounts:
        """From a site's ``eval_n``/``eval_top{k}`` metrics."""
        return cls(
            *(int(metrics.get(k, 0)) for k in ("eval_n", "eval_top1", "eval_top3", "eval_top10"))
        )

    def shown(self) -> dict[str, Any]:
        """As a card shows it: the case count suppressed, rates only for enough cases."""
        enough = self.n >= MIN_COUNT
        hits = (self.top1, self.top3, self.top10)
        return {
            "cases": suppress(self.n, MIN_COUNT),
            **{
                f"top{k}": round(h / self.n, 4) if enough else None
                for k, h in zip(_TOP, hits, strict=True)
            },
        }


def evaluation_summary(
    hospitals: Sequence[str], evaluations: Mapping[str, EvaluationCounts]
) -> dict[str, Any]:
    """A card's ``evaluation``: per hospital, overall (pooled counts) and who has not reported."""
    reported = [s for s in hospitals if s in evaluations]
    total = EvaluationCounts(
        *(sum(getattr(evaluations[s], f.name) for s in reported) for f in fields(EvaluationCounts))
    )
    return {
        "per_hospital": {s: evaluations[s].shown() for s in reported},
        "overall": total.shown() if reported else None,
        "pending": [s for s in hospitals if s not in evaluations],
    }


#: How a card shows a hospital's training cases that the coordinator never learned (secure
#: aggregation hides each hospital's count inside the masked sum).
UNDISCLOSED = "not disclosed (secure aggregation)"


def case_counts(counts: Mapping[str, int | None], *, total: int | None = None) -> dict[str, Any]:
    """A card's ``cases``: each hospital's training cases (protected as the quality report
    does, so no small count can be worked out from the total) and the total.

    A count of ``None`` is one the coordinator does not know (secure aggregation); ``total``
    then gives the total, which the masked sum revealed.
    """
    names = sorted(counts)
    known = [s for s in names if counts[s] is not None]
    shown: list[Shown] = protect([int(counts[s] or 0) for s in known], MIN_COUNT)
    per_site: dict[str, Any] = {s: UNDISCLOSED for s in names}
    per_site.update(zip(known, shown, strict=True))
    whole = sum(int(counts[s] or 0) for s in known) if total is None else total
    return {"per_hospital": per_site, "total": whole}


@dataclass(frozen=True)
class ModelCard:
    """What a published model is and how it was made (see the module docstring).

    ``cases``, ``evaluation`` and ``privacy`` are JSON objects as shown (small counts already
    suppressed); ``privacy`` maps each hospital to its ``{"epsilon", "delta"}`` spent, empty for
    a study without differential privacy.
    """

    study: str
    study_hash: str
    federation: str
    version: int
    revision: int
    issued_at: str
    model_kind: str
    model: Mapping[str, Any]
    hpo_version: str | None
    catalogue: Mapping[str, Any]
    strategy: Mapping[str, Any]
    rounds: int
    hospitals: tuple[str, ...]
    cases: Mapping[str, Any]
    evaluation: Mapping[str, Any]
    privacy: Mapping[str, Any]
    model_sha256: str
    model_bytes: int
    intended_use: str = INTENDED_USE
    not_intended_use: str = NOT_INTENDED_USE
    format: str = CARD_FORMAT

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["hospitals"] = list(self.hospitals)
        return out

    def canonical(self) -> bytes:
        """The bytes the coordinator signs."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, raw: Any) -> ModelCard:
        """Validate a card read from a file or a message.

        Raises
        ------
        ProtocolError
            A field is missing, extra or of the wrong type, or the format is another.
        """
        names = {f.name for f in fields(cls)}
        if not isinstance(raw, dict) or set(raw) != names:
            got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise ProtocolError(
                f"model card must have exactly the fields {sorted(names)}, got {got}"
            )
        if raw["format"] != CARD_FORMAT:
            raise ProtocolError(
                f"model card format {raw['format']!r}, this build reads {CARD_FORMAT}"
            )
        for key in ("study", "study_hash", "federation", "issued_at", "model_kind", "model_sha256"):
            if not isinstance(raw[key], str) or not raw[key]:
                raise ProtocolError(f"model card field {key!r} must be a non-empty string")
        for key in ("version", "revision", "rounds", "model_bytes"):
            if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 0:
                raise ProtocolError(f"model card field {key!r} must be an integer >= 0")
        for key in ("model", "catalogue", "strategy", "cases", "evaluation", "privacy"):
            if not isinstance(raw[key], dict):
                raise ProtocolError(f"model card field {key!r} must be an object")
        hospitals = raw["hospitals"]
        if not isinstance(hospitals, list) or not all(isinstance(s, str) for s in hospitals):
            raise ProtocolError("model card field 'hospitals' must be a list of site ids")
        return cls(**{**raw, "hospitals": tuple(hospitals)})

    def revised(self, **changes: Any) -> ModelCard:
        """The next revision of this card with ``changes`` (e.g. a new ``evaluation``)."""
        return replace(self, revision=self.revision + 1, **changes)


def sign_card(card: ModelCard, signer: MessageSigner) -> bytes:
    """The card file's bytes: the card and the coordinator's signature of it.

    Raises
    ------
    ProtocolError
        The signer is not the coordinator.
    """
    if signer.name != COORDINATOR:
        raise ProtocolError(f"only the coordinator signs model cards, not {signer.name!r}")
    signature = signer.sign(DOMAIN + card.canonical())
    return canonical_json(
        {
            "card": card.to_json(),
            "signature": {
                "signer": signer.name,
                "certificate": base64.b64encode(signer.certificate_der).decode("ascii"),
                "ed25519": base64.b64encode(signature).decode("ascii"),
            },
        }
    )


def read_card(data: bytes) -> tuple[ModelCard, dict[str, Any]]:
    """The card and its signature object, unverified (for listing what was verified before)."""
    if len(data) > MAX_CARD_BYTES:
        raise IntegrityError(f"model card of {len(data)} bytes exceeds {MAX_CARD_BYTES} bytes")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IntegrityError(f"model card is not UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != {"card", "signature"}:
        raise IntegrityError("model card file must hold exactly 'card' and 'signature'")
    signature = raw["signature"]
    if not isinstance(signature, dict) or set(signature) != {"signer", "certificate", "ed25519"}:
        raise IntegrityError("model card signature must hold signer, certificate and ed25519")
    try:
        card = ModelCard.from_json(raw["card"])
    except ProtocolError as exc:
        raise IntegrityError(f"model card is malformed: {exc}") from None
    return card, signature


def verify_card(
    card_bytes: bytes,
    model_bytes: bytes,
    coordinator_key: SignatureVerifier,
    expected_study_hash: str,
    *,
    study: str | None = None,
    version: int | None = None,
) -> ModelCard:
    """The card, once its signature, the model's hash and the study are what they must be.

    Parameters
    ----------
    coordinator_key
        Checks the signer's certificate and signature (for a hospital: the trust store's
        verifier of role coordinator).
    expected_study_hash
        The hash of the study file the hospital (or operator) approved.
    study, version
        The study and model version the caller expects (``None``: any).

    Raises
    ------
    IntegrityError
        Naming what was wrong: the card's form, its signer or signature, the model's hash, the
        study hash, the study or the version.
    """
    card, signature = read_card(card_bytes)
    signer = signature["signer"]
    if signer != COORDINATOR:
        raise IntegrityError(f"model card signed by {signer!r}, not by the coordinator")
    try:
        der = base64.b64decode(str(signature["certificate"]), validate=True)
        value = base64.b64decode(str(signature["ed25519"]), validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError("model card signature or certificate is not base64") from None
    try:
        coordinator_key(signer, der, DOMAIN + card.canonical(), value)
    except ProtocolError as exc:
        raise IntegrityError(f"model card signature refused: {exc}") from None
    digest = model_sha256(model_bytes)
    if digest != card.model_sha256 or len(model_bytes) != card.model_bytes:
        raise IntegrityError(
            f"model file hash {digest} ({len(model_bytes)} bytes) differs from the card's "
            f"{card.model_sha256} ({card.model_bytes} bytes): the model was altered; discard it"
        )
    if card.study_hash != expected_study_hash:
        raise IntegrityError(
            f"model card is for study hash {card.study_hash}, the approved study is "
            f"{expected_study_hash}; discard it"
        )
    if study is not None and card.study != study:
        raise IntegrityError(f"model card is for study {card.study!r}, expected {study!r}")
    if version is not None and card.version != version:
        raise IntegrityError(
            f"model card is for model version {card.version}, expected version {version}"
        )
    return card
