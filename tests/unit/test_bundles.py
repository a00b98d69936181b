"""Sealed bundles ("GABN"): a message in a file opens only for its recipient, intact and bound.

Whatever is wrong with a bundle (its frame, its header, its addressing, its time, its
signature, its ciphertext, the message sealed inside or the agreement of the two) must raise
:class:`ProtocolError` (or its subclass :class:`IntegrityError`) naming the problem, without
echoing the sealed content. Bundles are rebuilt here by hand from the layout the module
documents, so that the tests also pin the format.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.public import PublicKey, SealedBox

from alliance.core.errors import ConfigError, IntegrityError, ProtocolError
from alliance.crypto import CertificateAuthority, IssuedParty, Role, Signer, TrustStore
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.bundles import (
    BundleHeader,
    bundle_name,
    open_bundle,
    peek_header,
    seal_bundle,
    write_bundle,
)
from alliance.protocol.codec import MAX_CLOCK_SKEW_S, encode, encode_signed
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind

FED, STUDY = "fed", "study"
CONSORTIUM = "bundles-test"
#: The receiver's clock for bundle validity (certificates are checked at the wall clock).
NOW = 1_750_000_000.0
TTL = 14 * 86400.0
#: Planted in every test message's body and arrays: it must never show in a bundle or an error.
PLANTED = "PLANTED-patient-0042-secret"
PATTERN = np.arange(64, dtype=np.float32) * np.float32(1.0009765625) + np.float32(7.25)

# A flipped byte inside a certificate can make cryptography parse a serial number as negative;
# it warns (and pytest turns warnings into errors). The warning is not what these tests check.
IGNORE_NEGATIVE_SERIAL = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning"
)

# ---------------------------------------------------------------------------------------------
# the consortium


@dataclass(frozen=True)
class Party:
    """A party as the bundle code sees it: its signer and its Ed25519 private key."""

    signer: Signer
    key: ed25519.Ed25519PrivateKey

    @property
    def name(self) -> str:
        return self.signer.name

    @property
    def public(self) -> ed25519.Ed25519PublicKey:
        return self.signer.public_key


@dataclass(frozen=True)
class Pki:
    trust: TrustStore
    coordinator: Party
    site_a: Party
    site_b: Party
    revoked: Party  # "site-d": revoked, and the trust store holds the CRL saying so
    rogue: Party  # "site-a", certified by another root of the same consortium name

    def party(self, name: str) -> Party:
        return {p.name: p for p in (self.coordinator, self.site_a, self.site_b)}[name]


def _party(issued: IssuedParty) -> Party:
    return Party(Signer(issued.signing_key, issued.certificate), issued.signing_key)


def make_pki() -> Pki:
    ca = CertificateAuthority.create(CONSORTIUM)
    coordinator = ca.issue(COORDINATOR, Role.COORDINATOR, hosts=["localhost"])
    site_a, site_b = ca.issue("site-a", Role.SITE), ca.issue("site-b", Role.SITE)
    revoked = ca.issue("site-d", Role.SITE)
    ca.revoke("site-d")
    rogue = CertificateAuthority.create(CONSORTIUM).issue("site-a", Role.SITE)
    return Pki(
        trust=TrustStore(ca.certificate, ca.crl()),
        coordinator=_party(coordinator),
        site_a=_party(site_a),
        site_b=_party(site_b),
        revoked=_party(revoked),
        rogue=_party(rogue),
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def verifier_for(pki: Pki, recipient: str) -> MessageVerifier:
    """What a party passes as ``verify``: the coordinator hears sites, a site the coordinator."""
    return MessageVerifier(
        pki.trust, role=Role.SITE if recipient == COORDINATOR else Role.COORDINATOR
    )


# ---------------------------------------------------------------------------------------------
# messages and bundles


def message(
    sender: str = "site-a",
    recipient: str = COORDINATOR,
    *,
    kind: MessageKind = MessageKind.MODEL_UPDATE,
    body: dict[str, Any] | None = None,
    **header: Any,
) -> Envelope:
    """A small message carrying the planted secret in its body and arrays."""
    fields: dict[str, Any] = {"federation": FED, "study": STUDY, "round": 1}
    fields.update(header)
    arrays: dict[str, npt.NDArray[Any]] = {"w": PATTERN.copy(), "b": np.array([3, 1, 4], "<i8")}
    return Envelope(
        Header(kind, sender=sender, recipient=recipient, **fields),
        body if body is not None else {"note": PLANTED, "num_examples": 12},
        arrays,
    )


def seal(
    pki: Pki,
    env: Envelope | None = None,
    *,
    now: float = NOW,
    ttl_s: float = TTL,
    to: Party | None = None,
) -> bytes:
    """``env`` (default: site-a's update) sealed by its sender to its recipient (or ``to``)."""
    env = message() if env is None else env
    recipient = to if to is not None else pki.party(env.header.recipient)
    return seal_bundle(
        env,
        signer=pki.party(env.header.sender).signer,
        recipient_key=recipient.public,
        ttl_s=ttl_s,
        now=now,
    )


def open_as(
    pki: Pki, data: bytes, recipient: str = COORDINATOR, *, now: float = NOW, **kwargs: Any
) -> Any:
    options: dict[str, Any] = {
        "verify": verifier_for(pki, recipient),
        "recipient": recipient,
        "recipient_key": pki.party(recipient).key,
        "federation": FED,
        "now": now,
    }
    options.update(kwargs)
    return open_bundle(data, **options)


def assert_same_envelope(got: Envelope, want: Envelope) -> None:
    assert got.header == want.header
    assert dict(got.body) == dict(want.body)
    assert set(got.arrays) == set(want.arrays)
    for name, arr in want.arrays.items():
        assert (got.arrays[name].dtype, got.arrays[name].shape) == (arr.dtype, arr.shape)
        assert got.arrays[name].tobytes() == arr.tobytes(), name


# ---------------------------------------------------------------------------------------------
# the layout, by hand

_FIXED = struct.Struct("<4sHI")
_LEN64 = struct.Struct("<Q")
_SIG = 64


@dataclass(frozen=True)
class Parts:
    """A bundle taken apart along the documented layout."""

    header: dict[str, Any]
    header_raw: bytes
    ciphertext: bytes
    signature: bytes


def split(data: bytes) -> Parts:
    magic, version, hlen = _FIXED.unpack_from(data, 0)
    assert (magic, version) == (b"GABN", 1)
    raw = data[_FIXED.size : _FIXED.size + hlen]
    (clen,) = _LEN64.unpack_from(data, _FIXED.size + hlen)
    start = _FIXED.size + hlen + _LEN64.size
    assert start + clen + _SIG == len(data)
    return Parts(json.loads(raw), raw, data[start : start + clen], data[start + clen :])


def canonical(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def prehash(signed_part: bytes) -> bytes:
    return b"GABN-SHA256" + hashlib.sha256(signed_part).digest()


def build(
    header: dict[str, Any] | bytes,
    ciphertext: bytes,
    sign: Callable[[bytes], bytes] | bytes,
    *,
    magic: bytes = b"GABN",
    version: int = 1,
) -> bytes:
    """A bundle from its parts; ``sign`` is a signing function or a (stale) signature."""
    raw = header if isinstance(header, bytes) else canonical(header)
    body = _FIXED.pack(magic, version, len(raw)) + raw + _LEN64.pack(len(ciphertext)) + ciphertext
    return body + (sign if isinstance(sign, bytes) else sign(prehash(body)))


def resign(data: bytes, by: Party | None, **edits: Any) -> bytes:
    """``data`` with header fields changed, signed again by ``by`` (``None``: old signature).

    Signing as another party puts that party's certificate in the header, as a forger must.
    """
    parts = split(data)
    header = {**parts.header, **edits}
    if by is None:
        return build(header, parts.ciphertext, parts.signature)
    if "certificate" not in edits:
        header["certificate"] = base64.b64encode(by.signer.certificate_der).decode()
    return build(header, parts.ciphertext, by.signer.sign)


def x25519(key: ed25519.Ed25519PublicKey) -> PublicKey:
    return PublicKey(crypto_sign_ed25519_pk_to_curve25519(key.public_bytes_raw()))


def bundle_around(
    inner: bytes, header: dict[str, Any], *, to: Party, by: Party, cert: Party | None = None
) -> bytes:
    """A bundle built from scratch around any inner bytes, signed by ``by``."""
    der = (cert or by).signer.certificate_der
    header = {**header, "certificate": base64.b64encode(der).decode()}
    return build(header, SealedBox(x25519(to.public)).encrypt(inner), by.signer.sign)


def header_of(env: Envelope, *, stage: str | None = None, ttl_s: float = TTL) -> dict[str, Any]:
    """The outer header seal_bundle writes for ``env`` at NOW (certificate left out)."""
    h = env.header
    return {
        "federation": h.federation,
        "study": h.study,
        "round": h.round,
        "stage": stage or h.kind.value,
        "sender": h.sender,
        "recipient": h.recipient,
        "nonce": h.nonce,
        "created_at": NOW,
        "expires_at": NOW + ttl_s,
    }


@pytest.fixture(scope="module")
def bundle(pki: Pki) -> bytes:
    return seal(pki, message(nonce="a" * 32))


# ---------------------------------------------------------------------------------------------
# 1. round trips and the format


def test_a_site_seals_to_the_coordinator_and_the_coordinator_opens_it(pki: Pki) -> None:
    env = message()
    data = seal(pki, env)
    opened = open_as(pki, data)
    assert_same_envelope(opened.envelope, env)
    assert opened.message.signer == "site-a"
    assert (opened.message.issued_at, opened.message.expires_at) == (NOW, NOW + TTL)
    assert opened.header == BundleHeader(
        federation=FED,
        study=STUDY,
        round=1,
        stage="model_update",
        sender="site-a",
        recipient=COORDINATOR,
        nonce=env.header.nonce,
        created_at=NOW,
        expires_at=NOW + TTL,
        certificate_der=pki.site_a.signer.certificate_der,
    )
    assert opened.digest == hashlib.sha256(data).hexdigest()
    assert open_as(pki, data, now=NOW + 1).digest == opened.digest


def test_the_coordinator_seals_to_a_site_and_the_site_opens_it(pki: Pki) -> None:
    env = message(COORDINATOR, "site-b", kind=MessageKind.TRAIN_TASK, round=7)
    opened = open_as(pki, seal(pki, env), "site-b")
    assert_same_envelope(opened.envelope, env)
    assert (opened.header.stage, opened.header.round, opened.header.sender) == (
        "train_task",
        7,
        COORDINATOR,
    )


def test_a_secure_aggregation_message_is_labelled_with_its_stage(pki: Pki) -> None:
    env = message(kind=MessageKind.SECAGG, body={"stage": "masked", "attempt": 0, "payload": {}})
    data = seal(pki, env)
    assert peek_header(data).stage == "masked"
    assert open_as(pki, data).header.stage == "masked"


def test_the_layout_is_as_documented(pki: Pki) -> None:
    env = message(nonce="0123456789abcdef" * 2)
    data = seal(pki, env, ttl_s=900.0)
    parts = split(data)
    assert data[:6] == b"GABN\x01\x00"
    assert parts.header_raw == canonical(
        {
            **header_of(env, ttl_s=900.0),
            "certificate": base64.b64encode(pki.site_a.signer.certificate_der).decode(),
        }
    )
    inner = encode_signed(env, pki.site_a.signer, ttl_s=900.0, now=NOW)
    assert len(parts.ciphertext) == len(inner) + 48  # a sealed box: ephemeral key + MAC
    pki.site_a.public.verify(parts.signature, prehash(data[:-_SIG]))
    # Deterministic but for the encryption: sealing again changes only ciphertext and signature.
    again = split(seal(pki, env, ttl_s=900.0))
    assert again.header_raw == parts.header_raw
    assert again.ciphertext != parts.ciphertext


def test_peek_header_reads_the_header_without_verifying(pki: Pki, bundle: bytes) -> None:
    assert peek_header(bundle) == open_as(pki, bundle).header
    tampered = bundle[:-1] + bytes([bundle[-1] ^ 1])
    assert peek_header(tampered) == peek_header(bundle)
    with pytest.raises(ProtocolError, match="bad magic"):
        peek_header(b"XXXX" + bundle[4:])


# ---------------------------------------------------------------------------------------------
# 2. secrecy


def test_a_bundle_shows_neither_the_body_nor_the_arrays(pki: Pki) -> None:
    env = message()
    data = seal(pki, env)
    plain = encode(env)
    assert PLANTED.encode() in plain
    assert PATTERN.tobytes() in plain
    for needle in (PLANTED.encode(), PATTERN.tobytes(), PATTERN.tobytes()[:16], b"num_examples"):
        assert needle not in data
    assert base64.b64encode(PLANTED.encode())[:16] not in data


def test_a_bundle_sealed_to_site_a_does_not_open_for_site_b(pki: Pki) -> None:
    data = seal(pki, message(COORDINATOR, "site-a", kind=MessageKind.TRAIN_TASK))
    assert open_as(pki, data, "site-a").header.recipient == "site-a"
    with pytest.raises(ProtocolError, match="addressed to 'site-a', not 'site-b'"):
        open_as(pki, data, "site-b")
    # Even claiming to be site-a, site-b's key does not open the box.
    with pytest.raises(IntegrityError, match=r"does not open: .* sealed to the key of 'site-a'"):
        open_as(pki, data, "site-a", recipient_key=pki.site_b.key)


def test_a_bundle_sealed_to_the_wrong_key_does_not_open(pki: Pki) -> None:
    """A sender that took the wrong certificate: the recipient is told, nothing leaks."""
    data = seal(pki, message(), to=pki.site_b)
    with pytest.raises(IntegrityError, match="not sealed to the key of 'coordinator' or is corr"):
        open_as(pki, data)


# ---------------------------------------------------------------------------------------------
# 3. the frame


def test_wrong_magic_is_refused(pki: Pki, bundle: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"^not a Guardian Alliance bundle \(bad magic"):
        open_as(pki, b"GASG" + bundle[4:])


def test_an_unsupported_version_is_refused(pki: Pki, bundle: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"format version 2 is not supported .*reads 1"):
        open_as(pki, bundle[:4] + b"\x02\x00" + bundle[6:])


class Recording:
    """A verifier that counts its calls, then defers to ``inner``."""

    def __init__(self, inner: MessageVerifier) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, signer: str, certificate_der: bytes, data: bytes, signature: bytes) -> None:
        self.calls += 1
        self.inner(signer, certificate_der, data, signature)


def test_every_truncation_is_refused_before_any_signature_work(pki: Pki) -> None:
    data = seal(pki, message(body={"n": 1}))
    verify = Recording(verifier_for(pki, COORDINATOR))
    for cut in range(len(data)):
        with pytest.raises(ProtocolError, match=r"too short|truncated") as caught:
            open_as(pki, data[:cut], verify=verify)
        assert type(caught.value) is ProtocolError
    assert verify.calls == 0
    assert open_as(pki, data, verify=verify).header.sender == "site-a"


def test_a_trailing_byte_is_refused(pki: Pki, bundle: bytes) -> None:
    with pytest.raises(ProtocolError, match="has 1 trailing bytes after its signature"):
        open_as(pki, bundle + b"\x00")


def test_an_oversized_bundle_is_refused_before_any_signature_work(pki: Pki, bundle: bytes) -> None:
    verify = Recording(verifier_for(pki, COORDINATOR))
    with pytest.raises(ProtocolError, match=f"{len(bundle)} bytes exceeds the limit"):
        open_as(pki, bundle, verify=verify, max_bytes=len(bundle) - 1)
    assert verify.calls == 0
    assert open_as(pki, bundle, verify=verify, max_bytes=len(bundle)).digest


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        (lambda b: b[:6] + struct.pack("<I", 2**32 - 1) + b[10:], "header of 4294967295 bytes"),
        (lambda b: b[:6] + struct.pack("<I", 60_000) + b[10:], "truncated inside its header"),
        (
            lambda b: (
                b[: 10 + len(split(b).header_raw)]
                + _LEN64.pack(2**64 - 1)
                + b[18 + len(split(b).header_raw) :]
            ),
            "truncated: .* its lengths say",
        ),
    ],
    ids=["header 4 GiB", "header past the end", "ciphertext 2**64-1"],
)
def test_huge_declared_lengths_are_refused(
    patch: Callable[[bytes], bytes], reason: str, pki: Pki, bundle: bytes
) -> None:
    with pytest.raises(ProtocolError, match=reason):
        open_as(pki, patch(bundle))


def test_a_ciphertext_shorter_than_a_sealed_box_is_refused(pki: Pki, bundle: bytes) -> None:
    short = build(split(bundle).header, b"x" * 48, pki.site_a.signer.sign)
    with pytest.raises(ProtocolError, match="ciphertext of 48 bytes is too short"):
        open_as(pki, short)


# ---------------------------------------------------------------------------------------------
# 4. the header


def _with(header: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**header, **changes}
    return {k: v for k, v in out.items() if v is not _DROP}


_DROP = object()

BAD_HEADERS: dict[str, tuple[Callable[[dict[str, Any], bytes], bytes], str]] = {
    "not JSON": (lambda h, raw: raw[:-1], r"not valid JSON \(Expecting"),
    "not UTF-8": (lambda h, raw: raw[:-2] + b'\xff"', "not valid UTF-8"),
    "a list": (lambda h, raw: b"[1,2]", "must be a JSON object"),
    "an extra field": (
        lambda h, raw: canonical(_with(h, zz_extra=1)),
        r"missing \[\], unexpected \['zz_extra'\]",
    ),
    "a missing field": (
        lambda h, raw: canonical(_with(h, nonce=_DROP)),
        r"missing \['nonce'\], unexpected \[\]",
    ),
    "a repeated field": (lambda h, raw: raw[:-1] + b',"study":"x"}', "repeats a field"),
    "round a string": (lambda h, raw: canonical(_with(h, round="1")), "'round' must be an int"),
    "round a boolean": (lambda h, raw: canonical(_with(h, round=True)), "'round' must be an int"),
    "round negative": (lambda h, raw: canonical(_with(h, round=-1)), "'round' must be an int"),
    "round huge": (lambda h, raw: canonical(_with(h, round=2**64)), "'round' must be an int"),
    "sender a number": (
        lambda h, raw: canonical(_with(h, sender=5)),
        "'sender' must be a non-empty string",
    ),
    "stage empty": (lambda h, raw: canonical(_with(h, stage="")), "'stage' must be a non-empty"),
    "created_at a string": (
        lambda h, raw: canonical(_with(h, created_at="now")),
        "'created_at' must be a finite number",
    ),
    "expires_at 400 digits": (
        lambda h, raw: canonical(_with(h, expires_at=10**400)),
        "'expires_at' must be a finite number",
    ),
    "expires_at null": (
        lambda h, raw: canonical(_with(h, expires_at=None)),
        "'expires_at' must be a finite number",
    ),
    "certificate not base64": (
        lambda h, raw: canonical(_with(h, certificate="%%%")),
        "'certificate' is not base64",
    ),
    "not canonical": (
        lambda h, raw: json.dumps(h, sort_keys=True).encode(),
        "not in canonical form",
    ),
    "integer time": (
        lambda h, raw: canonical(_with(h, created_at=int(h["created_at"]))),
        "not in canonical form",
    ),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_a_malformed_header_is_refused(case: str, pki: Pki, bundle: bytes) -> None:
    """Each built with a valid signature: the header itself is the problem."""
    make, reason = BAD_HEADERS[case]
    parts = split(bundle)
    data = build(make(parts.header, parts.header_raw), parts.ciphertext, pki.site_a.signer.sign)
    with pytest.raises(ProtocolError, match=reason) as caught:
        open_as(pki, data)
    assert type(caught.value) is ProtocolError


def test_a_bundle_of_another_federation_is_refused(pki: Pki) -> None:
    data = seal(pki, message(federation="other-fed"))
    with pytest.raises(ProtocolError, match="belongs to federation 'other-fed', this is 'fed'"):
        open_as(pki, data)


def test_a_misaddressed_bundle_is_refused(pki: Pki) -> None:
    data = seal(pki, message(recipient="site-b"))
    with pytest.raises(ProtocolError, match="addressed to 'site-b', not 'coordinator'; deliver"):
        open_as(pki, data)


def test_an_expired_bundle_is_refused(pki: Pki, bundle: bytes) -> None:
    assert open_as(pki, bundle, now=NOW + TTL).header.expires_at == NOW + TTL  # inclusive
    with pytest.raises(ProtocolError, match="from 'site-a' expired 1 s ago; ask the sender"):
        open_as(pki, bundle, now=NOW + TTL + 1)


def test_a_bundle_from_the_future_is_refused(pki: Pki) -> None:
    at_limit = seal(pki, now=NOW + MAX_CLOCK_SKEW_S)
    assert open_as(pki, at_limit).header.created_at == NOW + MAX_CLOCK_SKEW_S
    with pytest.raises(ProtocolError, match="dated 301 s in the future; check the clocks"):
        open_as(pki, seal(pki, now=NOW + MAX_CLOCK_SKEW_S + 1))


# ---------------------------------------------------------------------------------------------
# 5. signatures and certificates


@pytest.mark.parametrize(
    ("field", "value"),
    [("study", "other"), ("round", 2), ("nonce", "b" * 32), ("stage", "refusal")],
)
def test_a_header_field_altered_without_re_signing_is_refused(
    field: str, value: Any, pki: Pki, bundle: bytes
) -> None:
    with pytest.raises(IntegrityError, match="bundle from 'site-a': signature of site-a does not"):
        open_as(pki, resign(bundle, None, **{field: value}))


def test_a_ciphertext_bit_flip_is_refused(pki: Pki, bundle: bytes) -> None:
    parts = split(bundle)
    flipped = bytearray(parts.ciphertext)
    flipped[len(flipped) // 2] ^= 0x10
    with pytest.raises(IntegrityError, match="signature of site-a does not verify"):
        open_as(pki, build(parts.header, bytes(flipped), parts.signature))
    # Re-signed by the sender itself: the box's MAC catches it.
    with pytest.raises(IntegrityError, match="does not open"):
        open_as(pki, build(parts.header, bytes(flipped), pki.site_a.signer.sign))


def test_a_signature_by_another_party_than_the_claimed_sender_is_refused(
    pki: Pki, bundle: bytes
) -> None:
    """site-a's header and certificate, signed with site-b's key."""
    parts = split(bundle)
    with pytest.raises(IntegrityError, match="signature of site-a does not verify"):
        open_as(pki, build(parts.header, parts.ciphertext, pki.site_b.signer.sign))


def test_a_bundle_re_signed_by_another_site_under_its_own_name_is_refused(
    pki: Pki, bundle: bytes
) -> None:
    """site-b takes site-a's sealed update and passes it off as its own (sealed boxes are
    anonymous, so the outer signature alone could not tell)."""
    forged = resign(bundle, pki.site_b, sender="site-b")
    assert peek_header(forged).sender == "site-b"
    with pytest.raises(
        IntegrityError, match="from 'site-b' seals a message signed by 'site-a'; it was re-signed"
    ):
        open_as(pki, forged)


def test_a_recipient_cannot_forward_what_was_sealed_to_it(pki: Pki) -> None:
    """site-a opens the coordinator's task and seals the signed frame on to site-b."""
    task = message(COORDINATOR, "site-a", kind=MessageKind.TRAIN_TASK)
    inner = encode_signed(task, pki.coordinator.signer, ttl_s=TTL, now=NOW)
    header = {**header_of(task), "sender": "site-a", "recipient": "site-b"}
    forwarded = bundle_around(inner, header, to=pki.site_b, by=pki.site_a)
    with pytest.raises(IntegrityError, match="seals a message signed by 'coordinator'"):
        open_as(pki, forwarded, "site-b", verify=MessageVerifier(pki.trust, role=None))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("study", "other"),
        ("round", 2),
        ("nonce", "b" * 32),
        ("stage", "refusal"),
        ("created_at", NOW - 1),
        ("expires_at", NOW + TTL + 86400),
    ],
)
def test_a_header_re_signed_by_the_sender_must_still_match_the_sealed_message(
    field: str, value: Any, pki: Pki, bundle: bytes
) -> None:
    """Splicing: a valid signature over a header that is not the sealed message's."""
    with pytest.raises(IntegrityError, match=f"disagrees with the sealed message on {field};"):
        open_as(pki, resign(bundle, pki.site_a, **{field: value}))


def test_last_rounds_ciphertext_spliced_into_this_rounds_header_is_refused(pki: Pki) -> None:
    old = seal(pki, message(round=1))
    new = seal(pki, message(round=2))
    spliced = build(split(new).header, split(old).ciphertext, pki.site_a.signer.sign)
    with pytest.raises(IntegrityError, match="disagrees with the sealed message on round, nonce"):
        open_as(pki, spliced)


def test_a_sealed_message_addressed_elsewhere_is_refused(pki: Pki) -> None:
    env = message(recipient="site-b")
    inner = encode_signed(env, pki.site_a.signer, ttl_s=TTL, now=NOW)
    data = bundle_around(
        inner, {**header_of(env), "recipient": COORDINATOR}, to=pki.coordinator, by=pki.site_a
    )
    with pytest.raises(IntegrityError, match="disagrees with the sealed message on recipient"):
        open_as(pki, data)


def test_a_revoked_certificate_is_refused(pki: Pki) -> None:
    env = message("site-d")
    data = seal_bundle(
        env, signer=pki.revoked.signer, recipient_key=pki.coordinator.public, now=NOW
    )
    with pytest.raises(IntegrityError, match=r"from 'site-d': certificate serial .* was revoked"):
        open_as(pki, data)


def test_a_certificate_from_another_consortium_is_refused(pki: Pki) -> None:
    data = seal_bundle(
        message(), signer=pki.rogue.signer, recipient_key=pki.coordinator.public, now=NOW
    )
    with pytest.raises(IntegrityError, match="not issued by consortium CA 'bundles-test'"):
        open_as(pki, data)


def test_a_sender_of_the_wrong_role_is_refused(pki: Pki) -> None:
    """A site must hear only the coordinator; here site-b writes to site-a."""
    data = seal(pki, message("site-b", "site-a"))
    with pytest.raises(IntegrityError, match="'site-b' is for a site, not a coordinator"):
        open_as(pki, data, "site-a", verify=MessageVerifier(pki.trust, role=Role.COORDINATOR))


@IGNORE_NEGATIVE_SERIAL
def test_a_corrupt_certificate_is_refused(pki: Pki, bundle: bytes) -> None:
    der = bytearray(pki.site_a.signer.certificate_der)
    der[len(der) // 2] ^= 0xFF
    data = resign(bundle, pki.site_a, certificate=base64.b64encode(bytes(der)).decode())
    with pytest.raises(IntegrityError, match="bundle from 'site-a': certificate"):
        open_as(pki, data)


# ---------------------------------------------------------------------------------------------
# 6. the sealed message itself


def test_the_sealed_messages_own_expiry_is_checked(pki: Pki) -> None:
    """A sender that dates the bundle later than the message inside."""
    env = message()
    inner = encode_signed(env, pki.site_a.signer, ttl_s=10.0, now=NOW)
    data = bundle_around(inner, header_of(env), to=pki.coordinator, by=pki.site_a)
    with pytest.raises(ProtocolError, match="sealed message refused: message from 'site-a' expir"):
        open_as(pki, data, now=NOW + 100)


def test_garbage_sealed_by_a_member_is_refused(pki: Pki) -> None:
    data = bundle_around(os.urandom(200), header_of(message()), to=pki.coordinator, by=pki.site_a)
    with pytest.raises(ProtocolError, match="sealed message refused: not a signed Guardian"):
        open_as(pki, data)


def test_a_sealed_frame_with_a_400_digit_timestamp_is_refused(pki: Pki) -> None:
    """An integer too large for a float once made decode_signed raise OverflowError."""
    env = message()
    preamble = (
        b'{"certificate":"'
        + base64.b64encode(pki.site_a.signer.certificate_der)
        + b'","expires_at":1'
        + b"0" * 400
        + b',"issued_at":1750000000.0,"signer":"site-a"}'
    )
    payload = encode(env)
    body = b"GASG" + struct.pack("<HI", 1, len(preamble)) + preamble
    body += _LEN64.pack(len(payload)) + payload
    inner = body + pki.site_a.signer.sign(b"GASG-SHA256" + hashlib.sha256(body).digest())
    data = bundle_around(inner, header_of(env), to=pki.coordinator, by=pki.site_a)
    with pytest.raises(ProtocolError, match=r"sealed message refused: .*(out of range|number)"):
        open_as(pki, data)


def test_error_messages_never_echo_the_sealed_content(pki: Pki, bundle: bytes) -> None:
    attempts = [
        lambda: open_as(pki, bundle, "site-a"),
        lambda: open_as(pki, bundle, recipient_key=pki.site_b.key),
        lambda: open_as(pki, resign(bundle, pki.site_a, round=9)),
        lambda: open_as(pki, bundle[:-1]),
    ]
    for attempt in attempts:
        with pytest.raises(ProtocolError) as caught:
            attempt()
        assert str(caught.value)
        assert PLANTED not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# 7. sealing refusals


def test_only_the_sender_may_seal(pki: Pki) -> None:
    with pytest.raises(ProtocolError, match="'site-b' cannot seal a message whose sender is"):
        seal_bundle(message(), signer=pki.site_b.signer, recipient_key=pki.coordinator.public)


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("inf"), float("nan")])
def test_a_lifetime_must_be_positive(ttl: float, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="ttl_s must be a positive number"):
        seal(pki, ttl_s=ttl)


def test_a_creation_time_must_be_finite(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="must be a finite unix time"):
        seal(pki, now=float("nan"))


def test_a_recipient_key_unfit_for_encryption_is_refused(pki: Pki) -> None:
    small_order = ed25519.Ed25519PublicKey.from_public_bytes(b"\x01" + bytes(31))
    with pytest.raises(IntegrityError, match="cannot be used for encryption"):
        seal_bundle(message(), signer=pki.site_a.signer, recipient_key=small_order)


# ---------------------------------------------------------------------------------------------
# 8. file names and writing

_SAFE = re.compile(r"[A-Za-z0-9._-]+")


def _header(**changes: Any) -> BundleHeader:
    fields: dict[str, Any] = {
        "federation": "rare-fed",
        "study": "study-1",
        "round": 3,
        "stage": "model_update",
        "sender": "west-china",
        "recipient": COORDINATOR,
        "nonce": "0123456789abcdef0123456789abcdef",
        "created_at": NOW,
        "expires_at": NOW + TTL,
        "certificate_der": b"cert",
    }
    fields.update(changes)
    return BundleHeader(**fields)


def test_bundle_name_says_what_the_file_holds(pki: Pki, bundle: bytes) -> None:
    assert bundle_name(_header()) == (
        "rare-fed.study-1.r0003.model_update.west-china-to-coordinator.0123456789ab.gabn"
    )
    assert bundle_name(peek_header(bundle)) == (
        "fed.study.r0001.model_update.site-a-to-coordinator.aaaaaaaaaaaa.gabn"
    )


def test_bundle_name_is_safe_on_windows_and_fat() -> None:
    name = bundle_name(
        _header(federation="Fed/../x", study="a b:c*?", stage="share exchange", nonce="../..")
    )
    assert name == "Fed____x.a_b_c__.r0003.share_exchange.west-china-to-coordinator._____.gabn"
    assert bundle_name(_header(federation="CON")).startswith("_CON.")
    assert bundle_name(_header(federation="lpt1")).startswith("_lpt1.")
    assert bundle_name(_header(federation="-rf")).startswith("_-rf.")


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.text(min_size=1, max_size=300), min_size=6, max_size=6),
    round_=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_bundle_name_is_always_safe(texts: list[str], round_: int) -> None:
    keys = ("federation", "study", "stage", "sender", "recipient", "nonce")
    name = bundle_name(_header(round=round_, **dict(zip(keys, texts, strict=True))))
    assert _SAFE.fullmatch(name)
    assert name.endswith(".gabn")
    assert len(name) <= 255
    assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL"}


def test_write_bundle_writes_the_whole_file_privately(
    pki: Pki, bundle: bytes, tmp_path: Path
) -> None:
    path = tmp_path / bundle_name(peek_header(bundle))
    write_bundle(path, bundle)
    assert path.read_bytes() == bundle
    assert path.stat().st_mode & 0o777 == 0o600
    assert open_as(pki, path.read_bytes()).digest == hashlib.sha256(bundle).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def test_write_bundle_refuses_other_bytes(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="not a Guardian Alliance bundle"):
        write_bundle(tmp_path / "x.gabn", b"GASG....")
    assert list(tmp_path.iterdir()) == []
