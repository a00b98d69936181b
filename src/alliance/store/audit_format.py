"""The on-disk format of an audit log, shared by its writer and its checker.

What a line holds (:class:`AuditEntry`, fields in :data:`FIELDS` order), how its ``hash`` is
computed (:func:`digest`), where the head file lies and what it holds (:func:`head_path`,
:func:`read_head`), and how the log is opened under ``flock`` and read (:func:`locked`,
:func:`read_from`). :mod:`alliance.store.audit` (the writer) and
:mod:`alliance.store.audit_check` (the checker) both build on it; it is separate so that the
writer can run the checker without the checker importing the writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FIELDS",
    "GENESIS",
    "VALID",
    "AuditEntry",
    "digest",
    "head_path",
    "locked",
    "read_from",
    "read_head",
]

GENESIS = "0" * 64
"""The ``prev`` of the first entry, and the head of an empty log."""

FIELDS = ("seq", "time", "actor", "event", "details", "prev", "hash")
"""The keys of an entry, in the order they are written."""

_HEX = re.compile(r"[0-9a-f]{64}")


def _is_hex(value: Any) -> bool:
    return isinstance(value, str) and _HEX.fullmatch(value) is not None


VALID: dict[str, Callable[[Any], bool]] = {
    "seq": lambda v: type(v) is int and v >= 1,
    **dict.fromkeys(("time", "actor", "event"), lambda v: isinstance(v, str)),
    "details": lambda v: isinstance(v, dict),
    **dict.fromkeys(("prev", "hash"), _is_hex),
}
"""For each field, whether a value read from a line is well-formed."""


@dataclass(frozen=True)
class AuditEntry:
    """One line of an audit log; ``hash`` covers every other field, ``prev`` links the chain."""

    seq: int
    time: str
    actor: str
    event: str
    details: Mapping[str, Any]
    prev: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        """The entry as it is written, keys in file order."""
        return {k: dict(self.details) if k == "details" else getattr(self, k) for k in FIELDS}


def digest(body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``body`` without its ``hash``."""
    obj = {k: v for k, v in body.items() if k != "hash"}
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def head_path(path: Path) -> Path:
    """The head file (``<log>.head``) of the log at ``path``."""
    return path.with_name(path.name + ".head")


def read_head(path: Path) -> tuple[tuple[int, str] | None, str | None]:
    """``((seq, hash), None)``; ``(None, None)`` when missing; ``(None, why)`` if unreadable."""
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"head file {path} cannot be read ({exc})"
    shaped = isinstance(obj, dict) and set(obj) == {"seq", "hash"} and _is_hex(obj["hash"])
    if shaped and type(obj["seq"]) is int and obj["seq"] >= 0:
        return (obj["seq"], obj["hash"]), None
    return None, f'head file {path} is not {{"seq": n, "hash": "<64 hex>"}}'


@contextlib.contextmanager
def locked(path: Path, flags: int, lock: int | None) -> Iterator[int]:
    """An fd on ``path``, holding ``flock(lock)`` unless None; closing releases the lock."""
    fd = os.open(path, flags | os.O_CLOEXEC, 0o640)
    try:
        if lock is not None:
            fcntl.flock(fd, lock)
        yield fd
    finally:
        os.close(fd)


def read_from(fd: int, offset: int) -> bytes:
    """Every byte of ``fd`` from ``offset`` to its end."""
    chunks = []
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
