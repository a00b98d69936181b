"""t-of-n Shamir sharing of 32-byte secrets, with reconstruction checked against a commitment.

Design
------
Sharing is pycryptodome's :class:`Crypto.Protocol.SecretSharing.Shamir` over GF(2^128), which
shares 16-byte secrets: a 32-byte secret (an X25519 private key, a self-mask seed) is shared as
two independent halves with the same x-coordinates, and a :class:`SecretShare` carries both
halves (32 bytes). x-coordinates are ``1..n``, a site's position in the sorted site list.

Reconstruction (:func:`combine_shares`) interpolates exactly ``threshold`` shares (the lowest
indices) at zero: the Lagrange coefficients depend only on the x-coordinates, so they are
computed once per set of indices (one field inversion each) and every secret of a round that
is reconstructed from the same holders (each dropped site's key, each survivor's seed, both
halves) costs ``threshold`` field multiplications. The field is pycryptodome's GF(2^128)
(polynomial 1 + x + x^2 + x^7 + x^128, a 16-byte value read big-endian with the constant
coefficient in the lowest bit), and a test checks every result against
:meth:`Shamir.combine`. Interpolation runs only where the secret is revealed anyway (the
coordinator's unmasking), so it needs no constant-time arithmetic.

A forged or corrupted share yields a wrong secret without any error, so every reconstruction is
checked: a self-mask seed against its owner's published commitment
``SHA-256(label, context, owner, secret)`` (:func:`reconstruct_committed`; the seed is 256
random bits, so the commitment hides it), a mask private key against the owner's advertised
public key (by the caller).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from Crypto.Protocol.SecretSharing import Shamir

from alliance.core.errors import ConfigError, IntegrityError
from alliance.secagg.context import RoundContext, canonical_bytes

__all__ = [
    "COMMITMENT_SIZE",
    "SECRET_SIZE",
    "SecretShare",
    "combine_shares",
    "commit_secret",
    "reconstruct_committed",
    "split_secret",
]

#: Length in bytes of every shared secret and of every share.
SECRET_SIZE = 32
#: Length in bytes of a commitment (SHA-256).
COMMITMENT_SIZE = 32

_HALF = SECRET_SIZE // 2
_COMMIT_LABEL = "alliance-secagg-commit-v1"
#: x^128 + x^7 + x^2 + x + 1, the modulus of pycryptodome's GF(2^128).
_MODULUS = (1 << 128) | 0x87


def _gf_mul(a: int, b: int) -> int:
    """The product of two elements of GF(2^128) (bit i is the coefficient of x^i)."""
    if a < b:
        a, b = b, a
    product = 0
    while b:
        if b & 1:
            product ^= a
        b >>= 1
        a <<= 1
        if a >> 128:
            a ^= _MODULUS
    return product


def _gf_inverse(a: int) -> int:
    """The inverse of a non-zero element (binary extended Euclid over GF(2)[x])."""
    u, v, g1, g2 = a, _MODULUS, 1, 0
    while u != 1:
        shift = u.bit_length() - v.bit_length()
        if shift < 0:
            u, v, g1, g2 = v, u, g2, g1
            shift = -shift
        u ^= v << shift
        g1 ^= g2 << shift
    return g1


@lru_cache(maxsize=512)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """The coefficients c_j with f(0) = sum c_j f(x_j) for every polynomial of degree < len(xs)."""
    coefficients = []
    for j, x_j in enumerate(xs):
        numerator, denominator = 1, 1
        for m, x_m in enumerate(xs):
            if m != j:
                numerator = _gf_mul(numerator, x_m)
                denominator = _gf_mul(denominator, x_j ^ x_m)
        coefficients.append(_gf_mul(numerator, _gf_inverse(denominator)))
    return tuple(coefficients)


def _interpolate(xs: tuple[int, ...], ys: list[bytes]) -> bytes:
    """f(0) of the polynomial through the points (xs[j], ys[j]), 16-byte values."""
    secret = 0
    for c, y in zip(_lagrange_at_zero(xs), ys, strict=True):
        secret ^= _gf_mul(c, int.from_bytes(y, "big"))
    return secret.to_bytes(_HALF, "big")


@dataclass(frozen=True)
class SecretShare:
    """One share of a 32-byte secret.

    Parameters
    ----------
    index
        The x-coordinate, ``>= 1`` (the holder's position in the sorted site list).
    value
        32 bytes: the shares of the secret's two 16-byte halves.
    """

    index: int
    value: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or isinstance(self.index, bool) or self.index < 1:
            raise IntegrityError(f"share index must be an integer >= 1, got {self.index!r}")
        if not isinstance(self.value, bytes) or len(self.value) != SECRET_SIZE:
            got = len(self.value) if isinstance(self.value, bytes) else type(self.value).__name__
            raise IntegrityError(f"a share is {SECRET_SIZE} bytes, got {got}")


def split_secret(secret: bytes, *, threshold: int, count: int) -> tuple[SecretShare, ...]:
    """Split ``secret`` into ``count`` shares (indices ``1..count``), any ``threshold`` of
    which reconstruct it.

    Raises
    ------
    ConfigError
        ``secret`` is not 32 bytes or not ``1 <= threshold <= count``.
    """
    if not isinstance(secret, bytes) or len(secret) != SECRET_SIZE:
        raise ConfigError(f"only {SECRET_SIZE}-byte secrets are shared")
    if not 1 <= threshold <= count:
        raise ConfigError(f"need 1 <= threshold <= count, got threshold {threshold} of {count}")
    low = Shamir.split(threshold, count, secret[:_HALF])
    high = Shamir.split(threshold, count, secret[_HALF:])
    return tuple(SecretShare(i, lo + hi) for (i, lo), (_, hi) in zip(low, high, strict=True))


def combine_shares(shares: Iterable[SecretShare], *, threshold: int) -> bytes:
    """Interpolate the secret from the ``threshold`` shares with the lowest indices.

    The result is *not* checked: a forged share gives a wrong secret. Use
    :func:`reconstruct_committed`, or compare with a public key.

    Raises
    ------
    IntegrityError
        Fewer than ``threshold`` distinct indices, or two different shares with one index.
    """
    by_index: dict[int, bytes] = {}
    for share in shares:
        seen = by_index.setdefault(share.index, share.value)
        if seen != share.value:
            raise IntegrityError(f"two different shares claim index {share.index}")
    if len(by_index) < threshold:
        raise IntegrityError(
            f"{len(by_index)} shares cannot reconstruct a secret shared with threshold {threshold}"
        )
    chosen = sorted(by_index.items())[:threshold]
    xs = tuple(i for i, _ in chosen)
    low = _interpolate(xs, [v[:_HALF] for _, v in chosen])
    high = _interpolate(xs, [v[_HALF:] for _, v in chosen])
    return low + high


def commit_secret(secret: bytes, *, context: RoundContext, owner: str) -> bytes:
    """The commitment ``SHA-256(label, context, owner, secret)`` an owner publishes."""
    return hashlib.sha256(
        canonical_bytes(_COMMIT_LABEL, context.to_bytes(), owner, secret)
    ).digest()


def reconstruct_committed(
    shares: Iterable[SecretShare],
    *,
    threshold: int,
    commitment: bytes,
    context: RoundContext,
    owner: str,
) -> bytes:
    """Reconstruct ``owner``'s secret and check it against its ``commitment``.

    Raises
    ------
    IntegrityError
        Too few shares, conflicting shares, or the reconstruction does not match the
        commitment (a share is forged or corrupt).
    """
    secret = combine_shares(shares, threshold=threshold)
    if not hmac.compare_digest(commit_secret(secret, context=context, owner=owner), commitment):
        raise IntegrityError(
            f"the secret of site {owner!r} reconstructed from {threshold} shares does not match "
            f"its commitment in {context.describe()}: a share is forged or corrupt; the value "
            "was discarded"
        )
    return secret
