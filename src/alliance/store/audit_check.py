"""Reading and checking an audit log: what a privacy officer sees of it.

:func:`verify_audit_log` checks every line, the chain and the head file and never raises on
tampering: it lists every problem by line number (line 0: the head file), in words meant for a
privacy officer. :func:`read_audit_log` returns the readable entries unchecked, for display.
:func:`scan` and :func:`analyse` are the checks themselves; :class:`~alliance.store.audit.AuditLog`
runs them before it appends. This module is separate from the writer so that the rules for
telling a crash from tampering, and their messages, are in one place; it imports only the
format (:mod:`alliance.store.audit_format`), never the writer.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alliance.core.errors import DataError
from alliance.store.audit_format import (
    FIELDS,
    GENESIS,
    VALID,
    AuditEntry,
    digest,
    head_path,
    locked,
    read_from,
    read_head,
)

__all__ = [
    "AuditProblem",
    "AuditReport",
    "Scan",
    "analyse",
    "read_audit_log",
    "scan",
    "verify_audit_log",
]


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
        with locked(path, os.O_RDONLY, fcntl.LOCK_SH) as fd:
            return analyse(path, read_from(fd, 0))
    except FileNotFoundError:
        if head_path(path).exists():
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
        with locked(Path(path), os.O_RDONLY, fcntl.LOCK_SH) as fd:
            return [e for _, e in scan(read_from(fd, 0)).entries]
    except FileNotFoundError:
        raise DataError(f"audit log {path} does not exist: check the path") from None
    except OSError as exc:
        raise DataError(f"cannot read audit log {path} ({exc.strerror}): check the path") from None


@dataclass(frozen=True)
class Scan:
    """What :func:`scan` found in a run of lines."""

    entries: list[tuple[int, AuditEntry]]  # (line, entry) for every well-formed line
    problems: list[AuditProblem]
    lines: int  # complete lines
    good_end: int  # bytes up to and including the last newline
    torn: int  # bytes after the last newline


def scan(data: bytes, seq: int = 0, prev: str = GENESIS, line: int = 0) -> Scan:
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
    return Scan(entries, problems, len(parsed), len(data) - len(pieces[-1]), len(pieces[-1]))


def analyse(path: Path, data: bytes) -> AuditReport:
    """The full report on ``data`` (the log's bytes) and the head file beside ``path``."""
    head, head_error = read_head(head_path(path))
    found = scan(data)
    problems, end = list(found.problems), found.lines + 1
    last = found.entries[-1][1] if found.entries else None
    seq, last_hash = (last.seq, last.hash) if last else (0, GENESIS)
    if found.torn and head == (seq, last_hash):
        why = "a writer was interrupted (a crash); reopening the log for appending drops it"
    elif found.torn:
        why = "the head file does not name the entry before it, so this is no crash"
    if found.torn:
        problems.append(AuditProblem(end, f"line {end} is incomplete ({found.torn} bytes): {why}"))
    if head_error is not None:
        problems.append(AuditProblem(0, f"{head_error}: deletions at the end cannot be ruled out"))
    elif head is None:
        chain = "" if problems else f"the log itself chains correctly ({seq} entries), but "
        why = f"{chain}without it, deletions at the end of the log cannot be detected"
        problems.append(AuditProblem(0, f"the head file is missing: {why}; restore it"))
    elif head != (seq, last_hash):
        problems.append(_head_mismatch(head, found, seq))
    return AuditReport(path, len(found.entries), last.hash if last else None, tuple(problems))


def _head_mismatch(head: tuple[int, str], found: Scan, seq: int) -> AuditProblem:
    (hseq, hhash), at = head, {e.seq: (n, e.hash) for n, e in found.entries}
    if hseq > seq:
        ends = f"ends at entry {seq} (line {at[seq][0]})" if seq in at else "has no entry"
        what = "entry was" if hseq - seq == 1 else f"{hseq - seq} entries were"
        why = f"the log {ends} but the head file records entry {hseq}: the last {what} deleted"
        return AuditProblem(found.lines + 1, why)
    if (GENESIS if hseq == 0 else at.get(hseq, (0, ""))[1]) != hhash:
        why = f"its entry {hseq} was replaced, or the head file edited"
        return AuditProblem(0, f"the head file's hash for entry {hseq} is wrong: {why}")
    line = at.get(hseq + 1, (found.lines, ""))[0]
    why = "a writer crashed before updating it (reopening the log repairs this) or it was forged"
    if seq - hseq > 1:
        why = f"lines {line}-{found.lines} were added without updating the head file"
    return AuditProblem(line, f"entry {seq} (line {found.lines}) is not in the head file: {why}")


def _intact(e: AuditEntry) -> bool:
    try:
        return digest(e.as_dict()) == e.hash
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
    bad = [k for k in FIELDS if not VALID[k](obj.get(k))] + sorted(set(obj) - set(FIELDS))
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
