"""The set-up messages of a secure-aggregation key batch: every slot at once, as JSON payloads.

With ``[secure_aggregation] key_batch = R`` (:mod:`alliance.secagg.batched`) the set-up stages of
a :class:`~alliance.protocol.messages.SecAggMessage` carry all ``R`` slots of the batch; the
stages after it (masked input, confirmation, unmasking) keep their per-round payloads. Lists have
one entry per slot, in slot order, ``null`` for a slot the site is not in::

    advert     site → coordinator  {"adverts": [KEY_ADVERT], "certificate": HEX}
    keys       coordinator → site  {"adverts": [{site: KEY_ADVERT}], "certificates": {site: HEX}}
    share_out  site → coordinator  {"ciphertexts": [{recipient: HEX} | null]}
    shares     coordinator → site  {"slots": [{"ciphertexts": {sender: HEX},
                                               "survivors": [site]} | null]}

``KEY_ADVERT`` is :meth:`alliance.secagg.KeyAdvert.to_json`, ``HEX`` bytes in hexadecimal (a
certificate in DER, a sealed pair of shares). Each ``*_payload`` function writes one message and
each ``read_*`` function reads it strictly: anything else is a
:class:`~alliance.core.errors.ProtocolError` naming the field and the slot. Whether the slots'
contents are acceptable (contexts, signatures, sizes) is for :mod:`alliance.secagg` to judge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from alliance.core.errors import ProtocolError
from alliance.secagg import KeyAdvert, ShareRouting

__all__ = [
    "SlotShares",
    "advert_payload",
    "keys_payload",
    "read_advert",
    "read_keys",
    "read_share_out",
    "read_shares",
    "share_out_payload",
    "shares_payload",
]

#: One slot's shares for one site: sender → sealed shares, and the slot's survivor list U2.
SlotShares = tuple[dict[str, bytes], list[str]]


def advert_payload(adverts: Sequence[KeyAdvert], certificate: bytes) -> dict[str, Any]:
    """A site's ``advert``: every slot's signed key advert and its certificate (DER)."""
    return {"adverts": [a.to_json() for a in adverts], "certificate": certificate.hex()}


def read_advert(payload: Mapping[str, Any]) -> tuple[list[KeyAdvert], str]:
    """The adverts of an ``advert`` payload, and the certificate as sent (hex)."""
    adverts = [KeyAdvert.from_json(a) for a in _list(payload, "adverts")]
    certificate = payload.get("certificate")
    if not isinstance(certificate, str):
        raise ProtocolError("key batch adverts: the signer's certificate is missing")
    return adverts, certificate


def keys_payload(
    slots: Sequence[Mapping[str, KeyAdvert]], certificates: Mapping[str, str]
) -> dict[str, Any]:
    """The coordinator's ``keys``: each slot's adverts (U1) and every member's certificate."""
    return {
        "adverts": [{s: a.to_json() for s, a in adverts.items()} for adverts in slots],
        "certificates": dict(certificates),
    }


def read_keys(
    payload: Mapping[str, Any],
) -> tuple[list[dict[str, KeyAdvert]], dict[str, bytes]]:
    """Each slot's adverts and the members' certificates (DER) of a ``keys`` payload."""
    slots = [
        {str(s): KeyAdvert.from_json(a) for s, a in _object(entry, f"adverts[{j}]").items()}
        for j, entry in enumerate(_list(payload, "adverts"))
    ]
    certificates = {
        str(s): _unhex(c, f"certificate of {s!r}")
        for s, c in _object(payload.get("certificates"), "certificates").items()
    }
    return slots, certificates


def share_out_payload(sealed: Sequence[Mapping[str, bytes] | None]) -> dict[str, Any]:
    """A site's ``share_out``: per slot, its sealed shares by recipient (``None``: not in it)."""
    return {
        "ciphertexts": [
            None if boxes is None else {v: c.hex() for v, c in boxes.items()} for boxes in sealed
        ]
    }


def read_share_out(payload: Mapping[str, Any]) -> list[dict[str, bytes] | None]:
    """Per slot, recipient → sealed shares (``None`` for a slot the site is not in)."""
    return [
        None
        if entry is None
        else {
            str(v): _unhex(c, f"ciphertexts[{j}][{v!r}]")
            for v, c in _object(entry, f"ciphertexts[{j}]").items()
        }
        for j, entry in enumerate(_list(payload, "ciphertexts"))
    ]


def shares_payload(routing: Sequence[ShareRouting], site: str) -> dict[str, Any]:
    """The coordinator's ``shares`` for ``site``: per slot, the shares sealed for it and U2."""
    return {
        "slots": [
            {
                "ciphertexts": {u: c.hex() for u, c in r.sealed[site].items()},
                "survivors": list(r.survivors),
            }
            if site in r.sealed
            else None
            for r in routing
        ]
    }


def read_shares(payload: Mapping[str, Any]) -> list[SlotShares | None]:
    """Per slot, the shares sealed for this site and the slot's U2 (``None``: not in it)."""
    out: list[SlotShares | None] = []
    for j, entry in enumerate(_list(payload, "slots")):
        if entry is None:
            out.append(None)
            continue
        slot = _object(entry, f"slots[{j}]")
        sealed = {
            str(u): _unhex(c, f"slots[{j}] ciphertext of {u!r}")
            for u, c in _object(slot.get("ciphertexts"), f"slots[{j}].ciphertexts").items()
        }
        survivors = slot.get("survivors")
        if not isinstance(survivors, list) or not all(isinstance(s, str) for s in survivors):
            raise ProtocolError(f"key batch: slots[{j}].survivors must be a list of site ids")
        out.append((sealed, survivors))
    return out


def _list(payload: Mapping[str, Any], key: str) -> list[Any]:
    value = payload.get(key)
    if not isinstance(value, list):
        raise ProtocolError(f"key batch: {key!r} must be a list with one entry per slot")
    return value


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"key batch: {what} must be an object")
    return value


def _unhex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"key batch: {what} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ProtocolError(f"key batch: {what} is not valid hex") from None
