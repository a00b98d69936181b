"""A hash-chained, append-only audit log that a hospital's privacy officer can check.

Each party keeps one JSON-lines file, one entry a line (``seq, time, actor, event, details,
prev, hash``). ``hash`` is the SHA-256 of the entry's canonical JSON without ``hash`` and
``prev`` the hash of the entry before (64 zeros first), so editing, deleting, reordering or
inserting a line breaks the chain there. A chain cannot reveal lines cut from its *end*, so the
anchor ``<log>.head`` (``{"seq": n, "hash": ...}``) is replaced atomically after every append.

Writers hold a :class:`threading.Lock` and an exclusive ``fcntl.flock``, fsync the line, then
move the head; readers take a shared lock, so they never see a log and a head that do not
belong together. A log is verified when opened and a writer checks what other processes added
before it appends: nobody writes on after tampering. Two states are crashes, repaired with an
``audit_recovered`` entry: a torn last line (no newline) while the head names the entry before
it, and a complete last line whose head update was lost. Anything else raises IntegrityError.
A write the disk refuses (full, or over a file-size limit) is cut back at once and raised as
a retryable ``TransportError``, so that log and head still agree and the log stays verifiable.
:func:`verify_audit_log` never raises on tampering; it lists every problem by line number, in
words meant for a privacy officer (line 0: the head file).

This module is the writer (:class:`AuditLog`). The line and head-file format is in
:mod:`alliance.store.audit_format`, the checks and :func:`verify_audit_log` in
:mod:`alliance.store.audit_check`; both are re-exported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alliance.core.errors import ConfigError, IntegrityError, TransportError
from alliance.core.files import write_atomically
from alliance.store.audit_check import (
    AuditProblem,
    AuditReport,
    analyse,
    read_audit_log,
    scan,
    verify_audit_log,
)
from alliance.store.audit_format import (
    FIELDS,
    GENESIS,
    AuditEntry,
    digest,
    head_path,
    locked,
    read_from,
    read_head,
)

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditLog",
    "AuditProblem",
    "AuditReport",
    "read_audit_log",
    "verify_audit_log",
]

logger = logging.getLogger(__name__)

_APPEND = os.O_RDWR | os.O_APPEND
_EVENT = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_ACTOR = re.compile(r"[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]{0,126}(?<!\s)")


class AuditLog:
    """An append-only audit log at ``path``, written as ``actor``; verified when opened.

    Parameters
    ----------
    path
        The JSON-lines log, created with its folders when missing; its anchor is
        ``<path>.head``.
    actor
        Who writes: ``"coordinator"`` or a site id; 1 to 128 printable characters.

    Raises
    ------
    IntegrityError
        The log or its head file was altered; the message names the first bad line.
    ConfigError
        ``actor`` is invalid, or the log or its folder cannot be created or opened.
    """

    def __init__(self, path: Path, *, actor: str) -> None:
        if not isinstance(actor, str) or not _ACTOR.fullmatch(actor):
            raise ConfigError(
                f"audit log {path}: actor {actor!r} is invalid; use 1 to 128 printable "
                "characters without surrounding spaces, such as 'coordinator' or a site id"
            )
        self.path, self.actor, self._head_path = Path(path), actor, head_path(Path(path))
        self._lock = threading.Lock()
        self._size, self._lines, self._seq, self._hash = 0, 0, 0, GENESIS
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, locked(self.path, _APPEND | os.O_CREAT, fcntl.LOCK_EX) as fd:
                self._sync(fd, opening=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot open audit log {path} ({exc.strerror}): choose a writable state folder"
            ) from None

    @property
    def head(self) -> str:
        """Hash of the last entry this object wrote or checked (:data:`GENESIS` when empty)."""
        return self._hash

    def append(self, event: str, /, **details: Any) -> AuditEntry:
        """Append one entry, fsync it and move the head file; safe across threads and processes.

        Parameters
        ----------
        event
            Lower-case name such as ``"study_submitted"`` (letters, digits, ``_ . -``).
        **details
            JSON values only: str, int, finite float, bool, None, lists, str-keyed dicts.

        Raises
        ------
        ConfigError
            The event name or a detail is not valid (NaN, bytes, an object ...).
        IntegrityError
            The log was altered since this object last checked it.
        TransportError
            The disk refused the write (full, or a file-size limit): nothing was appended and
            the log is as it was; retry once there is space.
        """
        if not isinstance(event, str) or not _EVENT.fullmatch(event):
            raise ConfigError(
                f"audit log {self.path}: event name {event!r} is invalid; use lower-case "
                "letters, digits and '_.-', starting with a letter, at most 64 characters"
            )
        clean = _json_value(details, f"audit log {self.path}: event {event!r}, details")
        with self._lock, locked(self.path, _APPEND, fcntl.LOCK_EX) as fd:
            self._sync(fd, opening=False)
            return self._write(fd, event, clean)

    def entries(self) -> list[AuditEntry]:
        """Every entry, after checking the whole chain again (raises :class:`IntegrityError`)."""
        with self._lock, locked(self.path, _APPEND, fcntl.LOCK_EX) as fd:
            self._sync(fd, opening=False)
            found = scan(read_from(fd, 0))
            if found.problems or found.torn:
                raise self._tampered(fd)
            return [e for _, e in found.entries]

    def _sync(self, fd: int, *, opening: bool) -> None:
        """Check what was appended since this object last looked; repair a crash's traces."""
        size = os.fstat(fd).st_size
        if size == self._size and not opening:
            return
        found = scan(read_from(fd, self._size), self._seq, self._hash, self._lines)
        if size < self._size or found.problems:
            raise self._tampered(fd)
        last = found.entries[-1][1] if found.entries else None
        seq, last_hash = (last.seq, last.hash) if last else (self._seq, self._hash)
        head, head_error = read_head(self._head_path)
        recovered: dict[str, Any] | None = None
        if head is None and head_error is None and size == 0:
            _write_head(self._head_path, 0, GENESIS)  # a new log
        elif head is not None and found.torn and head == (seq, last_hash):
            os.ftruncate(fd, self._size + found.good_end)
            os.fsync(fd)
            line = self._lines + found.lines + 1
            recovered = {"reason": "torn_tail", "dropped_bytes": found.torn, "line": line}
        elif head is not None and not found.torn and last and head == (seq - 1, last.prev):
            _write_head(self._head_path, seq, last_hash)
            recovered = {"reason": "head_behind", "dropped_bytes": 0, "entry": seq}
        elif head != (seq, last_hash) or found.torn:
            raise self._tampered(fd)
        self._size, self._lines = self._size + found.good_end, self._lines + found.lines
        self._seq, self._hash = seq, last_hash
        if recovered is not None:
            logger.warning("audit log %s: repaired an interrupted write: %s", self.path, recovered)
            self._write(fd, "audit_recovered", recovered)

    def _write(self, fd: int, event: str, details: dict[str, Any]) -> AuditEntry:
        time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        values = (self._seq + 1, time, self.actor, event, details, self._hash)
        body: dict[str, Any] = dict(zip(FIELDS[:-1], values, strict=True))
        body["hash"] = digest(body)
        line = json.dumps(body, ensure_ascii=False, allow_nan=False).encode() + b"\n"
        entry = AuditEntry(**body)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            _write_head(self._head_path, entry.seq, entry.hash)
        except OSError as exc:
            raise self._undo(fd, event, exc) from None
        self._size, self._lines = self._size + len(line), self._lines + 1
        self._seq, self._hash = entry.seq, entry.hash
        return entry

    def _undo(self, fd: int, event: str, exc: OSError) -> TransportError:
        """Cut what a failed append wrote (the head still names the entry before), and say so.

        A full disk or a file-size limit fails the append, not the log: with the partial line
        cut, log and head agree again and ``alliance audit verify`` finds nothing wrong. Were
        the cut itself to fail, the next append repairs the torn tail as after a crash.
        """
        try:
            os.ftruncate(fd, self._size)
            os.fsync(fd)
        except OSError:
            logger.warning("audit log %s: could not cut a failed append; repaired next", self.path)
        return TransportError(
            f"audit log {self.path}: could not append {event!r} ({exc.strerror}); nothing was "
            "recorded and the log is intact. Free space on its disk (or raise the file-size "
            "limit); the request can be retried"
        )

    def _tampered(self, fd: int) -> IntegrityError:
        report = analyse(self.path, read_from(fd, 0))
        first = report.problems[0].message if report.problems else "it changed while open"
        return IntegrityError(
            f"audit log {self.path} was altered: {first} ({len(report.problems)} problem(s) in "
            "all). Nothing more is appended to it: keep it as evidence, list every problem with "
            f"'alliance audit verify {self.path}', and start a new log only once the privacy "
            "officer has reviewed this one"
        )


def _json_value(value: Any, where: str) -> Any:
    """``value`` as plain JSON types (tuples become lists), or a ConfigError naming it."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str) and not any("\ud800" <= c <= "\udfff" for c in value):
        return str(value)
    if isinstance(value, list | tuple):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, f"{where}.{k}") for k, v in value.items()}
    what = {dict: "a dict with non-string keys", float: repr(value), str: "a lone surrogate"}
    raise ConfigError(
        f"{where} is {what.get(type(value), type(value).__name__)}, not JSON: pass str, int, "
        "finite float, bool, None, list or dict with string keys (convert it, e.g. with str())"
    )


def _write_head(path: Path, seq: int, entry_hash: str) -> None:
    head = json.dumps({"seq": seq, "hash": entry_hash}).encode() + b"\n"
    write_atomically(path, head, permissions=0o640)
    with contextlib.suppress(OSError), locked(path.parent, os.O_RDONLY, None) as dir_fd:
        os.fsync(dir_fd)  # make the rename durable where the platform allows
