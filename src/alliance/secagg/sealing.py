"""The sealed pair of shares one site sends another through the coordinator.

Design
------
Site ``u`` gives site ``v`` one share of its mask private key ``s_sk_u`` and one share of its
self-mask seed ``b_u``. The coordinator relays them but must not read them, so they travel as
ChaCha20-Poly1305 ciphertexts (``cryptography``) under the key ``u`` and ``v`` agree on from
their ``c`` key pairs (:func:`alliance.secagg.keys.agree_key`, purpose share encryption).

Associated data binds the ciphertext to the round context, the sender and the recipient; the
plaintext repeats sender and recipient (as in Bonawitz et al.) and carries the share index.
Layout: ``nonce (12) || AEAD(index (4, big-endian) || key share (32) || seed share (32) ||
canonical(label, sender, recipient))``. Both directions of a pair use the same key, hence a
random 96-bit nonce per ciphertext.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from alliance.core.errors import IntegrityError
from alliance.secagg.context import RoundContext, canonical_bytes
from alliance.secagg.shamir import SECRET_SIZE, SecretShare

__all__ = ["MAX_SEALED_SIZE", "open_shares", "seal_shares"]

#: Upper bound on the size of a sealed pair of shares (site ids are short).
MAX_SEALED_SIZE = 4096

_NONCE = 12
_AD_LABEL = "alliance-secagg-shares-ad-v1"
_PLAIN_LABEL = "alliance-secagg-shares-v1"


def _associated_data(context: RoundContext, sender: str, recipient: str) -> bytes:
    return canonical_bytes(_AD_LABEL, context.to_bytes(), sender, recipient)


def seal_shares(
    key: bytes,
    *,
    context: RoundContext,
    sender: str,
    recipient: str,
    key_share: SecretShare,
    seed_share: SecretShare,
) -> bytes:
    """Encrypt ``sender``'s two shares for ``recipient`` (both shares carry the same index)."""
    if key_share.index != seed_share.index:
        raise ValueError("the key share and the seed share of one recipient share an index")
    plaintext = (
        key_share.index.to_bytes(4, "big")
        + key_share.value
        + seed_share.value
        + canonical_bytes(_PLAIN_LABEL, sender, recipient)
    )
    nonce = os.urandom(_NONCE)
    ad = _associated_data(context, sender, recipient)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def open_shares(
    key: bytes, sealed: bytes, *, context: RoundContext, sender: str, recipient: str
) -> tuple[SecretShare, SecretShare]:
    """Decrypt and check the shares ``sender`` sealed for ``recipient``.

    Returns
    -------
    tuple of SecretShare
        The share of the sender's mask private key and the share of its self-mask seed.

    Raises
    ------
    IntegrityError
        The ciphertext was altered, made for another attempt, pair or direction, or its
        plaintext names another sender or recipient.
    """
    if not isinstance(sealed, bytes) or not _NONCE + 16 < len(sealed) <= MAX_SEALED_SIZE:
        raise IntegrityError(f"sealed shares from {sender!r} have an impossible size")
    ad = _associated_data(context, sender, recipient)
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], ad)
    except InvalidTag:
        raise IntegrityError(
            f"sealed shares from {sender!r} to {recipient!r} do not decrypt in "
            f"{context.describe()}: altered, replayed from another attempt, or misaddressed"
        ) from None
    head = 4 + 2 * SECRET_SIZE
    if plaintext[head:] != canonical_bytes(_PLAIN_LABEL, sender, recipient):
        raise IntegrityError(f"sealed shares from {sender!r} name another sender or recipient")
    index = int.from_bytes(plaintext[:4], "big")
    key_share = SecretShare(index, plaintext[4 : 4 + SECRET_SIZE])
    seed_share = SecretShare(index, plaintext[4 + SECRET_SIZE : head])
    return key_share, seed_share
