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
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from alliance.core.errors import ProtocolError
from alliance.protocol.envelope import PROTOCOL_VERSION, Envelope, Header, MessageKind

__all__ = ["ALLOWED_DTYPES", "DEFAULT_MAX_BYTES", "decode", "encode"]

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


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope to bytes (deterministic for equal inputs)."""
    _finite_json(dict(envelope.body), "body")
    specs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
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
        blobs.append(arr.tobytes())
    preamble = json.dumps(
        {"header": envelope.header.to_json(), "body": envelope.body, "arrays": specs},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")
    return b"".join([_FIXED.pack(MAGIC, FORMAT_VERSION, len(preamble)), preamble, *blobs])


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


def decode(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
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
