"""The messages of a secure round: the coordinator's stages and one typed message per step.

A secure round (:mod:`alliance.secagg`) runs through the coordinator's :class:`SecAggStage` s;
at each, the coordinator sends one message and every site still in the round answers with one.
Each message is a frozen dataclass that converts to and from the round's
:class:`~alliance.protocol.envelope.Envelope` (kind ``secagg``), whose body is
``{"stage": NAME, "attempt": N, "payload": {...}}``; the codec turns that envelope into bytes.

The key set-up messages carry one entry per *key slot* (:mod:`alliance.secagg.batched`). Per-round
keys are a batch of one slot, sent in the single form; a key batch of ``R >= 2`` slots sends
lists with one entry per slot, in slot order, ``null`` for a slot the site is not in::

    stage         message           payload (single form | key batch)
    site → coordinator
    advert        KeyAdverts        {"advert": ADVERT, "certificate": HEX}
                                    | {"adverts": [ADVERT], "certificate": HEX}
    share_out     SealedShares      {"ciphertexts": {recipient: HEX}}
                                    | {"ciphertexts": [{recipient: HEX} | null]}
    masked        MaskedInput       {}, and the array "masked" (unsigned integers)
    confirmation  Confirmation      {"signature": HEX}
    unmask_out    UnmaskShares      {"response": UNMASK_RESPONSE}
    coordinator → site
    keys          CohortKeys        {"adverts": {site: ADVERT}, "certificates": {site: HEX}}
                                    | {"adverts": [{site: ADVERT}], "certificates": {site: HEX}}
    shares        RoutedShares      {"ciphertexts": {sender: HEX}, "survivors": [site]}
                                    | {"slots": [{"ciphertexts": ..., "survivors": ...} | null]}
    confirm       ConfirmRequest    {"survivors": [site]}
    unmask        UnmaskCall        {"request": UNMASK_REQUEST}

``ADVERT``, ``UNMASK_REQUEST`` and ``UNMASK_RESPONSE`` are the JSON forms of
:class:`~alliance.secagg.KeyAdvert`, :class:`~alliance.secagg.UnmaskRequest` and
:class:`~alliance.secagg.UnmaskResponse`; ``HEX`` is bytes in hexadecimal (a certificate in DER,
a pair of sealed shares, a signature). Decoding is strict: a field missing, extra, of the wrong
type, not hex or too long is a :class:`~alliance.core.errors.ProtocolError` naming the stage,
the field and the sender. Whether the content is acceptable (contexts, signatures, who may
answer) is for :mod:`alliance.secagg` to judge.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Self

import numpy.typing as npt

from alliance.core.errors import ProtocolError
from alliance.protocol.envelope import Envelope, Header, MessageKind
from alliance.protocol.secagg_payload import PayloadReader
from alliance.secagg import (
    MAX_KEY_BATCH,
    KeyAdvert,
    UnmaskRequest,
    UnmaskResponse,
)
from alliance.secagg.messages import MAX_SIGNATURE_SIZE

__all__ = [
    "MAX_CERTIFICATE_SIZE",
    "CohortKeys",
    "ConfirmRequest",
    "Confirmation",
    "KeyAdverts",
    "MaskedInput",
    "RoutedShares",
    "SealedShares",
    "SecAggMessage",
    "SecAggStage",
    "SlotShares",
    "UnmaskCall",
    "UnmaskShares",
]

#: Largest certificate (DER) a site may send with its adverts.
MAX_CERTIFICATE_SIZE = 16384


class SecAggStage(enum.StrEnum):
    """The coordinator's stages of one attempt of a secure round, in order."""

    TRAIN = "train"  # the train task; sites answer with key adverts (or a masked input)
    KEYS = "keys"  # every advert of the cohort; sites answer with sealed shares
    SHARES = "shares"  # the shares sealed for each site and U2; sites answer with masked input
    CONFIRM = "confirm"  # U3; sites answer with a signature over it
    UNMASK = "unmask"  # U3, U2 \ U3 and the confirmations; sites answer with shares
    DONE = "done"  # the sum is known


class SlotShares(NamedTuple):
    """One slot's share routing for one site (unpacks as ``sealed, survivors``).

    Parameters
    ----------
    sealed
        Sender → the shares it sealed for this site.
    survivors
        The slot's U2, the sites each site masks for.
    """

    sealed: Mapping[str, bytes]
    survivors: tuple[str, ...]


@dataclass(frozen=True)
class SecAggMessage:
    """One message of a secure round, in either direction; the base of the typed messages.

    :meth:`from_envelope` on this class decodes any stage's message to its own type; on a
    subclass it accepts that stage only. ``attempt`` binds a message to one try of the round.
    """

    header: Header
    attempt: int
    #: The stage name on the wire.
    stage: ClassVar[str]

    def to_envelope(self) -> Envelope:
        """Wrap for transport."""
        body = {"stage": self.stage, "attempt": self.attempt, "payload": self._payload()}
        return Envelope(self.header, body, self._arrays())

    @classmethod
    def from_envelope(cls, env: Envelope) -> SecAggMessage:
        """Validate and unwrap (this stage's message on a subclass, any stage's on the base).

        Raises
        ------
        ProtocolError
            Not a secure-aggregation message, an unknown or unexpected stage, or a field that
            is missing, extra, of the wrong type or too long; the message names which.
        """
        if env.header.kind is not MessageKind.SECAGG:
            raise ProtocolError(
                f"expected a {MessageKind.SECAGG.value} message, got {env.header.kind.value}"
            )
        body, sender = env.body, env.header.sender
        if set(body) != {"stage", "attempt", "payload"}:
            raise ProtocolError(
                f"secure aggregation message from {sender}: the body must have exactly the "
                f"fields ['attempt', 'payload', 'stage'], got {sorted(body)}"
            )
        kind = _KINDS.get(body["stage"]) if isinstance(body["stage"], str) else None
        if kind is None:
            raise ProtocolError(
                f"secure aggregation message from {sender}: unknown stage {body['stage']!r}"
            )
        if cls is not SecAggMessage and kind is not cls:
            raise ProtocolError(
                f"secure aggregation message from {sender}: expected stage {cls.stage!r}, got "
                f"{kind.stage!r}"
            )
        fields = PayloadReader(kind.stage, sender, body["payload"], env.arrays)
        attempt = body["attempt"]
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
            raise fields.error("attempt", f"must be an integer >= 0, got {attempt!r}")
        if kind is not MaskedInput and env.arrays:
            raise fields.error("arrays", f"are not allowed, got {sorted(env.arrays)}")
        return kind._read(env.header, attempt, fields)

    def _payload(self) -> dict[str, Any]:
        raise NotImplementedError  # every stage's message writes its own payload

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {}

    @classmethod
    def _read(cls, header: Header, attempt: int, fields: PayloadReader) -> Self:
        raise NotImplementedError  # every stage's message reads its own payload


# --- site → coordinator -------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyAdverts(SecAggMessage):
    """A site's signed key advert for each slot, and the certificate that verifies them.

    Parameters
    ----------
    adverts
        One advert per key slot, in slot order (one for per-round keys).
    certificate
        The site's certificate (DER): the coordinator checks the adverts' and confirmations'
        signatures against it, and passes it on to the other sites.
    """

    stage: ClassVar[str] = "advert"
    adverts: tuple[KeyAdvert, ...]
    certificate: bytes

    def __post_init__(self) -> None:
        _check_slots(self.stage, self.adverts)

    def _payload(self) -> dict[str, Any]:
        certificate = self.certificate.hex()
        if len(self.adverts) == 1:
            return {"advert": self.adverts[0].to_json(), "certificate": certificate}
        return {"adverts": [a.to_json() for a in self.adverts], "certificate": certificate}

    @classmethod
    def _read(cls, header: Header, attempt: int, fields: PayloadReader) -> Self:
        form = fields.form({"advert", "certificate"}, {"adverts", "certificate"})
        certificate = fields.hex(fields["certificate"], "certificate", MAX_CERTIFICATE_SIZE)
        if "advert" in form:
            adverts: tuple[KeyAdvert, ...] = (fields.advert(fields["advert"], "advert"),)
        else:
            entries = fields.slots("adverts")
            adverts = tuple(fields.advert(a, f"adverts[{j}]") for j, a in enumerate(entries))
        return cls(header, attempt, adverts, certificate)


@dataclass(frozen=True)
class SealedShares(SecAggMessage):
    """A site's shares of its secrets, sealed for each neighbour, for each slot.

    Parameters
    ----------
    slots
        Per slot, recipient → sealed shares; ``None`` for a slot the site is not in or
        refused (never for per-round keys).
    """

    stage: ClassVar[str] = "share_out"
    slots: tuple[Mapping[str, bytes] | None, ...]

    def __post_init__(self) -> None:
        _check_slots(self.stage, self.slots)

    def _payload(self) -> dict[str, Any]:
        hexed = [None if box is None else _hexed(box) for box in self.slots]
        return {"ciphertexts": hexed[0] if len(hexed) == 1 else hexed}

    @classmethod
    def _read(cls, header: Header, attempt: int, fields: PayloadReader) -> Self:
        fields.form({"ciphertexts"})
        raw = fields["ciphertexts"]
        if isinstance(raw, dict):
            return cls(header, attempt, (fields.sealed(raw, "ciphertexts"),))
        entries = fields.slots("ciphertexts")
        slots = tuple(
            None if box is None else fields.sealed(box, f"ciphertexts[{j}]")
            for j, box in enumerate(entries)
        )
        return cls(header, attempt, slots)


@dataclass(frozen=True, eq=False)
class MaskedInput(SecAggMessage):
    """A site's masked vector for the slot its round uses (compared by identity).

    Parameters
    ----------
    vector
        The masked input, a 1-D array of unsigned integers.
    """

    stage: ClassVar[str] = "masked"
    vector: npt.NDArray[Any]

    def _payload(self) -> dict[str, Any]:
        return {}

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"masked": self.vector}

    @classmethod
    def _read(cls, header: Header, attempt: int, fields: PayloadReader) -> Self:
        fields.form(set())
        vector = fields.arrays.get("masked")
        if vector is None or set(fields.arrays) != {"masked"}:
            raise fields.error("arrays", f"must be exactly ['masked'], got {sorted(fields.arrays)}")
        if vector.dtype.kind != "u" or vector.ndim != 1:
            raise fields.error(
                "masked",
                f"must be a vector of unsigned integers, got {vector.dtype} {vector.shape}",
            )
        return cls(header, attempt, vector)


@dataclass(frozen=True)
class Confirmation(SecAggMessage):
    """A site's signature over the survivor list U3 it was asked to confirm.

    Parameters
    ----------
    signature
        The signature of :func:`~alliance.secagg.confirmation_bytes`.
    """

    stage: ClassVar[str] = "confirmation"
    signature: bytes

    def _payload(self) -> dict[str, Any]:
        return {"signature": self.signature.hex()}

    @classmethod
    def _read(cls, header: Header, attempt: int, fields: PayloadReader) -> Self:
        fields.form({"signature"})
        return cls(
            header, attempt, fields.hex(fields["signature"], "signature", MAX_SIGNATURE_SIZE)
        )


@dataclass(frozen=True)
class UnmaskShares(SecAggMessage):
    """A site's shares of the survivors' seeds and of the dropped sites' mask keys.

    Parameters
    ----------
    response
        What the site releases for the slot's unmasking.
    """

    stage: ClassVar[str] = "unmask_out"
    response: UnmaskResponse

    def _payload(self) -> dict[str, Any]:
        return {"response": self.response.to_json()}

    @classmethod
    def _read(cls, header: Header, attempt: int, fields: PayloadReader) -> Self:
        fields.form({"response"})
        return cls(
            header, attempt, fields.parse(UnmaskResponse.from_json, fields["response"], "response")
        )


# --- coordinator → site -------------------------------------------------------------------------


@dataclass(frozen=True)
class CohortKeys(SecAggMessage):
    """Every slot's adverts (its U1) and the certificates of the sites that sent them.

    Parameters
    ----------
    slots
        Per slot, site → its advert.
    certificates
        Site → its certificate (DER), to check the adverts' and confirmations' signatures.
    """

    stage: ClassVar[str] = SecAggStage.KEYS.value
    slots: tuple[Mapping[str, KeyAdvert], ...]
    certificates: Mapping[str, bytes]

    def __post_init__(self) -> None:
        _check_slots(self.stage, self.slots)

    def _payload(self) -> dict[str, Any]:
        adverts = [{s: a.to_json() for s, a in slot.items()} for slot in self.slots]
        return {
            "adverts": adverts[0] if len(adverts) == 1 else adverts,
            "certificates": _hexed(self.certificates),
        }

    @classmethod
    def _read(cls, header: Header, attempt: int, fields: PayloadReader) -> Self:
        fields.form({"adverts", "certificates"})
        raw = fields["adverts"]
        if isinstance(raw, dict):
            slots: tuple[Mapping[str, KeyAdvert], ...] = (fields.adverts(raw, "adverts"),)
        else:
            entries = fields.slots("adverts")
            slots = tuple(fields.adverts(a, f"adverts[{j}]") for j, a in enumerate(entries))
        certificates = fields.by_site(
            fields["certificates"],
            "certificates",
            lambda c, where: fields.hex(c, where, MAX_CERTIFICATE_SIZE),
        )
        return cls(header, attempt, slots, certificates)


@dataclass(frozen=True)
class RoutedShares(SecAggMessage):
    """Per slot, the shares sealed for the recipient and the slot's U2.

    Parameters
    ----------
    slots
        Per slot, the routing for this site; ``None`` for a slot it is not in (never for
        per-round keys).
    """

    stage: ClassVar[str] = SecAggStage.SHARES.value
    slots: tuple[SlotShares | None, ...]

    def __post_init__(self) -> None:
        _check_slots(self.stage, self.slots)

    def _payload(self) -> dict[str, Any]:
        entries = [
            None
            if slot is None
            else {"ciphertexts": _hexed(slot.sealed), "survivors": list(slot.survivors)}
            for slot in self.slots
        ]
        if len(entries) == 1 and entries[0] is not None:
            return entries[0]
        return {"slots": entries}

    @classmethod
    def _read(cls, header: Header, attempt: int, fields: PayloadReader) -> Self:
        form = fields.form({"ciphertexts", "survivors"}, {"slots"})
        if "slots" not in form:
            return cls(header, attempt, (SlotShares(*fields.routing(fields.payload, "")),))
        entries = fields.slots("slots")
        slots = tuple(
            None if entry is None else SlotShares(*fields.routing(entry, f"slots[{j}]."))
            for j, entry in enumerate(entries)
        )
        return cls(header, attempt, slots)


@dataclass(frozen=True)
class ConfirmRequest(SecAggMessage):
    """The survivor list U3, for the recipient to sign.

    Parameters
    ----------
    survivors
        The sites whose masked input arrived.
    """

    stage: ClassVar[str] = SecAggStage.CONFIRM.value
    survivors: tuple[str, ...]

    def _payload(self) -> dict[str, Any]:
        return {"survivors": list(self.survivors)}

    @classmethod
    def _read(cls, header: Header, attempt: int, fields: PayloadReader) -> Self:
        fields.form({"survivors"})
        return cls(header, attempt, fields.sites(fields["survivors"], "survivors"))


@dataclass(frozen=True)
class UnmaskCall(SecAggMessage):
    """U3, U2 \\ U3 and the confirmations: the recipient answers with its shares.

    Parameters
    ----------
    request
        What the coordinator asks every confirming site to unmask.
    """

    stage: ClassVar[str] = SecAggStage.UNMASK.value
    request: UnmaskRequest

    def _payload(self) -> dict[str, Any]:
        return {"request": self.request.to_json()}

    @classmethod
    def _read(cls, header: Header, attempt: int, fields: PayloadReader) -> Self:
        fields.form({"request"})
        return cls(
            header, attempt, fields.parse(UnmaskRequest.from_json, fields["request"], "request")
        )


#: Each stage name's message type.
_KINDS: dict[str, type[SecAggMessage]] = {k.stage: k for k in SecAggMessage.__subclasses__()}


def _check_slots(stage: str, slots: tuple[object, ...]) -> None:
    if not 1 <= len(slots) <= MAX_KEY_BATCH:
        raise ProtocolError(
            f"secure aggregation {stage!r} message: 1 to {MAX_KEY_BATCH} key slots, got "
            f"{len(slots)}"
        )
    if slots == (None,):
        raise ProtocolError(f"secure aggregation {stage!r} message: its only key slot is empty")


def _hexed(values: Mapping[str, bytes]) -> dict[str, str]:
    return {k: v.hex() for k, v in values.items()}
