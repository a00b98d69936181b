"""Values as the coordinator's stores keep them: arrays as codec bytes, small fields as JSON.

Model weights, strategy state and update deltas are kept by the stores as one blob each: an
:class:`~alliance.protocol.envelope.Envelope` of kind ``model_snapshot`` whose body names the
format and whose arrays are the values, written by :func:`alliance.protocol.codec.encode`.
Reusing the wire codec means one audited reader for every byte the coordinator ever parses (an
allow-list of dtypes, sizes checked, no pickle) and exact round trips: dtype, shape and every
bit of every value come back, NaN payloads included. The header's nonce is fixed, so equal
arrays give equal bytes.

Small structured fields (participants, metrics, round summaries) are kept as canonical JSON text
(sorted keys, finite numbers only). Both stores keep exactly these forms, so
:class:`~alliance.store.memory.MemoryStore` and :class:`~alliance.store.sql.SqlStore` hand back
the same values: a tuple in a summary comes back as a list in either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from alliance.core.errors import ProtocolError, StoreDamaged
from alliance.protocol.codec import decode, encode
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind

__all__ = ["ARRAYS_FORMAT", "dump_json", "load_json", "pack_arrays", "unpack_arrays"]

#: The ``format`` field in the body of every packed blob.
ARRAYS_FORMAT = "alliance.arrays/1"
_HEADER = Header(
    MessageKind.MODEL_SNAPSHOT, "store", "store", 0, COORDINATOR, COORDINATOR, nonce="0" * 32
)


def pack_arrays(arrays: Mapping[str, npt.NDArray[Any]], *, what: str = "arrays") -> bytes:
    """Serialise named arrays to deterministic bytes.

    Parameters
    ----------
    arrays
        Name to array; any numeric dtype the codec allows (``ALLOWED_DTYPES``).
    what
        What the arrays are, for the error message (e.g. ``"update from site-a"``).

    Returns
    -------
    bytes
        A self-describing blob that :func:`unpack_arrays` reads back exactly.

    Raises
    ------
    ProtocolError
        If an array has a dtype the codec cannot carry (object, string, complex ...).
    """
    try:
        return encode(Envelope(_HEADER, {"format": ARRAYS_FORMAT}, dict(arrays)))
    except ProtocolError as exc:
        raise ProtocolError(f"{what}: {exc}") from None


def unpack_arrays(data: bytes, *, what: str = "stored arrays") -> dict[str, npt.NDArray[Any]]:
    """Read back the arrays of a blob written by :func:`pack_arrays` (fresh, writable copies).

    Parameters
    ----------
    data
        The blob.
    what
        What the blob holds, for the error message (e.g. ``"model version 3 of study s1"``).

    Raises
    ------
    StoreDamaged
        If the blob is not one written by :func:`pack_arrays` (a damaged or foreign database).
    """
    try:
        env = decode(bytes(data), max_bytes=max(len(data), 1))
    except ProtocolError as exc:
        raise StoreDamaged(
            f"{what} cannot be read back ({exc}); the store's database is damaged or was "
            "written by another program: restore it from a backup"
        ) from None
    if env.header.kind is not MessageKind.MODEL_SNAPSHOT or env.body.get("format") != (
        ARRAYS_FORMAT
    ):
        raise StoreDamaged(
            f"{what} is not in the {ARRAYS_FORMAT} format (found {env.body.get('format')!r}); "
            "the store's database was written by another program: restore it from a backup"
        )
    return dict(env.arrays)


def dump_json(value: Any, *, what: str) -> str:
    """Canonical JSON text of ``value`` (sorted keys, compact, finite numbers only).

    Raises
    ------
    ProtocolError
        If ``value`` holds something JSON cannot carry (NaN, infinity, bytes, objects).
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(
            f"{what} cannot be stored as JSON ({exc}); use strings, finite numbers, lists and "
            "objects with string keys"
        ) from None


def load_json(text: str, *, what: str = "a stored field") -> Any:
    """Parse JSON text written by :func:`dump_json`.

    Raises
    ------
    StoreDamaged
        If the text is not JSON any more (``what`` names it in the message).
    """
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StoreDamaged(
            f"{what} cannot be read back ({exc}); the store's database is damaged: restore it "
            "from a backup"
        ) from None
