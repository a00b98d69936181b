"""The messages of secure aggregation that have structure, and the bytes each signature covers.

Design
------
Frozen dataclasses with ``to_json()`` (a JSON-ready ``dict``; bytes as standard base64 with
padding) and ``from_json()`` (strict: exactly the listed fields, valid base64, right sizes;
:class:`~alliance.core.errors.ProtocolError` otherwise), so that the protocol layer can carry
them in its envelopes. The other stages exchange plain values: sealed shares are
``{recipient: bytes}`` maps, a masked input is a numpy array kept beside the JSON, a
confirmation is a signature (``bytes``).

JSON shapes::

    KeyAdvert      {"site": str, "context": CONTEXT, "cipher_key": B64, "mask_key": B64,
                    "seed_commitment": B64, "signature": B64}
    UnmaskRequest  {"context": CONTEXT, "survivors": [str], "dropped": [str],
                    "confirmations": {site: B64}}
    UnmaskResponse {"site": str, "context": CONTEXT,
                    "seed_shares": {owner: {"index": int, "share": B64}},
                    "key_shares":  {owner: {"index": int, "share": B64}}}
    CONTEXT        {"federation": str, "study": str, "round": int, "attempt": int}

Signatures (made by the caller's ``sign`` callback, checked by its ``verify`` callback) cover
:func:`advert_bytes` and :func:`confirmation_bytes`: canonical encodings that start with their
own label, so neither can be passed off as the other or as another layer's message.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alliance.core.errors import AllianceError, ProtocolError
from alliance.secagg.context import RoundContext, canonical_bytes
from alliance.secagg.keys import KEY_SIZE
from alliance.secagg.shamir import COMMITMENT_SIZE, SecretShare

__all__ = [
    "MAX_SIGNATURE_SIZE",
    "KeyAdvert",
    "UnmaskRequest",
    "UnmaskResponse",
    "advert_bytes",
    "confirmation_bytes",
]

#: Largest signature accepted in a message.
MAX_SIGNATURE_SIZE = 1024

_ADVERT_LABEL = "alliance-secagg-advert-v1"
_CONFIRM_LABEL = "alliance-secagg-confirm-v1"


def advert_bytes(
    context: RoundContext, site: str, cipher_key: bytes, mask_key: bytes, seed_commitment: bytes
) -> bytes:
    """What a site signs in its key advert."""
    return canonical_bytes(
        _ADVERT_LABEL, context.to_bytes(), site, cipher_key, mask_key, seed_commitment
    )


def confirmation_bytes(context: RoundContext, survivors: Sequence[str]) -> bytes:
    """What a site signs to confirm the survivor list ``survivors`` (order does not matter)."""
    return canonical_bytes(_CONFIRM_LABEL, context.to_bytes(), sorted(survivors))


@dataclass(frozen=True)
class KeyAdvert:
    """Site → everyone (via the coordinator): the site's public keys for one attempt.

    Parameters
    ----------
    site
        The advertising site.
    context
        The attempt.
    cipher_key
        Raw X25519 public key ``c_pk`` (encrypts the shares sent to this site).
    mask_key
        Raw X25519 public key ``s_pk`` (pairwise mask agreement).
    seed_commitment
        SHA-256 commitment to the self-mask seed ``b``.
    signature
        The site's signature of :func:`advert_bytes`.
    """

    site: str
    context: RoundContext
    cipher_key: bytes
    mask_key: bytes
    seed_commitment: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_site(self.site, "key advert")
        for name, size in (
            ("cipher_key", KEY_SIZE),
            ("mask_key", KEY_SIZE),
            ("seed_commitment", COMMITMENT_SIZE),
        ):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != size:
                raise ProtocolError(f"key advert of {self.site!r}: {name} must be {size} bytes")
        _check_signature(self.signature, f"key advert of {self.site!r}")

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers."""
        return advert_bytes(
            self.context, self.site, self.cipher_key, self.mask_key, self.seed_commitment
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (see the module docstring)."""
        return {
            "site": self.site,
            "context": self.context.to_json(),
            "cipher_key": _b64(self.cipher_key),
            "mask_key": _b64(self.mask_key),
            "seed_commitment": _b64(self.seed_commitment),
            "signature": _b64(self.signature),
        }

    @classmethod
    def from_json(cls, raw: Any) -> KeyAdvert:
        """Validate a received advert (the signature is checked by the receiver)."""
        body = _fields(
            raw,
            {"site", "context", "cipher_key", "mask_key", "seed_commitment", "signature"},
            "key advert",
        )
        return cls(
            site=body["site"],
            context=RoundContext.from_json(body["context"]),
            cipher_key=_unb64(body["cipher_key"], "key advert: cipher_key"),
            mask_key=_unb64(body["mask_key"], "key advert: mask_key"),
            seed_commitment=_unb64(body["seed_commitment"], "key advert: seed_commitment"),
            signature=_unb64(body["signature"], "key advert: signature"),
        )


@dataclass(frozen=True)
class UnmaskRequest:
    """Coordinator → each confirming site: who survived, who dropped, and the confirmations.

    Parameters
    ----------
    context
        The attempt.
    survivors
        U3: the sites whose masked input is in the sum (sorted).
    dropped
        U2 \\ U3: sites that shared keys but sent no masked input (sorted).
    confirmations
        Each confirming site's signature of :func:`confirmation_bytes` over ``survivors``.
    """

    context: RoundContext
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    confirmations: Mapping[str, bytes]

    def __post_init__(self) -> None:
        for name in ("survivors", "dropped"):
            for site in getattr(self, name):
                _check_site(site, f"unmask request: {name}")
        for site, signature in self.confirmations.items():
            _check_site(site, "unmask request: confirmations")
            _check_signature(signature, f"unmask request: confirmation of {site!r}")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (see the module docstring)."""
        return {
            "context": self.context.to_json(),
            "survivors": list(self.survivors),
            "dropped": list(self.dropped),
            "confirmations": {s: _b64(sig) for s, sig in sorted(self.confirmations.items())},
        }

    @classmethod
    def from_json(cls, raw: Any) -> UnmaskRequest:
        """Validate a received request (its consistency is checked by the site)."""
        body = _fields(raw, {"context", "survivors", "dropped", "confirmations"}, "unmask request")
        confirmations = body["confirmations"]
        if not isinstance(confirmations, dict):
            raise ProtocolError("unmask request: confirmations must be an object")
        return cls(
            context=RoundContext.from_json(body["context"]),
            survivors=_site_list(body["survivors"], "unmask request: survivors"),
            dropped=_site_list(body["dropped"], "unmask request: dropped"),
            confirmations={
                str(site): _unb64(sig, f"unmask request: confirmation of {site!r}")
                for site, sig in confirmations.items()
            },
        )


@dataclass(frozen=True)
class UnmaskResponse:
    """Site → coordinator: shares of survivors' seeds and of dropped sites' mask keys.

    Parameters
    ----------
    site
        The responding site (its share index is its position in the sorted site list).
    context
        The attempt.
    seed_shares
        Owner → share of the owner's self-mask seed ``b`` (owners: survivors only).
    key_shares
        Owner → share of the owner's mask private key ``s_sk`` (owners: dropped sites only).
    """

    site: str
    context: RoundContext
    seed_shares: Mapping[str, SecretShare]
    key_shares: Mapping[str, SecretShare]

    def __post_init__(self) -> None:
        _check_site(self.site, "unmask response")
        for owner in (*self.seed_shares, *self.key_shares):
            _check_site(owner, f"unmask response of {self.site!r}")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (see the module docstring)."""
        return {
            "site": self.site,
            "context": self.context.to_json(),
            "seed_shares": _shares_to_json(self.seed_shares),
            "key_shares": _shares_to_json(self.key_shares),
        }

    @classmethod
    def from_json(cls, raw: Any) -> UnmaskResponse:
        """Validate a received response (the coordinator checks the shares it holds)."""
        body = _fields(raw, {"site", "context", "seed_shares", "key_shares"}, "unmask response")
        return cls(
            site=body["site"],
            context=RoundContext.from_json(body["context"]),
            seed_shares=_shares_from_json(body["seed_shares"], "seed_shares"),
            key_shares=_shares_from_json(body["key_shares"], "key_shares"),
        )


def _shares_to_json(shares: Mapping[str, SecretShare]) -> dict[str, Any]:
    return {o: {"index": s.index, "share": _b64(s.value)} for o, s in sorted(shares.items())}


def _shares_from_json(raw: Any, what: str) -> dict[str, SecretShare]:
    if not isinstance(raw, dict):
        raise ProtocolError(f"unmask response: {what} must be an object")
    out: dict[str, SecretShare] = {}
    for owner, entry in raw.items():
        body = _fields(entry, {"index", "share"}, f"unmask response: {what}[{owner!r}]")
        index = body["index"]
        if not isinstance(index, int) or isinstance(index, bool):
            raise ProtocolError(f"unmask response: {what}[{owner!r}].index must be an integer")
        try:
            out[str(owner)] = SecretShare(index, _unb64(body["share"], f"{what}[{owner!r}]"))
        except AllianceError as exc:
            raise ProtocolError(f"unmask response: {what}[{owner!r}]: {exc}") from None
    return out


def _fields(raw: Any, fields: set[str], what: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) != fields:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ProtocolError(f"{what} must have exactly the fields {sorted(fields)}, got {got}")
    return raw


def _site_list(raw: Any, what: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise ProtocolError(f"{what} must be a list of site ids")
    return tuple(raw)


def _check_site(site: Any, what: str) -> None:
    if not isinstance(site, str) or not site:
        raise ProtocolError(f"{what}: site id must be a non-empty string, got {site!r}")


def _check_signature(signature: Any, what: str) -> None:
    if not isinstance(signature, bytes) or not 0 < len(signature) <= MAX_SIGNATURE_SIZE:
        raise ProtocolError(f"{what}: signature must be 1 to {MAX_SIGNATURE_SIZE} bytes")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ProtocolError(f"{what} is not valid base64") from None
