"""Bytes on the wire: the only module that knows how an :class:`Envelope` is laid out.

Layout (all integers little-endian)::

    b"GALM"                 4 bytes   magic
    u16 format version      2 bytes   (this module writes 1)
    u32 preamble length     4 bytes
    preamble                JSON, UTF-8: {"header": {...}, "body": {...},
                                          "arrays": [{"name", "dtype", "shape"}, ...]}
    array data              each array's raw bytes in preamble order, no padding

Decoding trusts nothing: sizes are checked against the buffer and a caller's limit, dtypes come
from an allow-list (no object arrays, so no pickle can ever be reached), JSON floats must be
finite, and every failure raises :class:`~alliance.core.errors.ProtocolError` saying which part
of which message was wrong. Encoding is deterministic: the same envelope gives the same bytes.

Signed messages (everything that crosses HTTPS or a file bundle) wrap an encoded message::

    b"GASG"                 4 bytes   magic
    u16 format version      2 bytes   (this module writes 1)
    u32 preamble length     4 bytes
    preamble                JSON, UTF-8: {"signer", "certificate" (base64 DER), "issued_at",
                                          "expires_at"} (unix seconds)
    u64 payload length      8 bytes
    payload                 an encoded message (the layout above)
    signature               64 bytes, Ed25519 over b"GASG-SHA256" + sha256(every byte before it)

The signature covers the signer's certificate, the validity window and the whole message, whose
header binds it to its federation, study, round, sender, recipient and nonce. Which keys to
trust is not this module's business: :func:`decode_signed` asks a :class:`SignatureVerifier`
(the consortium's trust store) and only then decodes the payload. Ed25519 signs a domain-separated
SHA-256 digest of the frame rather than the frame itself: Ed25519 hashes its input twice with
SHA-512, which for a 40 MB model update costs four times one SHA-256 pass.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from alliance.core.errors import IntegrityError, ProtocolError
from alliance.protocol.envelope import PROTOCOL_VERSION, Envelope, Header, MessageKind
from alliance.protocol.validity import MAX_CLOCK_SKEW_S as MAX_CLOCK_SKEW_S
from alliance.protocol.validity import check_validity

__all__ = [
    "ALLOWED_DTYPES",
    "DEFAULT_MAX_BYTES",
    "MessageSigner",
    "SignatureVerifier",
    "SignedMessage",
    "content_digest",
    "decode",
    "decode_signed",
    "encode",
    "encode_signed",
]

MAGIC = b"GALM"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<4sHI")
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
ALLOWED_DTYPES: frozenset[str] = frozenset(
    {"<f2", "<f4", "<f8", "<i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "|b1", "|i1"}
)
# numpy's limits; a larger shape in a preamble can only be malformed or hostile.
_MAX_NDIM = 64
_MAX_DIM = 2**63 - 1
_HEADER_FIELDS = ("kind", "federation", "study", "round", "sender", "recipient", "nonce", "version")


def _finite_json(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{where}: non-finite number {value!r} in message body")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite_json(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _finite_json(item, f"{where}[{i}]")


def _parts(envelope: Envelope) -> tuple[bytes, list[memoryview]]:
    """The preamble and a view of each array's little-endian bytes, without copying them."""
    _finite_json(dict(envelope.body), "body")
    specs: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for name in sorted(envelope.arrays):
        # np.ascontiguousarray would turn a 0-d array into 1-d; keep scalar shapes exact.
        arr = np.asarray(envelope.arrays[name])
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        dtype = arr.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise ProtocolError(
                f"array {name!r}: dtype {arr.dtype} cannot be sent; use a numeric dtype"
            )
        specs.append({"name": name, "dtype": dtype, "shape": list(arr.shape)})
        blobs.append(arr.reshape(-1).view(np.uint8).data)
    preamble = json.dumps(
        {"header": envelope.header.to_json(), "body": envelope.body, "arrays": specs},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")
    return preamble, blobs


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope to bytes (deterministic for equal inputs)."""
    preamble, blobs = _parts(envelope)
    return b"".join([_FIXED.pack(MAGIC, FORMAT_VERSION, len(preamble)), preamble, *blobs])


def content_digest(envelope: Envelope) -> str:
    """sha256 (hex) of a message's body and arrays, whatever its header and nonce.

    Two sends of the same update (a retry after a lost answer, or the same training redone
    after a crash) have the same digest, so the coordinator can count it once.
    """
    header = Header(MessageKind.MODEL_SNAPSHOT, "-", "-", 0, "-", "-", nonce="-")
    preamble, blobs = _parts(Envelope(header, envelope.body, envelope.arrays))
    digest = hashlib.sha256(_FIXED.pack(MAGIC, FORMAT_VERSION, len(preamble)) + preamble)
    for blob in blobs:
        digest.update(blob)
    return digest.hexdigest()


def _parse_header(raw: Any) -> Header:
    if not isinstance(raw, dict) or set(raw) != set(_HEADER_FIELDS):
        raise ProtocolError(
            f"message header must have exactly the fields {', '.join(_HEADER_FIELDS)}"
        )
    try:
        kind = MessageKind(raw["kind"])
    except ValueError:
        raise ProtocolError(f"unknown message kind {raw['kind']!r}") from None
    if type(raw["version"]) is not int or raw["version"] != PROTOCOL_VERSION:
        raise ProtocolError(
            f"message written with protocol version {raw['version']!r}, this build reads "
            f"{PROTOCOL_VERSION}; upgrade the older side"
        )
    for key in ("federation", "study", "sender", "recipient", "nonce"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise ProtocolError(f"message header field {key!r} must be a non-empty string")
    if not isinstance(raw["round"], int) or isinstance(raw["round"], bool) or raw["round"] < 0:
        raise ProtocolError(
            f"message header field 'round' must be an integer >= 0, got {raw['round']!r}"
        )
    return Header(
        kind=kind,
        federation=raw["federation"],
        study=raw["study"],
        round=raw["round"],
        sender=raw["sender"],
        recipient=raw["recipient"],
        nonce=raw["nonce"],
    )


def _read_arrays(data: memoryview, offset: int, specs: Any) -> dict[str, npt.NDArray[Any]]:
    if not isinstance(specs, list):
        raise ProtocolError("message 'arrays' must be a list")
    arrays: dict[str, npt.NDArray[Any]] = {}
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
            raise ProtocolError(f"array spec #{i} must have exactly name, dtype and shape")
        name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
        if not isinstance(name, str) or name in arrays:
            raise ProtocolError(f"array spec #{i}: missing or duplicate name {name!r}")
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {dtype!r} is not allowed")
        # type() rather than isinstance(): JSON true/false must not pass as a dimension.
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise ProtocolError(f"array {name!r}: shape must be a list of non-negative integers")
        if len(shape) > _MAX_NDIM or any(s > _MAX_DIM for s in shape):
            raise ProtocolError(
                f"array {name!r}: shape {shape} is larger than any array numpy can hold"
            )
        count = math.prod(shape)
        nbytes = count * np.dtype(dtype).itemsize
        if offset + nbytes > len(data):
            raise ProtocolError(
                f"array {name!r}: message truncated ({len(data)} bytes, need {offset + nbytes})"
            )
        try:
            arr = np.frombuffer(data[offset : offset + nbytes], dtype=dtype, count=count).reshape(
                shape
            )
        except ValueError as exc:  # e.g. a zero-length dim beside dims whose product overflows
            raise ProtocolError(f"array {name!r}: shape {shape} cannot be built: {exc}") from None
        arrays[name] = arr.copy()
        offset += nbytes
    if offset != len(data):
        raise ProtocolError(f"message has {len(data) - offset} trailing bytes after its arrays")
    return arrays


def decode(data: bytes | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
    """Parse bytes into an :class:`Envelope`, validating every size, type and field.

    Raises
    ------
    ProtocolError
        If the bytes are not a message of this format, are larger than ``max_bytes``, are
        truncated, or carry a disallowed dtype or a malformed header.
    """
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    if len(data) < _FIXED.size:
        raise ProtocolError(
            f"message of {len(data)} bytes is too short to be a Guardian Alliance message"
        )
    magic, fmt, plen = _FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise ProtocolError("not a Guardian Alliance message (bad magic bytes)")
    if fmt != FORMAT_VERSION:
        raise ProtocolError(
            f"message format version {fmt} is not supported (this build reads {FORMAT_VERSION})"
        )
    if _FIXED.size + plen > len(data):
        raise ProtocolError("message truncated inside its preamble")
    try:
        preamble = json.loads(bytes(data[_FIXED.size : _FIXED.size + plen]).decode("utf-8"))
        if not isinstance(preamble, dict) or set(preamble) != {"header", "body", "arrays"}:
            raise ProtocolError("message preamble must have exactly header, body and arrays")
        if not isinstance(preamble["body"], dict):
            raise ProtocolError("message body must be a JSON object")
        _finite_json(preamble["body"], "body")
    # ValueError covers JSONDecodeError and integers past Python's digit limit; RecursionError,
    # JSON nested deeper than the interpreter can follow.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"message preamble is not valid UTF-8 JSON: {exc}") from None
    header = _parse_header(preamble["header"])
    arrays = _read_arrays(memoryview(data), _FIXED.size + plen, preamble["arrays"])
    return Envelope(header=header, body=preamble["body"], arrays=arrays)


# --- signed messages ------------------------------------------------------------------------

SIGNED_MAGIC = b"GASG"
SIGNATURE_BYTES = 64
_LEN64 = struct.Struct("<Q")
_PREHASH_DOMAIN = b"GASG-SHA256"


class MessageSigner(Protocol):
    """A party that signs what it sends: its name, its certificate and its Ed25519 key."""

    @property
    def name(self) -> str:
        """The party's name (a site id or ``"coordinator"``)."""
        ...

    @property
    def certificate_der(self) -> bytes:
        """The party's certificate, DER-encoded."""
        ...

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``data``."""
        ...


class SignatureVerifier(Protocol):
    """Checks a signer's certificate against the consortium and the signature against it."""

    def __call__(self, signer: str, certificate_der: bytes, data: bytes, signature: bytes) -> None:
        """Return if ``signature`` over ``data`` is the signer's, else raise ``IntegrityError``."""
        ...


@dataclass(frozen=True)
class SignedMessage:
    """A verified message and its signing facts."""

    envelope: Envelope
    signer: str
    issued_at: float
    expires_at: float


def encode_signed(
    envelope: Envelope, signer: MessageSigner, *, ttl_s: float = 3600.0, now: float | None = None
) -> bytes:
    """Encode ``envelope`` and sign it, valid for ``ttl_s`` seconds from ``now``.

    Raises
    ------
    ProtocolError
        If the header's sender is not the signer.
    """
    if envelope.header.sender != signer.name:
        raise ProtocolError(
            f"{signer.name!r} cannot sign a message whose sender is {envelope.header.sender!r}"
        )
    issued = time.time() if now is None else now
    preamble = json.dumps(
        {
            "signer": signer.name,
            "certificate": base64.b64encode(signer.certificate_der).decode("ascii"),
            "issued_at": issued,
            "expires_at": issued + ttl_s,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")
    # The payload's parts are hashed and joined in place: one copy of the arrays, not three.
    inner, blobs = _parts(envelope)
    payload_len = _FIXED.size + len(inner) + sum(b.nbytes for b in blobs)
    parts: list[bytes | memoryview] = [
        _FIXED.pack(SIGNED_MAGIC, FORMAT_VERSION, len(preamble)),
        preamble,
        _LEN64.pack(payload_len),
        _FIXED.pack(MAGIC, FORMAT_VERSION, len(inner)),
        inner,
        *blobs,
    ]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    signature = signer.sign(_PREHASH_DOMAIN + digest.digest())
    return b"".join([*parts, signature])


def _prehash(signed: bytes | memoryview) -> bytes:
    """What Ed25519 signs: the frame's SHA-256 digest, in a domain of its own."""
    return _PREHASH_DOMAIN + hashlib.sha256(signed).digest()


def _signed_preamble(raw: bytes) -> tuple[str, bytes, float, float]:
    try:
        pre = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"signed message preamble is not valid UTF-8 JSON: {exc}") from None
    fields = {"signer", "certificate", "issued_at", "expires_at"}
    if not isinstance(pre, dict) or set(pre) != fields:
        raise ProtocolError(f"signed message preamble must have exactly {sorted(fields)}")
    signer, cert = pre["signer"], pre["certificate"]
    if not isinstance(signer, str) or not signer or not isinstance(cert, str):
        raise ProtocolError("signed message preamble: signer and certificate must be strings")
    times = (pre["issued_at"], pre["expires_at"])
    if not all(_is_time(t) for t in times):
        raise ProtocolError("signed message preamble: issued_at and expires_at must be numbers")
    try:
        der = base64.b64decode(cert, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("signed message preamble: certificate is not base64") from None
    return signer, der, float(times[0]), float(times[1])


def _is_time(value: object) -> bool:
    """A finite number of seconds; an integer too large for a float is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def decode_signed(
    data: bytes,
    verify: SignatureVerifier,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    now: float | None = None,
    here: str | None = None,
) -> SignedMessage:
    """Check a signed message's frame, signature, validity window and sender, then decode it.

    Parameters
    ----------
    here
        Who receives, in words (``"this hospital"``, ``"the coordinator"``), when the sender
        signed the message for this very delivery, as over HTTPS: a message that arrives
        expired then means the clocks disagree, and the error says by how much and whose
        clock is ahead instead of blaming the sender.

    Raises
    ------
    ProtocolError
        Malformed or oversized frame, expired or not yet valid, or a payload that does not decode.
    IntegrityError
        The certificate or signature does not verify, or the header's sender is not the signer.
    """
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    if len(data) < _FIXED.size + _LEN64.size + SIGNATURE_BYTES:
        raise ProtocolError(f"signed message of {len(data)} bytes is too short")
    magic, fmt, plen = _FIXED.unpack_from(data, 0)
    if magic != SIGNED_MAGIC:
        raise ProtocolError("not a signed Guardian Alliance message (bad magic bytes)")
    if fmt != FORMAT_VERSION:
        raise ProtocolError(
            f"signed message format version {fmt} is not supported (this build reads "
            f"{FORMAT_VERSION})"
        )
    body_start = _FIXED.size + plen + _LEN64.size
    if body_start > len(data) - SIGNATURE_BYTES:
        raise ProtocolError("signed message truncated inside its preamble")
    (payload_len,) = _LEN64.unpack_from(data, _FIXED.size + plen)
    if body_start + payload_len + SIGNATURE_BYTES != len(data):
        raise ProtocolError(
            f"signed message length {len(data)} does not match its payload length {payload_len}"
        )
    signer, der, issued, expires = _signed_preamble(bytes(data[_FIXED.size : _FIXED.size + plen]))
    view = memoryview(data)
    signed_part = view[: len(data) - SIGNATURE_BYTES]
    verify(signer, der, _prehash(signed_part), bytes(view[len(data) - SIGNATURE_BYTES :]))
    clock = time.time() if now is None else now
    check_validity(signer, issued=issued, expires=expires, clock=clock, here=here)
    envelope = decode(signed_part[body_start:], max_bytes=max_bytes)
    if envelope.header.sender != signer:
        raise IntegrityError(
            f"message signed by {signer!r} claims to be from {envelope.header.sender!r}"
        )
    return SignedMessage(envelope, signer, issued, expires)
