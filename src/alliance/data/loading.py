"""Read patient case files into :class:`~alliance.data.cases.Case` objects, and write them back.

:func:`load_cases` accepts, by path:

- JSON-lines of compact cases (``.jsonl`` or ``.jsonl.gz``), one object per line with ``id``,
  ``observed`` and optionally ``excluded``, ``disease_ids``, ``sex``, ``age``, ``onset`` (ISO-8601
  durations such as ``P3Y6M``) and ``pmid``; other fields are ignored and blank lines skipped;
- a GA4GH Phenopacket v2 JSON file (``.json``) holding one phenopacket or a list of them;
- a folder: every ``*.json``, ``*.jsonl`` and ``*.jsonl.gz`` file directly inside it, by name.

Every record is checked on its own, so one bad record never costs the others. What was wrong goes
into a :class:`LoadIssue` naming the file, line and case id:

- a malformed record (bad JSON, missing ``id`` or ``observed``, wrong types) is rejected;
- an unknown or malformed HPO id is dropped with a warning; obsolete ids are silently replaced by
  their current term; a case left with no observed term is rejected;
- a malformed disease id, one missing from the study's catalogue, or (by default) no diagnosis at
  all rejects the case; so does an id already seen earlier in the same load;
- an unreadable age or unrecognised sex only warns and is recorded as unknown.

:class:`~alliance.core.errors.DataError` is raised only when nothing can be loaded: a missing
path, an empty file or folder, or a load where every record was rejected. Messages carry ids,
lines, fields and the offending code, never a whole patient record.

:func:`write_jsonl` writes the compact format (gzip-compressed when the name ends in ``.gz``),
atomically. Conversion to and from Phenopacket v2 documents lives in
:mod:`alliance.data.phenopacket`.
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import io
import json
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from alliance.core.errors import DataError, UnknownCodeError
from alliance.data.cases import Case, Sex
from alliance.data.ontology import DiseaseCatalogue, Ontology
from alliance.data.phenopacket import (
    _format_duration,
    _kind,
    _optional,
    _parse_duration,
    _Record,
    _record_from_phenopacket,
    _RecordError,
    _required,
    _show,
)

__all__ = ["LoadIssue", "LoadResult", "load_cases", "write_jsonl"]

logger = logging.getLogger(__name__)

_EXPECTED = (
    "expected JSON-lines of cases (.jsonl or .jsonl.gz, one object per line with 'id' and "
    "'observed'), a GA4GH Phenopacket v2 file (.json), or a folder of such files"
)
_DISEASE_ID = re.compile(r"^(OMIM|ORPHA):\d+$")
# Sex values that mean "unknown" on purpose and so raise no warning.
_UNKNOWN_SEX_WORDS = frozenset({"", "UNKNOWN", "UNKNOWN_SEX"})


@dataclass(frozen=True)
class LoadIssue:
    """One problem found while loading, located as precisely as the format allows.

    Parameters
    ----------
    path
        The file the record came from.
    line
        1-based line for JSON-lines; ``None`` for a JSON file.
    record
        The case id when it could be read.
    message
        What was wrong and what to do about it.
    rejected
        ``True`` when the case was not loaded; ``False`` for a warning (the case was loaded
        without the offending value, such as one unknown HPO term).
    """

    path: str
    line: int | None
    record: str | None
    message: str
    rejected: bool

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        who = f"case {self.record}: " if self.record else ""
        verdict = "rejected" if self.rejected else "warning"
        return f"{where}: {who}{verdict}: {self.message}"


@dataclass(frozen=True)
class LoadResult:
    """The cases that loaded, in file order, and every issue found on the way."""

    cases: tuple[Case, ...]
    issues: tuple[LoadIssue, ...]

    @property
    def rejected(self) -> int:
        """Number of records not loaded (each has exactly one rejecting issue)."""
        return sum(1 for issue in self.issues if issue.rejected)


def load_cases(
    path: str | Path,
    *,
    ontology: Ontology,
    catalogue: DiseaseCatalogue | None = None,
    require_diagnosis: bool = True,
) -> LoadResult:
    """Load cases from a JSON-lines file, a Phenopacket v2 JSON file or a folder of them.

    Parameters
    ----------
    path
        A ``.jsonl``, ``.jsonl.gz`` or ``.json`` file, or a folder whose files of those kinds
        (not in subfolders, not hidden) are loaded in name order.
    ontology
        Resolves HPO ids; obsolete ids become their current replacement.
    catalogue
        When given, a case with a disease not in it is rejected.
    require_diagnosis
        Reject cases without any disease id (the default, for training); pass ``False`` to keep
        undiagnosed cases, for instance to rank them.

    Returns
    -------
    LoadResult
        The loaded cases and every issue, rejecting or not.

    Raises
    ------
    DataError
        If the path does not exist, holds no case file, a file is empty or unreadable, or every
        record was rejected.
    """
    root = Path(path)
    admission = _Admission(ontology, catalogue, require_diagnosis=require_diagnosis)
    for file, kind in _case_files(root):
        if kind is _Format.PHENOPACKET:
            _read_phenopacket_file(file, admission)
        else:
            _read_jsonl_file(file, kind, admission)
    result = LoadResult(tuple(admission.cases), tuple(admission.issues))
    if not result.cases:
        first = "; ".join(str(issue) for issue in result.issues[:3])
        raise DataError(
            f"{root}: none of the {result.rejected} records could be loaded; first issues: {first}"
        )
    logger.info(
        "loaded %d cases from %s (%d rejected, %d warnings)",
        len(result.cases),
        root,
        result.rejected,
        len(result.issues) - result.rejected,
    )
    return result


def write_jsonl(cases: Iterable[Case], path: str | Path) -> None:
    """Write cases as compact JSON-lines, gzip-compressed when the name ends in ``.gz``.

    The file is written next to its destination and moved into place only when complete, so a
    failure never leaves a half-written file nor destroys the previous one.
    """
    target = Path(path)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            if target.name.endswith(".gz"):
                # mtime=0 and no embedded name: identical cases give identical bytes.
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
                    _write_rows(cases, packed)
            else:
                _write_rows(cases, raw)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


# --- files -------------------------------------------------------------------------------------


class _Format(enum.Enum):
    JSONL = "jsonl"
    JSONL_GZ = "jsonl.gz"
    PHENOPACKET = "json"


def _case_files(root: Path) -> list[tuple[Path, _Format]]:
    if root.is_dir():
        found = [
            (child, kind)
            for child in sorted(root.iterdir())
            # Hidden files are editor or OS leftovers (macOS "._x.json"), never case files.
            if child.is_file()
            and not child.name.startswith(".")
            and (kind := _format_of(child)) is not None
        ]
        if not found:
            raise DataError(f"{root}: folder holds no case file; {_EXPECTED}")
        return found
    if not root.exists():
        raise DataError(f"{root}: no such file or folder; {_EXPECTED}")
    kind = _format_of(root)
    if kind is None:
        raise DataError(f"{root}: unsupported file type; {_EXPECTED}")
    return [(root, kind)]


def _format_of(path: Path) -> _Format | None:
    name = path.name.lower()
    for kind in _Format:
        if name.endswith("." + kind.value):
            return kind
    return None


def _read_jsonl_file(file: Path, kind: _Format, admission: _Admission) -> None:
    records = number = 0
    try:
        with _open_text(file, compressed=kind is _Format.JSONL_GZ) as lines:
            for number, text in enumerate(lines, start=1):
                if not text.strip():
                    continue
                records += 1
                try:
                    obj = _decode(text)
                except _RecordError as exc:
                    admission.reject(str(exc), path=str(file), line=number)
                    continue
                admission.take(obj, _record_from_compact, path=str(file), line=number)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read the file after line {number}: {exc}") from None
    if records == 0:
        raise DataError(f"{file}: file is empty; {_EXPECTED}")


def _decode(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _RecordError(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError):
        # Oversized integers and absurdly deep nesting: valid JSON, but not a case.
        raise _RecordError("not usable JSON (oversized number or nesting too deep)") from None


def _open_text(file: Path, *, compressed: bool) -> TextIO:
    if compressed:
        return gzip.open(file, "rt", encoding="utf-8-sig")
    return file.open(encoding="utf-8-sig")


def _read_phenopacket_file(file: Path, admission: _Admission) -> None:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read the file: {exc}") from None
    if not text.strip():
        raise DataError(f"{file}: file is empty; {_EXPECTED}")
    try:
        doc = _decode(text)
    except _RecordError as exc:
        admission.reject(str(exc), path=str(file), line=None)
        return
    if not isinstance(doc, list):
        admission.take(doc, _record_from_phenopacket, path=str(file), line=None)
        return
    if not doc:
        raise DataError(f"{file}: file holds an empty list; {_EXPECTED}")
    for index, item in enumerate(doc):
        admission.take(item, _record_from_phenopacket, path=str(file), line=None, entry=index)


# --- checking records --------------------------------------------------------------------------


class _Admission:
    """The checks of one load (structure, codes, diagnoses, duplicates) and what they found."""

    def __init__(
        self, ontology: Ontology, catalogue: DiseaseCatalogue | None, *, require_diagnosis: bool
    ) -> None:
        self._ontology = ontology
        self._catalogue = catalogue
        self._require_diagnosis = require_diagnosis
        # Resolving is the hot path on large files, and most terms recur across many cases.
        self._resolved: dict[str, str | UnknownCodeError] = {}
        self._seen: dict[str, str] = {}
        self.cases: list[Case] = []
        self.issues: list[LoadIssue] = []

    def reject(self, message: str, *, path: str, line: int | None) -> None:
        """Record a record that could not even be parsed."""
        self.issues.append(LoadIssue(path, line, None, message, rejected=True))

    def take(
        self,
        obj: object,
        parse: Callable[[object], _Record],
        *,
        path: str,
        line: int | None,
        entry: int | None = None,
    ) -> None:
        """Check one decoded record; admit it as a case or record why not."""
        here = path if line is None else f"{path}:{line}"
        here += "" if entry is None else f" (list entry {entry})"
        record_id = _id_of(obj)

        def note(message: str, *, rejected: bool = True) -> None:
            prefix = "" if entry is None else f"list entry {entry}: "
            self.issues.append(LoadIssue(path, line, record_id, prefix + message, rejected))

        try:
            record = parse(obj)
        except _RecordError as exc:
            return note(str(exc))
        first = self._seen.setdefault(record.id, here)
        if first != here:
            return note(f"duplicate case id, first seen at {first}; rename or remove one")
        problem = self._diagnosis_problem(record.disease_ids)
        if problem is not None:
            return note(problem)
        warnings: list[str] = []
        observed = self._resolve_terms(record.observed, "observed", warnings)
        excluded = self._resolve_terms(record.excluded, "excluded", warnings)
        for warning in warnings:
            note(warning, rejected=False)
        if not observed:
            return note("no usable observed HPO term; a case needs at least one")
        sex = Sex.parse(record.sex)
        if sex is Sex.UNKNOWN_SEX and (record.sex or "").strip().upper() not in _UNKNOWN_SEX_WORDS:
            note(f"sex {_show(record.sex)} not recognised; recorded as UNKNOWN_SEX", rejected=False)
        age = None
        for name, value in (("age", record.age), ("onset", record.onset)):
            try:
                age = None if value is None else _parse_duration(value)
            except ValueError as exc:
                note(f"field {name!r}: {exc}; ignored", rejected=False)
            if age is not None:
                break
        self.cases.append(
            Case(record.id, observed, excluded, record.disease_ids, sex, age, record.publication)
        )
        return None

    def _diagnosis_problem(self, disease_ids: tuple[str, ...]) -> str | None:
        if not disease_ids and self._require_diagnosis:
            return "no diagnosis; pass require_diagnosis=False to keep undiagnosed cases"
        for disease in disease_ids:
            if not _DISEASE_ID.match(disease):
                return f"disease id {_show(disease)} is not of the form OMIM:nnnnnn or ORPHA:nnn"
            if self._catalogue is not None and disease not in self._catalogue:
                try:
                    self._catalogue.index(disease)
                except UnknownCodeError as exc:
                    return f"unknown disease: {exc}"
        return None

    def _resolve_terms(
        self, terms: tuple[str, ...], field: str, warnings: list[str]
    ) -> tuple[str, ...]:
        kept: dict[str, None] = {}  # ordered set: an obsolete id may resolve to one already there
        for term in terms:
            resolved = self._resolved.get(term)
            if resolved is None:
                try:
                    resolved = self._ontology.resolve(term)
                except UnknownCodeError as exc:
                    resolved = exc
                self._resolved[term] = resolved
            if isinstance(resolved, str):
                kept[resolved] = None
            elif len(term) > 40:
                warnings.append(f"{field} term {_show(term)} dropped: not an HPO id")
            else:
                warnings.append(f"{field} term dropped: {resolved}")
        return tuple(kept)


def _record_from_compact(obj: object) -> _Record:
    if not isinstance(obj, Mapping):
        raise _RecordError(f"line holds {_kind(obj)}, not an object; {_EXPECTED}")
    return _Record(
        id=_required(obj, "id", str),
        observed=_strings(obj, "observed", required=True),
        excluded=_strings(obj, "excluded"),
        disease_ids=_strings(obj, "disease_ids"),
        sex=_optional(obj, "sex", str),
        age=_optional(obj, "age", str),
        onset=_optional(obj, "onset", str),
        publication=_optional(obj, "pmid", str),
    )


def _strings(obj: Mapping[str, object], key: str, *, required: bool = False) -> tuple[str, ...]:
    value = _required(obj, key, list) if required else _optional(obj, key, list) or []
    if not all(isinstance(item, str) for item in value):
        raise _RecordError(f"field {key!r} must be a list of strings, not {_kind(value)}")
    return tuple(value)


def _id_of(obj: object) -> str | None:
    value = obj.get("id") if isinstance(obj, Mapping) else None
    return value if isinstance(value, str) and value else None


# --- writing -----------------------------------------------------------------------------------


def _write_rows(cases: Iterable[Case], sink: io.BufferedIOBase) -> None:
    for case in cases:
        age = case.age_years
        row = {
            "id": case.id,
            "pmid": case.publication,
            "sex": case.sex.value,
            "age": None if age is None else _format_duration(age, where=f"case {case.id}"),
            "observed": list(case.observed),
            "excluded": list(case.excluded),
            "disease_ids": list(case.disease_ids),
        }
        sink.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
