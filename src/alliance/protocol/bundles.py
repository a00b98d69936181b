"""Sealed bundles: one signed protocol message in a file, for sites that have no network.

A hospital that allows no connection exchanges protocol messages as files carried by USB key
or pushed through a data diode. A bundle is one signed message (the ``GASG`` frame of
:func:`alliance.protocol.codec.encode_signed`) encrypted to its recipient, with a routing
header and the sender's signature around it. Layout (all integers little-endian)::

    b"GABN"                 4 bytes   magic
    u16 format version      2 bytes   (this module writes 1)
    u32 header length       4 bytes   (at most MAX_HEADER_BYTES)
    header                  JSON, UTF-8, canonical (sorted keys, no spaces):
                            {"federation", "study", "round", "stage", "sender",
                             "recipient", "nonce", "created_at", "expires_at" (unix
                             seconds), "certificate" (the sender's, base64 DER)}
    u64 ciphertext length   8 bytes
    ciphertext              libsodium sealed box to the recipient of the signed message
    signature               64 bytes, Ed25519 by the sender over
                            b"GABN-SHA256" + sha256(every byte before it)

``stage`` is the inner message's kind (``MessageKind`` value), or for secure aggregation the
stage named in its body; ``nonce`` is the inner header's nonce. Every header field is copied
from the sealed message by :func:`seal_bundle`, and :func:`open_bundle` refuses a bundle whose
header disagrees with what it seals.

What is authenticated: everything. The outer signature covers the header (the sender's
certificate included) and the ciphertext, and can be checked with the consortium trust store
*before* decrypting, so a forged, altered or foreign file costs one signature check. The
sealed message is signed again, by the same sender, inside.

What is secret: the message (body, arrays and its own header) is readable only with the
recipient's key. The outer header and the size are not: whoever handles the file learns who
sends what kind of message to whom, for which round, when, and how large it is.

Keys. The box is sealed to the X25519 key converted from the recipient's Ed25519 signing key,
the one its certificate binds (``crypto_sign_ed25519_pk_to_curve25519``; the private side with
``crypto_sign_ed25519_sk_to_curve25519``). libsodium provides these conversions so that one
key pair serves both ``crypto_sign`` and ``crypto_box``; the joint use of one key for Ed25519
and X25519 has been analysed (Thormarker, IACR ePrint 2021/509), though distinct keys remain
the conservative choice. We take it because the signing key is already certified, revoked and
distributed with the consortium's bundles: encryption needs no new provisioning, and a revoked
certificate stops both signing and receiving.

Threat model. The courier (USB keys, shared folders, the diode, the people carrying them) is
untrusted: it may read, copy, drop, reorder, truncate, alter, replay or swap files. Other
consortium members hold valid certificates and may be malicious. Sealed boxes are anonymous,
so one such member could strip a bundle's signature and sign the ciphertext under its own
name; the inner signature stops this, as the sealed message must be signed by the outer
sender. A recipient cannot pass a message sealed to it on to a third party in a new bundle,
since the inner header names the original recipient. Not covered: a stolen recipient key
opens every bundle ever sealed to it (there is no forward secrecy, and revocation does not
undo that); traffic analysis from the outer header and sizes; dropped files.

What the caller must still do: :func:`open_bundle` is stateless, so a bundle stays valid for
its whole lifetime (14 days by default) and can be presented again. The receiver must keep a
replay registry keyed by ``(sender, nonce)`` (the nonce travels in clear, so a member who sees
another's file could otherwise spend its nonce first), check round, study and stage against
its own state, pass a verifier that admits only the roles it expects (a site: the
coordinator), and change state only once all its own checks pass. The sender must take the
recipient's key from a certificate its trust store has verified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from nacl.bindings import (
    crypto_box_SEALBYTES,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from alliance.core.errors import ConfigError, IntegrityError, ProtocolError
from alliance.core.files import write_atomically
from alliance.protocol.codec import (
    DEFAULT_MAX_BYTES,
    MAX_CLOCK_SKEW_S,
    MessageSigner,
    SignatureVerifier,
    SignedMessage,
    decode_signed,
    encode_signed,
)
from alliance.protocol.envelope import Envelope, MessageKind

__all__ = [
    "BUNDLE_SUFFIX",
    "DEFAULT_MAX_BUNDLE_BYTES",
    "DEFAULT_TTL_S",
    "MAX_HEADER_BYTES",
    "BundleHeader",
    "OpenedBundle",
    "bundle_name",
    "open_bundle",
    "peek_header",
    "seal_bundle",
    "write_bundle",
]

MAGIC = b"GABN"
FORMAT_VERSION = 1
SIGNATURE_BYTES = 64
#: A header is a few names and one certificate (about 1 kB); anything far larger is hostile.
MAX_HEADER_BYTES = 64 * 1024
#: How long a bundle stays valid by default: files may spend days on the way.
DEFAULT_TTL_S = 14 * 86400.0
BUNDLE_SUFFIX = ".gabn"

_PREHASH_DOMAIN = b"GABN-SHA256"
_FIXED_SIZE = 10  # magic, version, header length
_LEN64_SIZE = 8
_MIN_SIZE = _FIXED_SIZE + _LEN64_SIZE + SIGNATURE_BYTES
#: The default limit of :func:`open_bundle`: any message the codec accepts by default, sealed.
DEFAULT_MAX_BUNDLE_BYTES = DEFAULT_MAX_BYTES + MAX_HEADER_BYTES + _MIN_SIZE + crypto_box_SEALBYTES
_TEXT_FIELDS = ("federation", "study", "stage", "sender", "recipient", "nonce", "certificate")
_FIELDS = frozenset((*_TEXT_FIELDS, "round", "created_at", "expires_at"))
_MAX_ROUND = 2**63 - 1
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_WINDOWS_RESERVED = re.compile(r"(?i)(con|prn|aux|nul|com[0-9]|lpt[0-9])")


@dataclass(frozen=True)
class BundleHeader:
    """A bundle's routing header (see the module docstring for each field)."""

    federation: str
    study: str
    round: int
    stage: str
    sender: str
    recipient: str
    nonce: str
    created_at: float
    expires_at: float
    certificate_der: bytes

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, as written in the bundle."""
        return {
            "federation": self.federation,
            "study": self.study,
            "round": self.round,
            "stage": self.stage,
            "sender": self.sender,
            "recipient": self.recipient,
            "nonce": self.nonce,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "certificate": base64.b64encode(self.certificate_der).decode("ascii"),
        }


@dataclass(frozen=True)
class OpenedBundle:
    """A bundle that passed every check of :func:`open_bundle`.

    Parameters
    ----------
    header
        Its outer header (equal to the sealed message's on every shared field).
    message
        The sealed signed message, verified and decoded.
    digest
        SHA-256 of the whole bundle file, lowercase hex, for audit logs.
    """

    header: BundleHeader
    message: SignedMessage
    digest: str

    @property
    def envelope(self) -> Envelope:
        """The sealed protocol message."""
        return self.message.envelope


def _stage_of(envelope: Envelope) -> str:
    if envelope.header.kind is MessageKind.SECAGG:
        stage = envelope.body.get("stage")
        if isinstance(stage, str) and stage:
            return stage
    return envelope.header.kind.value


def _header_bytes(header: BundleHeader) -> bytes:
    return json.dumps(
        header.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def _x25519_public(key: ed25519.Ed25519PublicKey) -> PublicKey:
    try:
        return PublicKey(crypto_sign_ed25519_pk_to_curve25519(key.public_bytes_raw()))
    except CryptoError:
        raise IntegrityError(
            "the recipient's signing key cannot be used for encryption (not a valid Ed25519 "
            "point); check the recipient's certificate"
        ) from None


def _x25519_private(key: ed25519.Ed25519PrivateKey) -> PrivateKey:
    # libsodium's secret-key form is seed || public key; the conversion reads the seed.
    seed_and_public = key.private_bytes_raw() + key.public_key().public_bytes_raw()
    return PrivateKey(crypto_sign_ed25519_sk_to_curve25519(seed_and_public))


def seal_bundle(
    envelope: Envelope,
    *,
    signer: MessageSigner,
    recipient_key: ed25519.Ed25519PublicKey,
    ttl_s: float = DEFAULT_TTL_S,
    now: float | None = None,
) -> bytes:
    """Sign ``envelope``, seal it to its recipient and sign the result: a bundle's bytes.

    Parameters
    ----------
    envelope
        The message; its header's sender must be ``signer``.
    signer
        The sending party (a :class:`alliance.crypto.Signer`).
    recipient_key
        The Ed25519 signing key bound by the recipient's certificate, which the caller has
        verified with its trust store (``TrustStore.verify(...).signing_key``).
    ttl_s
        How long the bundle and the message inside stay valid, in seconds.
    now
        Creation time, unix seconds (default: the clock).

    Raises
    ------
    ProtocolError
        The envelope's sender is not the signer, or the message cannot be encoded.
    ConfigError
        ``ttl_s`` is not a positive number, or ``now`` is not a finite time.
    """
    if envelope.header.sender != signer.name:
        raise ProtocolError(
            f"{signer.name!r} cannot seal a message whose sender is {envelope.header.sender!r}"
        )
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ConfigError(f"bundle lifetime ttl_s must be a positive number of seconds: {ttl_s}")
    created = time.time() if now is None else float(now)
    if not math.isfinite(created + ttl_s):
        raise ConfigError(f"bundle creation time must be a finite unix time: {created}")
    box = SealedBox(_x25519_public(recipient_key))
    inner = encode_signed(envelope, signer, ttl_s=ttl_s, now=created)
    h = envelope.header
    header = _header_bytes(
        BundleHeader(
            federation=h.federation,
            study=h.study,
            round=h.round,
            stage=_stage_of(envelope),
            sender=h.sender,
            recipient=h.recipient,
            nonce=h.nonce,
            created_at=created,
            expires_at=created + ttl_s,  # the very sum encode_signed computes
            certificate_der=signer.certificate_der,
        )
    )
    ciphertext = box.encrypt(inner)
    del inner
    parts = [
        MAGIC + FORMAT_VERSION.to_bytes(2, "little") + len(header).to_bytes(4, "little"),
        header,
        len(ciphertext).to_bytes(8, "little"),
        ciphertext,
    ]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return b"".join([*parts, signer.sign(_PREHASH_DOMAIN + digest.digest())])


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ProtocolError("bundle header repeats a field")
    return dict(pairs)


def _parse_header(raw: bytes) -> BundleHeader:
    try:
        fields = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise ProtocolError("bundle header is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"bundle header is not valid JSON ({exc.msg} at {exc.pos})") from None
    except (ValueError, RecursionError):  # integers past Python's digit limit, deep nesting
        raise ProtocolError("bundle header is not valid JSON") from None
    if not isinstance(fields, dict):
        raise ProtocolError("bundle header must be a JSON object")
    if set(fields) != _FIELDS:
        missing, extra = sorted(_FIELDS - set(fields)), sorted(set(fields) - _FIELDS)
        raise ProtocolError(
            f"bundle header must have exactly the fields {', '.join(sorted(_FIELDS))}; "
            f"missing {missing}, unexpected {[name[:40] for name in extra]}"
        )
    for name in _TEXT_FIELDS:
        if not isinstance(fields[name], str) or not fields[name]:
            raise ProtocolError(f"bundle header field {name!r} must be a non-empty string")
    if type(fields["round"]) is not int or not 0 <= fields["round"] <= _MAX_ROUND:
        raise ProtocolError(f"bundle header field 'round' must be an integer in 0..{_MAX_ROUND}")
    times: dict[str, float] = {}
    for name in ("created_at", "expires_at"):
        try:  # float() of an integer with 400 digits overflows
            value = float(fields[name]) if type(fields[name]) in (int, float) else math.nan
        except OverflowError:
            value = math.nan
        if not math.isfinite(value):
            raise ProtocolError(f"bundle header field {name!r} must be a finite number")
        times[name] = value
    try:
        der = base64.b64decode(fields["certificate"], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bundle header field 'certificate' is not base64") from None
    return BundleHeader(
        federation=fields["federation"],
        study=fields["study"],
        round=fields["round"],
        stage=fields["stage"],
        sender=fields["sender"],
        recipient=fields["recipient"],
        nonce=fields["nonce"],
        created_at=times["created_at"],
        expires_at=times["expires_at"],
        certificate_der=der,
    )


def _split(data: bytes | memoryview, max_bytes: int) -> tuple[BundleHeader, memoryview]:
    """Check the frame's sizes and header; return the header and a view of the ciphertext."""
    size = len(data)
    if size > max_bytes:
        raise ProtocolError(f"bundle of {size} bytes exceeds the limit of {max_bytes} bytes")
    if size < _MIN_SIZE:
        raise ProtocolError(f"bundle of {size} bytes is too short to be a Guardian Alliance bundle")
    view = memoryview(data)
    if view[:4] != MAGIC:
        raise ProtocolError("not a Guardian Alliance bundle (bad magic bytes)")
    version = int.from_bytes(view[4:6], "little")
    if version != FORMAT_VERSION:
        raise ProtocolError(
            f"bundle format version {version} is not supported (this build reads "
            f"{FORMAT_VERSION}); upgrade the older side"
        )
    header_len = int.from_bytes(view[6:10], "little")
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError(
            f"bundle header of {header_len} bytes exceeds the limit of {MAX_HEADER_BYTES} bytes"
        )
    start = _FIXED_SIZE + header_len + _LEN64_SIZE
    if start + SIGNATURE_BYTES > size:
        raise ProtocolError(f"bundle truncated inside its header ({size} bytes)")
    ciphertext_len = int.from_bytes(view[start - _LEN64_SIZE : start], "little")
    expected = start + ciphertext_len + SIGNATURE_BYTES
    if expected > size:
        raise ProtocolError(f"bundle truncated: {size} bytes, its lengths say {expected}")
    if expected < size:
        raise ProtocolError(f"bundle has {size - expected} trailing bytes after its signature")
    if ciphertext_len <= crypto_box_SEALBYTES:
        raise ProtocolError(f"bundle ciphertext of {ciphertext_len} bytes is too short")
    raw = bytes(view[_FIXED_SIZE : _FIXED_SIZE + header_len])
    header = _parse_header(raw)
    # One header, one encoding: no spaces, escapes or reordering a signer could vary.
    if _header_bytes(header) != raw:
        raise ProtocolError("bundle header is not in canonical form (sorted keys, no spaces)")
    return header, view[start : start + ciphertext_len]


def peek_header(data: bytes, *, max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> BundleHeader:
    """A bundle's header after the frame checks, *without* checking its signature.

    For naming and sorting files only (:func:`bundle_name`); act on a bundle only after
    :func:`open_bundle`.

    Raises
    ------
    ProtocolError
        The frame or header is malformed, truncated or oversized.
    """
    return _split(data, max_bytes)[0]


def _check_binding(header: BundleHeader, signed: SignedMessage) -> None:
    if signed.signer != header.sender:
        raise IntegrityError(
            f"bundle from {header.sender!r} seals a message signed by {signed.signer!r}; "
            "it was re-signed by another party: discard it"
        )
    inner = signed.envelope.header
    pairs = {
        "federation": (header.federation, inner.federation),
        "study": (header.study, inner.study),
        "round": (header.round, inner.round),
        "stage": (header.stage, _stage_of(signed.envelope)),
        "recipient": (header.recipient, inner.recipient),
        "nonce": (header.nonce, inner.nonce),
        "created_at": (header.created_at, signed.issued_at),
        "expires_at": (header.expires_at, signed.expires_at),
    }
    wrong = [name for name, (outer, sealed) in pairs.items() if outer != sealed]
    if wrong:
        raise IntegrityError(
            f"bundle from {header.sender!r}: its header disagrees with the sealed message on "
            f"{', '.join(wrong)}; it was re-signed or spliced: discard it"
        )


def open_bundle(
    data: bytes,
    *,
    verify: SignatureVerifier,
    recipient: str,
    recipient_key: ed25519.Ed25519PrivateKey,
    federation: str,
    now: float | None = None,
    max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
) -> OpenedBundle:
    """Check, decrypt and verify a bundle addressed to ``recipient``.

    Checks, in order: size, magic, version, lengths, header fields, federation, recipient,
    validity window, the outer signature (with ``verify``, on the header's certificate),
    decryption, the sealed message (:func:`~alliance.protocol.codec.decode_signed`) and its
    agreement with the header. See the module docstring for what the caller must still do.

    Parameters
    ----------
    data
        The bundle file's bytes.
    verify
        The trust store's check of a signer (a :class:`~alliance.crypto.verifier.MessageVerifier`).
    recipient
        This party's name; ``recipient_key`` its Ed25519 signing key.
    federation
        This party's federation.
    now
        The receiver's clock, unix seconds (default: the clock).
    max_bytes
        The largest bundle accepted (the sealed message is held to it too).

    Raises
    ------
    ProtocolError
        Malformed, oversized, truncated, of another version, federation or recipient, expired
        or dated in the future, or a sealed message that does not decode.
    IntegrityError
        The certificate or a signature does not verify, the box does not open with this key,
        or the header disagrees with the sealed message.
    """
    header, ciphertext = _split(data, max_bytes)
    clock = time.time() if now is None else now
    _check_address(header, federation=federation, recipient=recipient, clock=clock)
    hashed = hashlib.sha256(memoryview(data)[:-SIGNATURE_BYTES])
    prehash = _PREHASH_DOMAIN + hashed.digest()
    signature = bytes(memoryview(data)[-SIGNATURE_BYTES:])
    try:
        verify(header.sender, header.certificate_der, prehash, signature)
    except IntegrityError as exc:
        raise IntegrityError(f"bundle from {header.sender!r}: {exc}") from None
    hashed.update(signature)
    signed = _unseal(bytes(ciphertext), header, recipient_key, verify, max_bytes, clock)
    _check_binding(header, signed)
    return OpenedBundle(header=header, message=signed, digest=hashed.hexdigest())


def _check_address(header: BundleHeader, *, federation: str, recipient: str, clock: float) -> None:
    sender = header.sender
    if header.federation != federation:
        raise ProtocolError(
            f"bundle from {sender!r} belongs to federation {header.federation!r}, this is "
            f"{federation!r}"
        )
    if header.recipient != recipient:
        raise ProtocolError(
            f"bundle from {sender!r} is addressed to {header.recipient!r}, not {recipient!r}; "
            "deliver it to its recipient"
        )
    if clock > header.expires_at:
        raise ProtocolError(
            f"bundle from {sender!r} expired {clock - header.expires_at:.0f} s ago; ask the "
            "sender for a fresh one"
        )
    if header.created_at > clock + MAX_CLOCK_SKEW_S:
        raise ProtocolError(
            f"bundle from {sender!r} is dated {header.created_at - clock:.0f} s in the future; "
            "check the clocks of both machines"
        )


def _unseal(
    ciphertext: bytes,
    header: BundleHeader,
    key: ed25519.Ed25519PrivateKey,
    verify: SignatureVerifier,
    max_bytes: int,
    clock: float,
) -> SignedMessage:
    """Decrypt the box and verify and decode the signed message inside."""
    try:
        plaintext = SealedBox(_x25519_private(key)).decrypt(ciphertext)
    except CryptoError:
        raise IntegrityError(
            f"bundle from {header.sender!r} does not open: it was not sealed to the key of "
            f"{header.recipient!r} or is corrupted"
        ) from None
    where = f"bundle from {header.sender!r}: sealed message refused"
    try:
        return decode_signed(plaintext, verify, max_bytes=max_bytes, now=clock)
    except ProtocolError as exc:
        raise type(exc)(f"{where}: {exc}") from None


def _name_part(text: str, limit: int = 32) -> str:
    return _UNSAFE.sub("_", text)[:limit] or "_"


def bundle_name(header: BundleHeader) -> str:
    """A file name for a bundle, safe on Windows and FAT: only ``[A-Za-z0-9._-]``.

    ``{federation}.{study}.r{round:04d}.{stage}.{sender}-to-{recipient}.{nonce[:12]}.gabn``,
    each part with other characters replaced by ``_`` and cut to 32 characters (the whole name
    stays under FAT's 255). Distinct bundles of one pair and round differ by nonce.
    """
    first = _name_part(header.federation)
    if _WINDOWS_RESERVED.fullmatch(first) or first.startswith("-"):
        first = "_" + first  # "CON.anything" is a device on Windows; "-x" reads as an option
    parts = [
        first,
        _name_part(header.study),
        f"r{header.round:04d}",
        _name_part(header.stage),
        f"{_name_part(header.sender)}-to-{_name_part(header.recipient)}",
        _name_part(header.nonce, 12),
    ]
    return ".".join(parts) + BUNDLE_SUFFIX


def write_bundle(path: str | Path, data: bytes) -> None:
    """Write a bundle's bytes to ``path`` atomically (readers never see half a file).

    Raises
    ------
    ProtocolError
        ``data`` is not a bundle (bad magic bytes).
    """
    if data[:4] != MAGIC:
        raise ProtocolError("refusing to write bytes that are not a Guardian Alliance bundle")
    write_atomically(path, data)
