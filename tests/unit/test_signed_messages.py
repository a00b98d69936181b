"""Signed messages ("GASG"): every way one can be wrong is refused with a clear error.

A signed frame is what crosses HTTPS and file bundles. Whatever is wrong with one (a flipped
byte, a cut or padded frame, a certificate from another CA, expired or revoked, a signer of
the wrong role or name, a stale or future-dated message, an oversized one) must raise
:class:`ProtocolError` (or its subclass :class:`IntegrityError`) naming the problem: never
another exception type, since the coordinator service and the site agents catch only the
package's own errors. Messages that verify but do not belong to the open round must be refused
by the coordinator without changing its state, and a frame accepted twice counts once.

The golden test pins the frame layout: an unversioned change of the bytes fails it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.pushing import coordinator as build_coordinator

from alliance.algorithms.strategies import FedAvg
from alliance.coordinator.rounds import Coordinator, Receipt
from alliance.core.errors import IntegrityError, ProtocolError
from alliance.crypto import CertificateAuthority, IssuedParty, Role, Signer, TrustStore
from alliance.crypto.certificates import utc_now
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.codec import (
    MAX_CLOCK_SKEW_S,
    SignatureVerifier,
    SignedMessage,
    decode_signed,
    encode,
    encode_signed,
)
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import ModelUpdate, TrainingPlan, TrainTask

F32 = np.float32
FED, STUDY = "fed", "study"
CONSORTIUM = "signed-messages-test"
#: The receiver's clock for message validity (certificates are checked at the wall clock).
NOW = 1_750_000_000.0
TTL = 600.0
Arrays = dict[str, npt.NDArray[Any]]

# The frame layout documented in alliance.protocol.codec, rebuilt here independently.
_FIXED = struct.Struct("<4sHI")
_LEN64 = struct.Struct("<Q")
_SIG = 64

# A flipped byte inside a certificate can make cryptography parse a serial number as negative;
# it warns (and pytest turns warnings into errors). The warning is not what these tests check.
IGNORE_NEGATIVE_SERIAL = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning"
)

# ---------------------------------------------------------------------------------------------
# the consortium


@dataclass(frozen=True)
class Pki:
    trust: TrustStore
    coordinator: Signer
    site_a: Signer
    site_b: Signer
    operator: Signer
    rogue_site_a: Signer  # "site-a", certified by another root of the same consortium name
    expired: Signer  # "site-c": certificate valid for one day, ten days ago
    revoked: Signer  # "site-d": revoked, and the trust store holds the CRL saying so


def _signer(party: IssuedParty) -> Signer:
    return Signer(party.signing_key, party.certificate)


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = CertificateAuthority.create(CONSORTIUM)
    parties = {
        "coordinator": ca.issue("coordinator", Role.COORDINATOR, hosts=["localhost"]),
        "site_a": ca.issue("site-a", Role.SITE),
        "site_b": ca.issue("site-b", Role.SITE),
        "operator": ca.issue("operator", Role.OPERATOR),
        "expired": ca.issue(
            "site-c", Role.SITE, not_before=utc_now() - timedelta(days=10), valid_days=1
        ),
        "revoked": ca.issue("site-d", Role.SITE),
    }
    ca.revoke("site-d")
    rogue = CertificateAuthority.create(CONSORTIUM).issue("site-a", Role.SITE)
    return Pki(
        trust=TrustStore(ca.certificate, ca.crl()),
        rogue_site_a=_signer(rogue),
        **{key: _signer(party) for key, party in parties.items()},
    )


@pytest.fixture(scope="module")
def sites(pki: Pki) -> MessageVerifier:
    """What the coordinator passes as ``verify``: signers must be sites of the consortium."""
    return MessageVerifier(pki.trust, role=Role.SITE)


class Recording:
    """A ``SignatureVerifier`` that counts its calls, then defers to ``inner`` (if any)."""

    def __init__(self, inner: SignatureVerifier | None = None) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, signer: str, certificate_der: bytes, data: bytes, signature: bytes) -> None:
        self.calls += 1
        if self.inner is not None:
            self.inner(signer, certificate_der, data, signature)


# ---------------------------------------------------------------------------------------------
# messages


def weights0() -> Arrays:
    return {"w": np.array([[1.0, 2.0], [3.0, 4.0]], F32), "b": np.array([0.5, -0.5], F32)}


def delta_of(site: str) -> Arrays:
    k = {"site-a": 1.0, "site-b": 2.0}.get(site, 9.0)
    return {"w": np.full((2, 2), 0.1 * k, F32), "b": np.array([k, -k], F32)}


def update(
    sender: str = "site-a",
    *,
    delta: Arrays | None = None,
    model_version: int = 0,
    num_examples: int = 10,
    **header: Any,
) -> Envelope:
    """A round-1 model update as a well-behaved site sends it; keyword overrides break it."""
    fields: dict[str, Any] = {
        "kind": MessageKind.MODEL_UPDATE,
        "federation": FED,
        "study": STUDY,
        "round": 1,
        "sender": sender,
        "recipient": COORDINATOR,
    }
    fields.update(header)
    return ModelUpdate(
        Header(**fields),
        model_version,
        num_examples,
        delta_of(sender) if delta is None else delta,
        {"train_loss": 0.5},
    ).to_envelope()


def sign(env: Envelope, signer: Any, *, now: float = NOW, ttl_s: float = TTL) -> bytes:
    return encode_signed(env, signer, ttl_s=ttl_s, now=now)


def assert_same_envelope(got: Envelope, want: Envelope) -> None:
    """Headers and bodies equal; arrays equal name by name in dtype, shape and raw bytes."""
    assert got.header == want.header
    assert dict(got.body) == dict(want.body)
    assert set(got.arrays) == set(want.arrays)
    for name, arr in want.arrays.items():
        out = got.arrays[name]
        assert (out.dtype, out.shape) == (arr.dtype, arr.shape), name
        assert out.tobytes() == np.ascontiguousarray(arr).tobytes(), name


# ---------------------------------------------------------------------------------------------
# the frame, by hand


@dataclass(frozen=True)
class Layout:
    """Where each part of a signed frame lies (byte offsets into it)."""

    preamble: slice
    payload_length: int
    payload: slice
    signature: slice
    certificate: slice  # the base64 text of the certificate inside the preamble


def layout(frame: bytes) -> Layout:
    _, _, plen = _FIXED.unpack_from(frame, 0)
    pre = slice(_FIXED.size, _FIXED.size + plen)
    (payload_len,) = _LEN64.unpack_from(frame, pre.stop)
    payload = slice(pre.stop + _LEN64.size, pre.stop + _LEN64.size + payload_len)
    assert payload.stop + _SIG == len(frame)
    cert = json.loads(frame[pre])["certificate"].encode("ascii")
    start = frame.index(cert, pre.start)
    return Layout(
        pre, pre.stop, payload, slice(payload.stop, len(frame)), slice(start, start + len(cert))
    )


def preamble(
    signer: Any,
    *,
    name: str | None = None,
    certificate: bytes | None = None,
    issued: float = NOW,
    ttl_s: float = TTL,
) -> dict[str, Any]:
    der = signer.certificate_der if certificate is None else certificate
    return {
        "signer": signer.name if name is None else name,
        "certificate": base64.b64encode(der).decode("ascii"),
        "issued_at": issued,
        "expires_at": issued + ttl_s,
    }


def build_frame(pre: dict[str, Any], payload: bytes, sign_with: Callable[[bytes], bytes]) -> bytes:
    """A signed frame laid out as codec.py documents it, whatever its contents claim."""
    raw = json.dumps(pre, sort_keys=True, separators=(",", ":")).encode("utf-8")
    signed = b"".join([_FIXED.pack(b"GASG", 1, len(raw)), raw, _LEN64.pack(len(payload)), payload])
    return signed + sign_with(prehash(signed))


def prehash(signed: bytes) -> bytes:
    """What Ed25519 signs, as codec.py documents it: a domain tag and the frame's SHA-256."""
    return b"GASG-SHA256" + hashlib.sha256(signed).digest()


def flip(frame: bytes, position: int, mask: int) -> bytes:
    out = bytearray(frame)
    out[position] ^= mask
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# 1. round trip


def test_a_signed_model_update_round_trips(pki: Pki, sites: MessageVerifier) -> None:
    # Values whose bits a lossy codec would change: -0.0, a subnormal, the largest float32.
    delta = {
        "w": np.array([[-0.0, 1e-45], [np.finfo(F32).max, -3.5]], F32),
        "b": np.array([0.1, -0.2], F32),
    }
    env = update(delta=delta, nonce="ab" * 16)
    frame = sign(env, pki.site_a)

    signed = decode_signed(frame, sites, now=NOW)

    assert isinstance(signed, SignedMessage)
    assert (signed.signer, signed.issued_at, signed.expires_at) == ("site-a", NOW, NOW + TTL)
    assert_same_envelope(signed.envelope, env)
    got = ModelUpdate.from_envelope(signed.envelope)
    assert (got.model_version, got.num_examples, dict(got.metrics)) == (0, 10, {"train_loss": 0.5})
    # Encoding is deterministic (Ed25519 signatures are too): same inputs, same bytes.
    assert sign(env, pki.site_a) == frame


def test_the_hand_built_frame_is_the_codec_layout(pki: Pki, sites: MessageVerifier) -> None:
    """The helper that forges frames below writes exactly what encode_signed writes."""
    env = update()
    frame = sign(env, pki.site_a)
    assert build_frame(preamble(pki.site_a), encode(env), pki.site_a.sign) == frame
    parts = layout(frame)
    assert frame[:6] == b"GASG\x01\x00"
    assert frame[parts.payload][:4] == b"GALM"
    assert base64.b64decode(frame[parts.certificate]) == pki.site_a.certificate_der


def test_a_train_task_from_the_coordinator_needs_the_coordinator_role(pki: Pki) -> None:
    """What a site checks: tasks must come from the coordinator's certificate."""
    coordinators = MessageVerifier(pki.trust, role=Role.COORDINATOR)
    task = TrainTask(
        Header(MessageKind.TRAIN_TASK, FED, STUDY, 1, COORDINATOR, "site-a"),
        0,
        TrainingPlan(),
        weights0(),
    ).to_envelope()
    signed = decode_signed(sign(task, pki.coordinator), coordinators, now=NOW)
    assert signed.signer == COORDINATOR
    assert_same_envelope(signed.envelope, task)

    forged = replace(task, header=replace(task.header, sender="site-a"))
    with pytest.raises(IntegrityError, match="'site-a' is for a site, not a coordinator"):
        decode_signed(sign(forged, pki.site_a), coordinators, now=NOW)


# ---------------------------------------------------------------------------------------------
# 2. tampering


def _in_preamble(text: bytes, offset: int = 0) -> Callable[[bytes], int]:
    """The byte ``offset`` past the start of ``text`` in the signed preamble."""

    def at(frame: bytes) -> int:
        return frame.index(text, layout(frame).preamble.start) + offset

    return at


def _in_payload(marker: bytes) -> Callable[[bytes], int]:
    """The byte just after ``marker`` in the payload (its header, body or array specs)."""

    def at(frame: bytes) -> int:
        return frame.index(marker, layout(frame).payload.start) + len(marker)

    return at


Position = Callable[[bytes], int]
NOT_SITE_A = "signature of site-a does not verify: the message was altered"

# (where, mask, error, message): the frame's fixed fields and its preamble. The preamble
# starts {"certificate":"MII..., and its numbers are 1750000000.0 and 1750000600.0.
TAMPER_FRAME: list[tuple[str, Position, int, type[ProtocolError], str]] = [
    ("magic", lambda f: 0, 0x01, ProtocolError, r"not a signed .* \(bad magic bytes\)"),
    ("magic, last byte", lambda f: 3, 0x80, ProtocolError, "bad magic bytes"),
    ("format version", lambda f: 4, 0x01, ProtocolError, "format version 0 is not supported"),
    ("format version, high byte", lambda f: 5, 0xFF, ProtocolError, "version 65281 is not"),
    ("preamble length", lambda f: 6, 0x01, ProtocolError, "does not match its payload length"),
    ("preamble length, high byte", lambda f: 9, 0x80, ProtocolError, "truncated inside"),
    (
        "preamble: signer name",
        _in_preamble(b'"signer":"site-a"', 15),
        0x01,  # site-a -> site-`
        IntegrityError,
        "certificate names site 'site-a', message claims 'site-`'",
    ),
    (
        "preamble: signer name, not UTF-8",
        _in_preamble(b'"signer":"site-a"', 15),
        0x80,
        ProtocolError,
        "preamble is not valid UTF-8 JSON",
    ),
    ("preamble: a key", _in_preamble(b'"signer"', 6), 0x01, ProtocolError, "must have exactly"),
    (
        "preamble: issued_at",
        _in_preamble(b'"issued_at":1750000000.0', 21),
        0x01,  # one second later: still a valid preamble, but not what was signed
        IntegrityError,
        NOT_SITE_A,
    ),
    (
        "preamble: expires_at",
        _in_preamble(b'"expires_at":1750000600.0', 20),
        0x01,  # 1750000700.0: a longer validity than the signer gave
        IntegrityError,
        NOT_SITE_A,
    ),
    (
        "preamble: issued_at not a number",
        _in_preamble(b'"issued_at":1750000000.0', 12),
        0x01,  # a leading zero is not JSON
        ProtocolError,
        "preamble is not valid UTF-8 JSON",
    ),
    (
        "preamble: certificate, first base64 character",
        _in_preamble(b'"certificate":"MII', 15),
        0x01,  # M -> L: the DER no longer starts with a SEQUENCE
        IntegrityError,
        "certificate is not a valid DER-encoded X.509",
    ),
    (
        "preamble: certificate, not base64",
        _in_preamble(b'"certificate":"MII', 15),
        0x60,  # M -> -
        ProtocolError,
        "certificate is not base64",
    ),
    (
        "preamble: closing brace",
        lambda f: layout(f).preamble.stop - 1,
        0x01,
        ProtocolError,
        "preamble is not valid UTF-8 JSON",
    ),
    (
        "payload length",
        lambda f: layout(f).payload_length,
        0x01,
        ProtocolError,
        r"length \d+ does not match its payload length",
    ),
    (
        "payload length, high byte",
        lambda f: layout(f).payload_length + 7,
        0x80,
        ProtocolError,
        r"does not match its payload length 922337\d+",
    ),
]

# Every byte of the payload and of the signature is covered by nothing but the signature.
TAMPER_SIGNED: dict[str, Position] = {
    "payload magic": lambda f: layout(f).payload.start,
    "payload preamble length": lambda f: layout(f).payload.start + 6,
    "payload header: federation": _in_payload(b'"federation":"'),
    "payload header: recipient": _in_payload(b'"recipient":"'),
    "payload header: round": _in_payload(b'"round":'),
    "payload header: nonce": _in_payload(b'"nonce":"'),
    "payload header: sender": _in_payload(b'"sender":"'),
    "payload body: num_examples": _in_payload(b'"num_examples":'),
    "payload array spec: dtype": _in_payload(b'"dtype":"<f'),
    "payload array spec: shape": _in_payload(b'"shape":['),
    "array bytes: first": lambda f: layout(f).payload.stop - 24,
    "array bytes: last": lambda f: layout(f).payload.stop - 1,
    "signature: first byte": lambda f: layout(f).signature.start,
    "signature: last byte (top bits of S)": lambda f: len(f) - 1,
}


@pytest.fixture(scope="module")
def frame(pki: Pki) -> bytes:
    """site-a's signed round-1 update: 2x2 + 2 float32 values (24 bytes of arrays)."""
    return sign(update(), pki.site_a)


@pytest.mark.parametrize(
    ("position", "mask", "error", "message"),
    [case[1:] for case in TAMPER_FRAME],
    ids=[case[0] for case in TAMPER_FRAME],
)
def test_a_flipped_byte_of_the_frame_or_preamble_is_refused(
    position: Position,
    mask: int,
    error: type[ProtocolError],
    message: str,
    frame: bytes,
    sites: MessageVerifier,
) -> None:
    with pytest.raises(error, match=message):
        decode_signed(flip(frame, position(frame), mask), sites, now=NOW)


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
@pytest.mark.parametrize("where", list(TAMPER_SIGNED))
def test_a_flipped_byte_of_the_payload_or_signature_fails_the_signature(
    where: str, mask: int, frame: bytes, sites: MessageVerifier
) -> None:
    with pytest.raises(IntegrityError, match=NOT_SITE_A):
        decode_signed(flip(frame, TAMPER_SIGNED[where](frame), mask), sites, now=NOW)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), mask=st.integers(1, 255))
def test_any_flipped_byte_outside_the_certificate_is_refused(
    data: st.DataObject, mask: int, frame: bytes, sites: MessageVerifier
) -> None:
    cert = layout(frame).certificate
    position = data.draw(
        st.one_of(st.integers(0, cert.start - 1), st.integers(cert.stop, len(frame) - 1)),
        label="position",
    )
    with pytest.raises(ProtocolError):
        decode_signed(flip(frame, position, mask), sites, now=NOW)


@IGNORE_NEGATIVE_SERIAL
def test_any_flipped_bit_of_the_certificate_is_refused(
    frame: bytes, sites: MessageVerifier
) -> None:
    """Regression: cryptography parses certificates lazily, so a corrupt subject or version
    used to escape TrustStore.verify as ValueError or x509.InvalidVersion."""
    cert = layout(frame).certificate
    escaped: dict[str, int] = {}
    for position in range(cert.start, cert.stop):
        for bit in range(8):
            try:
                decode_signed(flip(frame, position, 1 << bit), sites, now=NOW)
            except ProtocolError:
                continue
            except Exception as exc:  # the point is to see which types escape
                escaped[type(exc).__name__] = escaped.get(type(exc).__name__, 0) + 1
                continue
            pytest.fail(f"a frame with bit {bit} of byte {position} flipped was accepted")
    assert not escaped, f"exceptions other than ProtocolError escaped: {escaped}"


def _bad_common_name(der: bytes) -> bytes:
    """The subject's CN as a UTF8String that is not UTF-8."""
    assert der.count(b"\x0c\x06site-a") == 1
    return der.replace(b"\x0c\x06site-a", b"\x0c\x06site-\xff")


def _bad_version(der: bytes) -> bytes:
    """The version field set to 5 (X.509 v6); only 0-2 (v1-v3) exist."""
    i = der.index(b"\xa0\x03\x02\x01\x02")
    return der[: i + 4] + b"\x05" + der[i + 5 :]


@pytest.mark.parametrize("corrupt", [_bad_common_name, _bad_version], ids=["cn-utf8", "version"])
def test_a_malformed_certificate_is_refused_as_an_integrity_error(
    corrupt: Callable[[bytes], bytes], pki: Pki, sites: MessageVerifier
) -> None:
    """Even correctly signed by site-a's key: the certificate it carries cannot be read."""
    der = corrupt(pki.site_a.certificate_der)
    forged = build_frame(preamble(pki.site_a, certificate=der), encode(update()), pki.site_a.sign)
    with pytest.raises(IntegrityError, match="certificate is malformed"):
        decode_signed(forged, sites, now=NOW)


def test_truncation_at_any_length_is_refused_before_the_signature_check(
    frame: bytes, sites: MessageVerifier
) -> None:
    verify = Recording(sites)
    for length in range(len(frame)):
        with pytest.raises(ProtocolError, match=r"too short|truncated|does not match"):
            decode_signed(frame[:length], verify, now=NOW)
    assert verify.calls == 0
    decode_signed(frame, verify, now=NOW)
    assert verify.calls == 1


@settings(max_examples=50, deadline=None)
@given(extra=st.binary(min_size=1, max_size=200))
def test_appended_bytes_are_refused_before_the_signature_check(
    extra: bytes, frame: bytes, sites: MessageVerifier
) -> None:
    verify = Recording(sites)
    with pytest.raises(ProtocolError, match=r"length \d+ does not match its payload length"):
        decode_signed(frame + extra, verify, now=NOW)
    assert verify.calls == 0


def test_two_frames_back_to_back_are_refused(frame: bytes, sites: MessageVerifier) -> None:
    with pytest.raises(ProtocolError, match="does not match its payload length"):
        decode_signed(frame + frame, sites, now=NOW)


def test_a_frame_that_is_not_signed_at_all_is_refused(frame: bytes, sites: MessageVerifier) -> None:
    payload = frame[layout(frame).payload]
    verify = Recording(sites)
    with pytest.raises(ProtocolError, match="not a signed Guardian Alliance message"):
        decode_signed(payload + bytes(_SIG), verify, now=NOW)
    assert verify.calls == 0


# ---------------------------------------------------------------------------------------------
# 3. signer problems


def test_a_certificate_from_another_ca_is_refused(pki: Pki, sites: MessageVerifier) -> None:
    with pytest.raises(
        IntegrityError,
        match=f"certificate for 'site-a' is not issued by consortium CA '{CONSORTIUM}'",
    ):
        decode_signed(sign(update(), pki.rogue_site_a), sites, now=NOW)


def test_an_expired_certificate_is_refused(pki: Pki, sites: MessageVerifier) -> None:
    with pytest.raises(IntegrityError, match=r"certificate for 'site-c' expired on .*new one"):
        decode_signed(sign(update("site-c"), pki.expired), sites, now=NOW)


def test_a_revoked_certificate_is_refused(pki: Pki, sites: MessageVerifier) -> None:
    with pytest.raises(IntegrityError, match=r"of site 'site-d' was revoked on"):
        decode_signed(sign(update("site-d"), pki.revoked), sites, now=NOW)


def test_an_operator_certificate_is_refused_where_a_site_is_required(
    pki: Pki, sites: MessageVerifier
) -> None:
    with pytest.raises(IntegrityError, match="'operator' is for a operator, not a site"):
        decode_signed(sign(update("operator"), pki.operator), sites, now=NOW)
    # The same frame is fine for a receiver that takes any role: the role is the problem.
    signed = decode_signed(
        sign(update("operator"), pki.operator), MessageVerifier(pki.trust, role=None), now=NOW
    )
    assert signed.signer == "operator"


def test_a_preamble_naming_another_signer_than_the_certificate_is_refused(
    pki: Pki, sites: MessageVerifier
) -> None:
    """Correctly signed by site-a's key over site-a's certificate, but claiming to be site-b."""
    forged = build_frame(
        preamble(pki.site_a, name="site-b"), encode(update("site-b")), pki.site_a.sign
    )
    with pytest.raises(
        IntegrityError, match="certificate names site 'site-a', message claims 'site-b'"
    ):
        decode_signed(forged, sites, now=NOW)


def test_a_signature_by_another_key_than_the_certificates_is_refused(
    pki: Pki, sites: MessageVerifier
) -> None:
    """site-a's certificate, signed with site-b's key."""
    forged = build_frame(preamble(pki.site_a), encode(update()), pki.site_b.sign)
    with pytest.raises(IntegrityError, match="signature of site-a does not verify"):
        decode_signed(forged, sites, now=NOW)


def test_a_header_sender_other_than_the_signer_is_refused(pki: Pki, sites: MessageVerifier) -> None:
    with pytest.raises(
        ProtocolError, match="'site-a' cannot sign a message whose sender is 'site-b'"
    ):
        sign(update("site-b"), pki.site_a)
    # Built by hand: the signature and certificate are site-a's, the payload says site-b.
    forged = build_frame(preamble(pki.site_a), encode(update("site-b")), pki.site_a.sign)
    with pytest.raises(IntegrityError, match="signed by 'site-a' claims to be from 'site-b'"):
        decode_signed(forged, sites, now=NOW)


# ---------------------------------------------------------------------------------------------
# 4. time


def test_an_expired_message_is_refused(frame: bytes, sites: MessageVerifier) -> None:
    # Valid up to and including expires_at.
    assert decode_signed(frame, sites, now=NOW + TTL).expires_at == NOW + TTL
    with pytest.raises(ProtocolError, match=r"from 'site-a' expired 1 s ago.*send a fresh one"):
        decode_signed(frame, sites, now=NOW + TTL + 1)


def test_a_message_dated_in_the_future_is_refused(pki: Pki, sites: MessageVerifier) -> None:
    at_limit = sign(update(), pki.site_a, now=NOW + MAX_CLOCK_SKEW_S)
    assert decode_signed(at_limit, sites, now=NOW).issued_at == NOW + MAX_CLOCK_SKEW_S
    too_early = sign(update(), pki.site_a, now=NOW + MAX_CLOCK_SKEW_S + 1)
    with pytest.raises(ProtocolError, match=r"dated 301 s in the future; check the clocks"):
        decode_signed(too_early, sites, now=NOW)


# ---------------------------------------------------------------------------------------------
# 5. size


def test_an_oversized_message_is_refused_before_any_signature_work(
    frame: bytes, sites: MessageVerifier
) -> None:
    verify = Recording(sites)
    with pytest.raises(
        ProtocolError, match=f"{len(frame)} bytes exceeds the limit of {len(frame) - 1} bytes"
    ):
        decode_signed(frame, verify, max_bytes=len(frame) - 1, now=NOW)
    assert verify.calls == 0
    # Exactly at the limit is fine.
    assert decode_signed(frame, verify, max_bytes=len(frame), now=NOW).signer == "site-a"
    assert verify.calls == 1


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (lambda f: f[:6] + struct.pack("<I", 2**32 - 1) + f[10:], "truncated inside its preamble"),
        (
            lambda f: (
                f[: layout(f).payload_length]
                + _LEN64.pack(2**64 - 1)
                + f[layout(f).payload_length + 8 :]
            ),
            "does not match its payload length 18446744073709551615",
        ),
    ],
    ids=["preamble length 4 GiB", "payload length 2**64-1"],
)
def test_huge_declared_lengths_are_refused_before_any_signature_work(
    patch: Callable[[bytes], bytes], message: str, frame: bytes, sites: MessageVerifier
) -> None:
    verify = Recording(sites)
    with pytest.raises(ProtocolError, match=message):
        decode_signed(patch(frame), verify, now=NOW)
    assert verify.calls == 0


# ---------------------------------------------------------------------------------------------
# 6. replay and addressing, through the coordinator


@pytest.fixture
def coord() -> Coordinator:
    coordinator = build_coordinator(
        federation=FED,
        study=STUDY,
        sites=["site-a", "site-b"],
        weights=weights0(),
        strategy=FedAvg(),
        plan=TrainingPlan(),
    )
    assert coordinator.start_round() == 1
    return coordinator


def state(coord: Coordinator) -> dict[str, Any]:
    """Everything an accepted or refused message could change, in comparable form."""

    def deltas(r: int, site: str) -> dict[str, bytes]:
        # Deltas are kept only while their round is open.
        if coord.is_open and r == coord.round:
            return {k: v.tobytes() for k, v in coord.store.load_delta(STUDY, r, site).items()}
        return {}

    rounds = range(1, coord.round + 1)
    return {
        "version": coord.version,
        "round": coord.round,
        "open": coord.is_open,
        "weights": {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in coord.weights.items()},
        "updates": {
            r: [
                (
                    u.site,
                    u.nonce,
                    u.digest,
                    u.num_examples,
                    dict(u.metrics),
                    deltas(r, u.site),
                )
                for u in coord.store.updates(STUDY, r)
            ]
            for r in rounds
        },
        "history": list(coord.history),
    }


def deliver(coord: Coordinator, frame: bytes, verify: SignatureVerifier) -> Receipt:
    """What the service does with an upload: verify and decode the frame, then accept it."""
    return coord.accept(decode_signed(frame, verify, now=NOW).envelope)


def test_the_same_signed_message_twice_counts_once(
    coord: Coordinator, pki: Pki, sites: MessageVerifier
) -> None:
    frame = sign(update(), pki.site_a)
    assert deliver(coord, frame, sites) is Receipt.ACCEPTED
    before = state(coord)
    assert [u.site for u in coord.store.updates(STUDY, 1)] == ["site-a"]

    assert deliver(coord, frame, sites) is Receipt.DUPLICATE
    # Signed again later (another issued_at, so other bytes), same message: still a duplicate.
    assert deliver(coord, sign(update(), pki.site_a, now=NOW + 5), sites) is Receipt.DUPLICATE
    assert state(coord) == before
    assert coord.rejections == []

    # The round closes with site-a counted once.
    assert deliver(coord, sign(update("site-b"), pki.site_b), sites) is Receipt.ACCEPTED
    record = coord.close_round()
    assert (record.sites, record.num_examples) == (("site-a", "site-b"), 20)


def test_a_signed_message_with_a_seen_nonce_and_other_content_is_a_replay(
    coord: Coordinator, pki: Pki, sites: MessageVerifier
) -> None:
    first = update(nonce="1" * 32)
    assert deliver(coord, sign(first, pki.site_a), sites) is Receipt.ACCEPTED
    before = state(coord)
    other = update("site-b", nonce="1" * 32)
    with pytest.raises(ProtocolError, match=r"replayed message \(nonce 11111111"):
        deliver(coord, sign(other, pki.site_b), sites)
    assert state(coord) == before
    assert [(r.sender, r.round) for r in coord.rejections] == [("site-b", 1)]


def test_last_rounds_message_replayed_does_not_count_in_this_round(
    coord: Coordinator, pki: Pki, sites: MessageVerifier
) -> None:
    old = sign(update(), pki.site_a)
    assert deliver(coord, old, sites) is Receipt.ACCEPTED
    assert deliver(coord, sign(update("site-b"), pki.site_b), sites) is Receipt.ACCEPTED
    coord.close_round()
    coord.start_round()
    before = state(coord)
    # Acknowledged as the round-1 update it is (the site may have lost the answer), not counted.
    assert deliver(coord, old, sites) is Receipt.DUPLICATE
    assert state(coord) == before
    assert coord.store.updates(STUDY, 2) == []


def _nan() -> Arrays:
    delta = delta_of("site-b")
    delta["w"][1, 0] = np.nan
    return delta


def _inf() -> Arrays:
    delta = delta_of("site-b")
    delta["b"][1] = np.inf
    return delta


MISDIRECTED: dict[str, tuple[Callable[[], Envelope], type[ProtocolError], str]] = {
    "another federation": (
        lambda: update("site-b", federation="other-fed"),
        ProtocolError,
        "bound to federation 'other-fed'",
    ),
    "another study": (lambda: update("site-b", study="other"), ProtocolError, "study 'other'"),
    "a later round": (
        lambda: update("site-b", round=2),
        ProtocolError,
        "update for round 2, but the open round is 1",
    ),
    "an earlier round": (
        lambda: update("site-b", round=0),
        ProtocolError,
        "update for round 0, but the open round is 1",
    ),
    "another recipient": (
        lambda: update("site-b", recipient="site-a"),
        ProtocolError,
        "recipient 'site-a'",
    ),
    "another model version": (
        lambda: update("site-b", model_version=3),
        ProtocolError,
        "model version 3, current is 0",
    ),
    "wrong shape": (
        lambda: update("site-b", delta={**delta_of("site-b"), "w": np.zeros((4,), F32)}),
        IntegrityError,
        r"'w' has shape \(4,\) float32, the model expects \(2, 2\) float32",
    ),
    "missing parameter": (
        lambda: update("site-b", delta={"w": delta_of("site-b")["w"]}),
        IntegrityError,
        r"missing \['b'\]",
    ),
    "float64 delta": (
        lambda: update(
            "site-b", delta={k: v.astype(np.float64) for k, v in delta_of("site-b").items()}
        ),
        IntegrityError,
        r"has shape \([\d, ]+\) float64, the model expects \([\d, ]+\) float32",
    ),
    "NaN in a delta": (lambda: update("site-b", delta=_nan()), IntegrityError, "'w' contains NaN"),
    "Inf in a delta": (
        lambda: update("site-b", delta=_inf()),
        IntegrityError,
        "'b' contains NaN or infinite",
    ),
}


@pytest.mark.parametrize("case", list(MISDIRECTED))
def test_a_validly_signed_message_that_does_not_fit_the_round_changes_nothing(
    case: str, coord: Coordinator, pki: Pki, sites: MessageVerifier
) -> None:
    make, error, message = MISDIRECTED[case]
    assert deliver(coord, sign(update(), pki.site_a), sites) is Receipt.ACCEPTED
    before = state(coord)

    frame = sign(make(), pki.site_b)
    signed = decode_signed(frame, sites, now=NOW)  # the signature is fine: the content is not
    assert signed.signer == "site-b"
    with pytest.raises(error, match=message):
        coord.accept(signed.envelope)

    assert state(coord) == before
    assert [r.sender for r in coord.rejections] == ["site-b"]
    assert [r.sender for r in coord.store.rejections(STUDY)] == ["site-b"]
    # The refused site can still send its genuine update, and the round closes normally.
    assert deliver(coord, sign(update("site-b"), pki.site_b), sites) is Receipt.ACCEPTED
    assert coord.close_round().sites == ("site-a", "site-b")
    np.testing.assert_allclose(coord.weights["b"], [0.5 + 1.5, -0.5 - 1.5], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 7. golden: the frame layout is pinned


GOLDEN_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
GOLDEN_CERT = b"0\x82 fixed certificate bytes, not parsed by the codec \x00\xff"
GOLDEN_NOW = 1_700_000_000.0
GOLDEN_SHA256 = "82387a5a3397fc157d00240f976d0b21706e9ccbd2b54fad5983c4297c5bdd03"


@dataclass(frozen=True)
class FixedSigner:
    """A ``MessageSigner`` with a fixed key and certificate blob."""

    name: str = "site-a"
    certificate_der: bytes = GOLDEN_CERT

    def sign(self, data: bytes) -> bytes:
        return GOLDEN_KEY.sign(data)


def golden_envelope() -> Envelope:
    return ModelUpdate(
        Header(
            MessageKind.MODEL_UPDATE,
            "golden-fed",
            "golden-study",
            3,
            "site-a",
            COORDINATOR,
            nonce="0123456789abcdef0123456789abcdef",
        ),
        model_version=2,
        num_examples=17,
        delta={
            "w": (np.arange(6, dtype=F32).reshape(2, 3) / 8).astype(F32),
            "b": np.array([0.5, -0.25], F32),
        },
        metrics={"train_loss": 0.75},
    ).to_envelope()


def golden_verify(signer: str, certificate_der: bytes, data: bytes, signature: bytes) -> None:
    if (signer, certificate_der) != ("site-a", GOLDEN_CERT):
        raise IntegrityError(f"unexpected signer {signer!r}")
    try:
        GOLDEN_KEY.public_key().verify(signature, data)
    except InvalidSignature:
        raise IntegrityError("golden signature does not verify") from None


def test_the_signed_frame_layout_is_stable() -> None:
    """Changing these bytes needs a new format version (and a new constant here)."""
    frame = encode_signed(golden_envelope(), FixedSigner(), ttl_s=900.0, now=GOLDEN_NOW)

    parts = layout(frame)
    assert frame[parts.preamble] == (
        b'{"certificate":"' + base64.b64encode(GOLDEN_CERT) + b'",'
        b'"expires_at":1700000900.0,"issued_at":1700000000.0,"signer":"site-a"}'
    )
    assert frame[:10] == b"GASG\x01\x00" + struct.pack("<I", parts.preamble.stop - 10)
    assert frame[parts.payload] == encode(golden_envelope())
    assert frame[parts.signature] == GOLDEN_KEY.sign(prehash(frame[: parts.signature.start]))
    assert hashlib.sha256(frame).hexdigest() == GOLDEN_SHA256

    signed = decode_signed(frame, golden_verify, now=GOLDEN_NOW + 1)
    assert (signed.signer, signed.issued_at, signed.expires_at) == (
        "site-a",
        GOLDEN_NOW,
        GOLDEN_NOW + 900.0,
    )
    assert_same_envelope(signed.envelope, golden_envelope())
    with pytest.raises(IntegrityError, match="golden signature does not verify"):
        decode_signed(flip(frame, parts.payload.stop - 1, 0x01), golden_verify, now=GOLDEN_NOW)
