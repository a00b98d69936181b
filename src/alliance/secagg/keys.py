"""X25519 key pairs and key agreement bound to a round, a purpose and a pair of sites.

Design
------
Each site makes two fresh X25519 key pairs per attempt (Bonawitz et al. 2017): one (``c``) to
encrypt the shares it sends through the coordinator, one (``s``) to derive the pairwise mask
seeds. Fresh keys per attempt make every round's masks different even for identical inputs.

Two sites ``u`` and ``v`` compute the same X25519 shared secret; :func:`agree_key` feeds it to
HKDF-SHA256 with, as ``info``, a label, the :class:`KeyPurpose`, the round context and the two
site ids *sorted*, giving a 32-byte key that only this pair, for this purpose, in this attempt,
ever uses. Public keys travel as their raw 32 bytes.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from alliance.core.errors import IntegrityError
from alliance.secagg.context import RoundContext, canonical_bytes

__all__ = [
    "KEY_SIZE",
    "KeyPurpose",
    "agree_key",
    "private_key_bytes",
    "private_key_from_bytes",
    "public_key_bytes",
]

#: Length in bytes of a raw X25519 key (public or private) and of an agreed key.
KEY_SIZE = 32

_LABEL = "alliance-secagg-agree-v1"
_RAW_PUBLIC = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class KeyPurpose(enum.Enum):
    """What an agreed key is for; part of its derivation."""

    SHARE_ENCRYPTION = "share-encryption"
    PAIRWISE_MASK = "pairwise-mask"


def public_key_bytes(private_key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``private_key``."""
    return private_key.public_key().public_bytes(*_RAW_PUBLIC)


def private_key_bytes(private_key: X25519PrivateKey) -> bytes:
    """The raw 32-byte private key (what is secret-shared)."""
    return private_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def private_key_from_bytes(raw: bytes) -> X25519PrivateKey:
    """Load a raw 32-byte private key (a reconstructed one).

    Raises
    ------
    IntegrityError
        ``raw`` is not 32 bytes.
    """
    if len(raw) != KEY_SIZE:
        raise IntegrityError(f"an X25519 private key is {KEY_SIZE} bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def agree_key(
    private_key: X25519PrivateKey,
    peer_public: bytes,
    *,
    purpose: KeyPurpose,
    context: RoundContext,
    sites: tuple[str, str],
) -> bytes:
    """The 32-byte key shared by the two ``sites`` for ``purpose`` in ``context``.

    Parameters
    ----------
    private_key
        One site's private key.
    peer_public
        The other site's raw public key.
    purpose, context
        Bound into the derivation.
    sites
        The two site ids (order does not matter; they are sorted).

    Raises
    ------
    IntegrityError
        ``peer_public`` is not a valid X25519 public key (wrong length or a low-order point).
    """
    if len(peer_public) != KEY_SIZE:
        raise IntegrityError(f"an X25519 public key is {KEY_SIZE} bytes, got {len(peer_public)}")
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise IntegrityError(
            f"public key {peer_public.hex()} is a low-order X25519 point; the advert is forged"
        ) from None
    first, second = sorted(sites)
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=None,
        info=canonical_bytes(_LABEL, purpose.value, context.to_bytes(), first, second),
    )
    return hkdf.derive(shared)
