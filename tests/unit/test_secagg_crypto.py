"""Primitives of alliance.secagg: PRG masks, X25519 agreement, Shamir shares, sealed shares."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from alliance.core.errors import ConfigError, IntegrityError
from alliance.secagg import (
    KeyPurpose,
    MaskExpander,
    MaskPurpose,
    RoundContext,
    SecretShare,
    agree_key,
    canonical_bytes,
    combine_shares,
    commit_secret,
    expand_seed,
    reconstruct_committed,
    split_secret,
)
from alliance.secagg.keys import private_key_bytes, private_key_from_bytes, public_key_bytes
from alliance.secagg.sealing import open_shares, seal_shares

CTX = RoundContext("consortium", "study", 3, 0)
SEED = bytes(range(32))


# -- PRG ------------------------------------------------------------------------------------------


def test_prg_is_deterministic_and_reduced_modulo_the_modulus() -> None:
    for bits in (1, 7, 20, 32, 33, 41, 62, 64):
        a = expand_seed(SEED, purpose=MaskPurpose.SELF_MASK, length=1000, modulus_bits=bits)
        b = expand_seed(SEED, purpose=MaskPurpose.SELF_MASK, length=1000, modulus_bits=bits)
        assert np.array_equal(a, b)
        assert a.dtype == (np.uint32 if bits <= 32 else np.uint64)
        assert int(a.max()) < (1 << bits)
        if bits >= 7:
            assert int(a.max()) >= (1 << (bits - 1))  # the top bit is used


def test_prg_is_aes_256_ctr_under_an_hkdf_key_read_little_endian() -> None:
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=canonical_bytes("alliance-secagg-prg-v1", "pairwise-mask", 32),
    ).derive(SEED)
    stream = Cipher(algorithms.AES256(key), modes.CTR(bytes(16))).encryptor().update(bytes(40))
    expected = np.frombuffer(stream, dtype="<u4")
    got = expand_seed(SEED, purpose=MaskPurpose.PAIRWISE_MASK, length=10, modulus_bits=32)
    assert got.tolist() == expected.tolist()


def test_prg_streams_are_domain_separated() -> None:
    def draw(seed: bytes, purpose: MaskPurpose, bits: int) -> list[int]:
        return expand_seed(seed, purpose=purpose, length=64, modulus_bits=bits).tolist()

    self_mask = draw(SEED, MaskPurpose.SELF_MASK, 32)
    assert self_mask != draw(SEED, MaskPurpose.PAIRWISE_MASK, 32)
    assert self_mask != draw(bytes(32), MaskPurpose.SELF_MASK, 32)
    # A narrower modulus is another stream, not the wide one with its high bits cut off.
    narrow = draw(SEED, MaskPurpose.SELF_MASK, 20)
    assert narrow != [v & ((1 << 20) - 1) for v in self_mask]


def test_prg_output_looks_uniform() -> None:
    bits = expand_seed(SEED, purpose=MaskPurpose.SELF_MASK, length=200_000, modulus_bits=32)
    ones = np.unpackbits(bits.view(np.uint8)).mean()
    assert abs(ones - 0.5) < 0.002
    counts = np.bincount((bits & 0xFF).astype(np.int64), minlength=256)
    expected = bits.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400  # 255 degrees of freedom; p < 1e-6 beyond ~360


def test_mask_expander_adds_and_subtracts_modulo_the_modulus() -> None:
    rng = np.random.default_rng(0)
    for bits in (12, 32, 41, 64):
        expander = MaskExpander(length=500, modulus_bits=bits)
        x = rng.integers(0, 2**62, 500, dtype=np.uint64) % (1 << bits if bits < 64 else 2**62)
        x = x.astype(expander.dtype)
        y = x.copy()
        expander.add(y, SEED, MaskPurpose.SELF_MASK)
        assert not np.array_equal(x, y)
        assert int(y.max()) < (1 << bits)
        mask = expand_seed(SEED, purpose=MaskPurpose.SELF_MASK, length=500, modulus_bits=bits)
        expect = [(a + b) % (1 << bits) for a, b in zip(x.tolist(), mask.tolist(), strict=True)]
        assert y.tolist() == expect
        expander.add(y, SEED, MaskPurpose.SELF_MASK, sign=-1)
        assert np.array_equal(x, y)


def test_prg_refuses_bad_seeds_and_moduli() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        expand_seed(b"short", purpose=MaskPurpose.SELF_MASK, length=4, modulus_bits=32)
    with pytest.raises(ConfigError, match="modulus_bits"):
        expand_seed(SEED, purpose=MaskPurpose.SELF_MASK, length=4, modulus_bits=65)
    with pytest.raises(ConfigError, match="mask target"):
        MaskExpander(length=4, modulus_bits=32).add(
            np.zeros(4, np.uint64), SEED, MaskPurpose.SELF_MASK
        )


# -- key agreement --------------------------------------------------------------------------------


def test_key_agreement_is_symmetric_and_bound_to_purpose_context_and_pair() -> None:
    a, b, c = (X25519PrivateKey.generate() for _ in range(3))
    pa, pb = public_key_bytes(a), public_key_bytes(b)
    key = agree_key(a, pb, purpose=KeyPurpose.PAIRWISE_MASK, context=CTX, sites=("x", "y"))
    assert len(key) == 32
    assert key == agree_key(b, pa, purpose=KeyPurpose.PAIRWISE_MASK, context=CTX, sites=("y", "x"))
    others = {
        agree_key(a, pb, purpose=KeyPurpose.SHARE_ENCRYPTION, context=CTX, sites=("x", "y")),
        agree_key(
            a,
            pb,
            purpose=KeyPurpose.PAIRWISE_MASK,
            context=RoundContext("consortium", "study", 4, 0),
            sites=("x", "y"),
        ),
        agree_key(
            a,
            pb,
            purpose=KeyPurpose.PAIRWISE_MASK,
            context=RoundContext("consortium", "study", 3, 1),
            sites=("x", "y"),
        ),
        agree_key(a, pb, purpose=KeyPurpose.PAIRWISE_MASK, context=CTX, sites=("x", "z")),
        agree_key(c, pb, purpose=KeyPurpose.PAIRWISE_MASK, context=CTX, sites=("x", "y")),
    }
    assert key not in others
    assert len(others) == 5


def test_key_agreement_refuses_malformed_and_low_order_public_keys() -> None:
    a = X25519PrivateKey.generate()
    with pytest.raises(IntegrityError, match="32 bytes"):
        agree_key(a, bytes(31), purpose=KeyPurpose.PAIRWISE_MASK, context=CTX, sites=("x", "y"))
    with pytest.raises(IntegrityError, match="low-order"):
        agree_key(a, bytes(32), purpose=KeyPurpose.PAIRWISE_MASK, context=CTX, sites=("x", "y"))


def test_private_keys_round_trip_through_raw_bytes() -> None:
    a = X25519PrivateKey.generate()
    raw = private_key_bytes(a)
    assert public_key_bytes(private_key_from_bytes(raw)) == public_key_bytes(a)
    with pytest.raises(IntegrityError):
        private_key_from_bytes(raw[:31])


# -- Shamir ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_any_threshold_shares_reconstruct_and_fewer_do_not(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    shares = split_secret(secret, threshold=t, count=n)
    assert [s.index for s in shares] == list(range(1, n + 1))
    chosen = data.draw(st.permutations(shares))
    assert combine_shares(chosen[:t], threshold=t) == secret
    assert combine_shares(chosen, threshold=t) == secret
    if t > 1:
        with pytest.raises(IntegrityError, match="cannot reconstruct"):
            combine_shares(chosen[: t - 1], threshold=t)


@settings(max_examples=150, deadline=None)
@given(
    points=st.dictionaries(
        st.integers(1, 2**16), st.binary(min_size=32, max_size=32), min_size=1, max_size=14
    )
)
def test_interpolation_is_pycryptodomes_on_any_points(points: dict[int, bytes]) -> None:
    # Any share values, not only those of a split: the same field and the same polynomial.
    shares = [SecretShare(i, v) for i, v in points.items()]
    chosen = sorted(points.items())
    expected = b"".join(
        bytes(Shamir.combine([(i, v[half : half + 16]) for i, v in chosen])) for half in (0, 16)
    )
    assert combine_shares(shares, threshold=len(shares)) == expected


def test_each_half_of_the_secret_is_shared_separately() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, threshold=3, count=5)
    assert all(len(s.value) == 32 for s in shares)
    # The two halves use independent polynomials: the share halves are unrelated.
    assert all(s.value[:16] != s.value[16:] for s in shares)
    for subset in itertools.combinations(shares, 3):
        assert combine_shares(subset, threshold=3) == secret


def test_commitment_catches_a_forged_share() -> None:
    secret = os.urandom(32)
    commitment = commit_secret(secret, context=CTX, owner="site-a")
    shares = list(split_secret(secret, threshold=3, count=5))
    assert (
        reconstruct_committed(
            shares, threshold=3, commitment=commitment, context=CTX, owner="site-a"
        )
        == secret
    )
    forged = SecretShare(shares[0].index, bytes(b ^ 1 for b in shares[0].value))
    with pytest.raises(IntegrityError, match="does not match its commitment"):
        reconstruct_committed(
            [forged, *shares[1:]], threshold=3, commitment=commitment, context=CTX, owner="site-a"
        )
    with pytest.raises(IntegrityError, match="two different shares"):
        combine_shares([forged, *shares], threshold=3)


def test_commitment_is_bound_to_context_and_owner() -> None:
    secret = os.urandom(32)
    base = commit_secret(secret, context=CTX, owner="a")
    assert base != commit_secret(secret, context=CTX, owner="b")
    assert base != commit_secret(
        secret, context=RoundContext("consortium", "study", 3, 1), owner="a"
    )
    assert base != commit_secret(os.urandom(32), context=CTX, owner="a")


def test_shares_refuse_wrong_sizes() -> None:
    with pytest.raises(ConfigError):
        split_secret(b"x" * 16, threshold=2, count=3)
    with pytest.raises(ConfigError):
        split_secret(b"x" * 32, threshold=4, count=3)
    with pytest.raises(IntegrityError):
        SecretShare(0, bytes(32))
    with pytest.raises(IntegrityError):
        SecretShare(1, bytes(16))


# -- sealed shares --------------------------------------------------------------------------------


def _pair() -> tuple[SecretShare, SecretShare]:
    return SecretShare(4, os.urandom(32)), SecretShare(4, os.urandom(32))


def test_sealed_shares_open_only_for_their_context_sender_and_recipient() -> None:
    key = os.urandom(32)
    k, s = _pair()
    sealed = seal_shares(key, context=CTX, sender="a", recipient="b", key_share=k, seed_share=s)
    assert open_shares(key, sealed, context=CTX, sender="a", recipient="b") == (k, s)
    assert sealed != seal_shares(
        key, context=CTX, sender="a", recipient="b", key_share=k, seed_share=s
    )  # fresh nonce
    wrong = [
        (key, sealed, RoundContext("consortium", "study", 2, 0), "a", "b"),
        (key, sealed, CTX, "b", "a"),
        (key, sealed, CTX, "a", "c"),
        (os.urandom(32), sealed, CTX, "a", "b"),
        (key, sealed[:-1] + bytes([sealed[-1] ^ 1]), CTX, "a", "b"),
        (key, sealed[:20], CTX, "a", "b"),
    ]
    for wkey, box, ctx, sender, recipient in wrong:
        with pytest.raises(IntegrityError):
            open_shares(wkey, box, context=ctx, sender=sender, recipient=recipient)


def test_canonical_bytes_never_collide_across_splits_and_types() -> None:
    encodings = {
        canonical_bytes("ab", "c"),
        canonical_bytes("a", "bc"),
        canonical_bytes(b"ab", "c"),
        canonical_bytes(["ab", "c"]),
        canonical_bytes(["ab"], "c"),
        canonical_bytes(1),
        canonical_bytes("\x00\x00\x00\x00\x00\x00\x00\x01"),
    }
    assert len(encodings) == 7
    with pytest.raises(ValueError, match=">= 0"):
        canonical_bytes(-1)


def test_a_sender_cannot_name_another_sender_inside_the_ciphertext() -> None:
    # A malicious sender holds the pair key and can encrypt anything under the right
    # associated data; the plaintext must still name the true sender and recipient.
    key = os.urandom(32)
    k, s = _pair()
    body = k.index.to_bytes(4, "big") + k.value + s.value
    ad = canonical_bytes("alliance-secagg-shares-ad-v1", CTX.to_bytes(), "a", "b")
    for sender, recipient in (("c", "b"), ("a", "c")):
        named = canonical_bytes("alliance-secagg-shares-v1", sender, recipient)
        nonce = os.urandom(12)
        box = nonce + ChaCha20Poly1305(key).encrypt(nonce, body + named, ad)
        with pytest.raises(IntegrityError, match="another sender or recipient"):
            open_shares(key, box, context=CTX, sender="a", recipient="b")
