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
:func:`verify_audit_log` never raises on tampering; it lists every problem by line number, in
words meant for a privacy officer (line 0: the head file).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alliance.core.errors import ConfigError, DataError, IntegrityError

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

GENESIS = "0" * 64
"""The ``prev`` of the first entry, and the head of an empty log."""

_APPEND = os.O_RDWR | os.O_APPEND
_FIELDS = ("seq", "time", "actor", "event", "details", "prev", "hash")
_HEX = re.compile(r"[0-9a-f]{64}")
_EVENT = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_ACTOR = re.compile(r"[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]{0,126}(?<!\s)")


def _is_hex(value: Any) -> bool:
    return isinstance(value, str) and _HEX.fullmatch(value) is not None


_VALID: dict[str, Callable[[Any], bool]] = {
    "seq": lambda v: type(v) is int and v >= 1,
    **dict.fromkeys(("time", "actor", "event"), lambda v: isinstance(v, str)),
    "details": lambda v: isinstance(v, dict),
    **dict.fromkeys(("prev", "hash"), _is_hex),
}


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
        return {k: dict(self.details) if k == "details" else getattr(self, k) for k in _FIELDS}


@dataclass(frozen=True)
class AuditProblem:
    """One finding of :func:`verify_audit_log`: a 1-based line number (0: the head file)."""

    line: int
    message: str


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify_audit_log` found: entries read, last entry's hash, every problem."""

    path: Path
    entries: int
    head: str | None
    problems: tuple[AuditProblem, ...]

    @property
    def ok(self) -> bool:
        """True when every line, the chain and the head file are intact."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {**asdict(self), "path": str(self.path), "ok": self.ok}


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
        self.path, self.actor, self._head_path = Path(path), actor, _head_path(Path(path))
        self._lock = threading.Lock()
        self._size, self._lines, self._seq, self._hash = 0, 0, 0, GENESIS
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, _locked(self.path, _APPEND | os.O_CREAT, fcntl.LOCK_EX) as fd:
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
        """
        if not isinstance(event, str) or not _EVENT.fullmatch(event):
            raise ConfigError(
                f"audit log {self.path}: event name {event!r} is invalid; use lower-case "
                "letters, digits and '_.-', starting with a letter, at most 64 characters"
            )
        clean = _json_value(details, f"audit log {self.path}: event {event!r}, details")
        with self._lock, _locked(self.path, _APPEND, fcntl.LOCK_EX) as fd:
            self._sync(fd, opening=False)
            return self._write(fd, event, clean)

    def entries(self) -> list[AuditEntry]:
        """Every entry, after checking the whole chain again (raises :class:`IntegrityError`)."""
        with self._lock, _locked(self.path, _APPEND, fcntl.LOCK_EX) as fd:
            self._sync(fd, opening=False)
            scan = _scan(_read_from(fd, 0))
            if scan.problems or scan.torn:
                raise self._tampered(fd)
            return [e for _, e in scan.entries]

    def _sync(self, fd: int, *, opening: bool) -> None:
        """Check what was appended since this object last looked; repair a crash's traces."""
        size = os.fstat(fd).st_size
        if size == self._size and not opening:
            return
        scan = _scan(_read_from(fd, self._size), self._seq, self._hash, self._lines)
        if size < self._size or scan.problems:
            raise self._tampered(fd)
        last = scan.entries[-1][1] if scan.entries else None
        seq, digest = (last.seq, last.hash) if last else (self._seq, self._hash)
        head, head_error = _read_head(self._head_path)
        recovered: dict[str, Any] | None = None
        if head is None and head_error is None and size == 0:
            _write_head(self._head_path, 0, GENESIS)  # a new log
        elif head is not None and scan.torn and head == (seq, digest):
            os.ftruncate(fd, self._size + scan.good_end)
            os.fsync(fd)
            line = self._lines + scan.lines + 1
            recovered = {"reason": "torn_tail", "dropped_bytes": scan.torn, "line": line}
        elif head is not None and not scan.torn and last and head == (seq - 1, last.prev):
            _write_head(self._head_path, seq, digest)
            recovered = {"reason": "head_behind", "dropped_bytes": 0, "entry": seq}
        elif head != (seq, digest) or scan.torn:
            raise self._tampered(fd)
        self._size, self._lines = self._size + scan.good_end, self._lines + scan.lines
        self._seq, self._hash = seq, digest
        if recovered is not None:
            logger.warning("audit log %s: repaired an interrupted write: %s", self.path, recovered)
            self._write(fd, "audit_recovered", recovered)

    def _write(self, fd: int, event: str, details: dict[str, Any]) -> AuditEntry:
        time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        values = (self._seq + 1, time, self.actor, event, details, self._hash)
        body: dict[str, Any] = dict(zip(_FIELDS[:-1], values, strict=True))
        body["hash"] = _digest(body)
        line = json.dumps(body, ensure_ascii=False, allow_nan=False).encode() + b"\n"
        view = memoryview(line)
        while view:  # if this fails part-way, the next _sync finds and repairs the torn tail
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        entry = AuditEntry(**body)
        self._size, self._lines = self._size + len(line), self._lines + 1
        self._seq, self._hash = entry.seq, entry.hash
        _write_head(self._head_path, entry.seq, entry.hash)
        return entry

    def _tampered(self, fd: int) -> IntegrityError:
        report = _analyse(self.path, _read_from(fd, 0))
        first = report.problems[0].message if report.problems else "it changed while open"
        return IntegrityError(
            f"audit log {self.path} was altered: {first} ({len(report.problems)} problem(s) in "
            "all). Nothing more is appended to it: keep it as evidence, list every problem with "
            f"'alliance audit verify {self.path}', and start a new log only once the privacy "
            "officer has reviewed this one"
        )


def verify_audit_log(path: Path) -> AuditReport:
    """Check every line, the chain and the head file of the audit log at ``path``.

    Never raises on tampering: every problem found is in the report.

    Raises
    ------
    DataError
        Neither the log nor its head file exists, or the log cannot be read.
    """
    path = Path(path)
    try:
        with _locked(path, os.O_RDONLY, fcntl.LOCK_SH) as fd:
            return _analyse(path, _read_from(fd, 0))
    except FileNotFoundError:
        if _head_path(path).exists():
            gone = f"the log file {path} is missing but its head file exists: it was deleted"
            return AuditReport(path, 0, None, (AuditProblem(0, gone),))
        raise DataError(f"audit log {path} does not exist: check the path") from None
    except OSError as exc:
        raise DataError(f"cannot read audit log {path} ({exc.strerror}): check it") from None


def read_audit_log(path: Path) -> list[AuditEntry]:
    """The entries of the log at ``path`` that can be read, unchecked (for display).

    Raises
    ------
    DataError
        The file does not exist or cannot be read.
    """
    try:
        with _locked(Path(path), os.O_RDONLY, fcntl.LOCK_SH) as fd:
            return [e for _, e in _scan(_read_from(fd, 0)).entries]
    except FileNotFoundError:
        raise DataError(f"audit log {path} does not exist: check the path") from None
    except OSError as exc:
        raise DataError(f"cannot read audit log {path} ({exc.strerror}): check the path") from None


@dataclass(frozen=True)
class _Scan:
    entries: list[tuple[int, AuditEntry]]  # (line, entry) for every well-formed line
    problems: list[AuditProblem]
    lines: int  # complete lines
    good_end: int  # bytes up to and including the last newline
    torn: int  # bytes after the last newline


def _scan(data: bytes, seq: int = 0, prev: str = GENESIS, line: int = 0) -> _Scan:
    """Parse the complete lines of ``data`` and check that they chain on from entry ``seq``."""
    pieces = data.split(b"\n")
    parsed = [(line + i, _parse(raw, line + i)) for i, raw in enumerate(pieces[:-1], 1)]
    entries = [(n, p) for n, p in parsed if isinstance(p, AuditEntry)]
    where: dict[int, list[int]] = {}
    for n, entry in entries:
        where.setdefault(entry.seq, []).append(n)
    hashes = {entry.hash: n for n, entry in entries}
    problems: list[AuditProblem] = []
    last_line, damaged = line, 0
    for n, e in parsed:
        if isinstance(e, AuditProblem):
            problems.append(e)
            damaged += 1
            continue
        out: list[str] = []
        label = f"line {n} (entry {e.seq}, {e.event!r})"
        before = f"entry {seq} (line {last_line})" if last_line else "the start of the log"
        if not _intact(e):
            out.append(f"{label} was changed after it was written: it no longer matches its hash")
        missing = range(seq + 1, e.seq)
        moved = [s for s in missing if s in where]
        twin = [m for m in where[e.seq] if m != n]
        if e.seq == seq + 1 and e.prev != prev:
            to = f"line {hashes[e.prev]}" if e.prev in hashes else "an entry not in the log"
            out.append(
                f"{label} does not link to {before} but to {to}: it was forged and "
                "inserted, or the line before it was replaced"
            )
        elif e.seq <= seq and twin:
            out.append(
                f"{label} repeats entry {e.seq} of line {twin[0]}: one of the two was inserted"
            )
        elif e.seq <= seq or moved:
            at = f" but entry {moved[0]} is at line {where[moved[0]][0]}" if moved else ""
            out.append(f"{label} comes after {before}{at}: lines were reordered")
        elif len(missing) > damaged or (missing and not damaged):
            what = (
                f"entry {seq + 1} was"
                if len(missing) == 1
                else f"entries {seq + 1}-{e.seq - 1} were"
            )
            lost = " deleted or damaged" if damaged else " deleted"
            out.append(f"entry {e.seq} (line {n}) follows {before}: {what}{lost}")
        problems += [AuditProblem(n, m) for m in out]
        seq, prev, last_line, damaged = e.seq, e.hash, n, 0
    return _Scan(entries, problems, len(parsed), len(data) - len(pieces[-1]), len(pieces[-1]))


def _analyse(path: Path, data: bytes) -> AuditReport:
    """The full report on ``data`` (the log's bytes) and the head file beside ``path``."""
    head, head_error = _read_head(_head_path(path))
    scan = _scan(data)
    problems, end = list(scan.problems), scan.lines + 1
    last = scan.entries[-1][1] if scan.entries else None
    seq, digest = (last.seq, last.hash) if last else (0, GENESIS)
    if scan.torn and head == (seq, digest):
        why = "a writer was interrupted (a crash); reopening the log for appending drops it"
    elif scan.torn:
        why = "the head file does not name the entry before it, so this is no crash"
    if scan.torn:
        problems.append(AuditProblem(end, f"line {end} is incomplete ({scan.torn} bytes): {why}"))
    if head_error is not None:
        problems.append(AuditProblem(0, f"{head_error}: deletions at the end cannot be ruled out"))
    elif head is None:
        chain = "" if problems else f"the log itself chains correctly ({seq} entries), but "
        why = f"{chain}without it, deletions at the end of the log cannot be detected"
        problems.append(AuditProblem(0, f"the head file is missing: {why}; restore it"))
    elif head != (seq, digest):
        problems.append(_head_mismatch(head, scan, seq))
    return AuditReport(path, len(scan.entries), last.hash if last else None, tuple(problems))


def _head_mismatch(head: tuple[int, str], scan: _Scan, seq: int) -> AuditProblem:
    (hseq, hhash), at = head, {e.seq: (n, e.hash) for n, e in scan.entries}
    if hseq > seq:
        ends = f"ends at entry {seq} (line {at[seq][0]})" if seq in at else "has no entry"
        what = "entry was" if hseq - seq == 1 else f"{hseq - seq} entries were"
        why = f"the log {ends} but the head file records entry {hseq}: the last {what} deleted"
        return AuditProblem(scan.lines + 1, why)
    if (GENESIS if hseq == 0 else at.get(hseq, (0, ""))[1]) != hhash:
        why = f"its entry {hseq} was replaced, or the head file edited"
        return AuditProblem(0, f"the head file's hash for entry {hseq} is wrong: {why}")
    line = at.get(hseq + 1, (scan.lines, ""))[0]
    why = "a writer crashed before updating it (reopening the log repairs this) or it was forged"
    if seq - hseq > 1:
        why = f"lines {line}-{scan.lines} were added without updating the head file"
    return AuditProblem(line, f"entry {seq} (line {scan.lines}) is not in the head file: {why}")


def _intact(e: AuditEntry) -> bool:
    try:
        return _digest(e.as_dict()) == e.hash
    except ValueError:  # a lone surrogate cannot be encoded
        return False


def _parse(raw: bytes, n: int) -> AuditEntry | AuditProblem:
    if not raw.strip():
        return AuditProblem(n, f"line {n} is empty: a blank line was inserted or an entry erased")
    try:
        obj = json.loads(raw.decode(), parse_constant=_no_constant, object_pairs_hook=_unique)
    except ValueError as exc:  # also UnicodeDecodeError and JSONDecodeError
        why = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else exc
        return AuditProblem(n, f"line {n} is not valid JSON ({why}): it was damaged or edited")
    if not isinstance(obj, dict):
        return AuditProblem(n, f"line {n} is JSON but not an entry: it was replaced or inserted")
    bad = [k for k in _FIELDS if not _VALID[k](obj.get(k))] + sorted(set(obj) - set(_FIELDS))
    if bad:
        why = f"missing, invalid or unknown: {', '.join(bad)}"
        return AuditProblem(n, f"line {n} is not a well-formed entry ({why}): it was edited")
    return AuditEntry(**obj)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(obj := dict(pairs)) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return obj


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


def _digest(body: Mapping[str, Any]) -> str:
    obj = {k: v for k, v in body.items() if k != "hash"}
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _read_head(path: Path) -> tuple[tuple[int, str] | None, str | None]:
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


def _write_head(path: Path, seq: int, digest: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps({"seq": seq, "hash": digest}).encode() + b"\n")
            fh.flush()
            os.fchmod(fh.fileno(), 0o640)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError), _locked(path.parent, os.O_RDONLY, None) as dir_fd:
        os.fsync(dir_fd)  # make the rename durable where the platform allows


@contextlib.contextmanager
def _locked(path: Path, flags: int, lock: int | None) -> Iterator[int]:
    """An fd on ``path``, holding ``flock(lock)`` unless None; closing releases the lock."""
    fd = os.open(path, flags | os.O_CLOEXEC, 0o640)
    try:
        if lock is not None:
            fcntl.flock(fd, lock)
        yield fd
    finally:
        os.close(fd)


def _read_from(fd: int, offset: int) -> bytes:
    chunks = []
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
