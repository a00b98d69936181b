"""The compact JSON-lines case format: one case per line, HPO and disease ids as written.

Each line is an object with ``id`` and ``observed`` and optionally ``excluded``,
``disease_ids``, ``sex``, ``age``, ``onset`` (ISO-8601 durations such as ``P3Y6M``) and ``pmid``;
other fields are ignored and blank lines skipped. Files end in ``.jsonl``, or ``.jsonl.gz`` when
gzip-compressed. It is what ``alliance cohort synth`` writes and the shape of the real
phenopacket-store export in ``../shared/data``.

:func:`read_compact` yields one :class:`~alliance.data.records.SourceRecord` per line (terms
without a prefix are read as HPO ids, diseases without one as local codes) or a
:class:`~alliance.data.records.RecordError` naming the line; :func:`write_jsonl` writes cases
atomically and deterministically.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO, TextIO

from alliance.core.errors import DataError
from alliance.core.files import atomic_output
from alliance.data.cases import Case
from alliance.data.codes import CodeSystem, parse_code
from alliance.data.phenopacket import (
    _decode,
    _format_duration,
    _kind,
    _optional,
    _RecordError,
    _required,
)
from alliance.data.records import Location, RecordError, RecordStream, SourceRecord

__all__ = ["read_compact", "write_jsonl"]

EXPECTED = "JSON-lines of cases (.jsonl or .jsonl.gz, one object per line with 'id' and 'observed')"


def read_compact(file: Path) -> RecordStream:
    """Read a ``.jsonl`` or ``.jsonl.gz`` file of compact cases, line by line.

    Raises
    ------
    DataError
        If the file cannot be read (missing, not gzip, not UTF-8) or holds no record.
    """
    records = number = 0
    compressed = file.name.lower().endswith(".gz")
    try:
        with _open_text(file, compressed=compressed) as lines:
            for number, text in enumerate(lines, start=1):
                if not text.strip():
                    continue
                records += 1
                yield _parse(text, Location(str(file), number))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read the file after line {number}: {exc}") from None
    if records == 0:
        raise DataError(f"{file}: file is empty; expected {EXPECTED}")


def write_jsonl(cases: Iterable[Case], path: str | Path) -> None:
    """Write cases as compact JSON-lines, gzip-compressed when the name ends in ``.gz``.

    The file is written next to its destination and moved into place only when complete, so a
    failure never leaves a half-written file nor destroys the previous one.
    """
    target = Path(path)
    with atomic_output(target) as raw:
        if target.name.endswith(".gz"):
            # mtime=0 and no embedded name: identical cases give identical bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
                _write_rows(cases, packed)
        else:
            _write_rows(cases, raw)


def _open_text(file: Path, *, compressed: bool) -> TextIO:
    if compressed:
        return gzip.open(file, "rt", encoding="utf-8-sig")
    return file.open(encoding="utf-8-sig")


def _parse(text: str, where: Location) -> SourceRecord | RecordError:
    try:
        obj = _decode(text)
    except _RecordError as exc:
        return RecordError(where, str(exc))
    try:
        return _record(obj, where)
    except _RecordError as exc:
        return RecordError(where, str(exc), _id_of(obj))


def _record(obj: object, where: Location) -> SourceRecord:
    if not isinstance(obj, Mapping):
        raise _RecordError(f"line holds {_kind(obj)}, not an object; expected {EXPECTED}")
    return SourceRecord(
        id=_required(obj, "id", str),
        location=where,
        observed=tuple(parse_code(t, default=CodeSystem.HPO) for t in _strings(obj, "observed")),
        excluded=tuple(parse_code(t, default=CodeSystem.HPO) for t in _strings(obj, "excluded")),
        diagnoses=tuple(parse_code(d) for d in _strings(obj, "disease_ids")),
        sex=_optional(obj, "sex", str),
        age=_optional(obj, "age", str),
        onset=_optional(obj, "onset", str),
        publication=_optional(obj, "pmid", str),
    )


def _strings(obj: Mapping[str, object], key: str) -> tuple[str, ...]:
    # Only "observed" is required: a case needs at least one phenotype.
    value = _required(obj, key, list) if key == "observed" else _optional(obj, key, list) or []
    if not all(isinstance(item, str) for item in value):
        raise _RecordError(f"field {key!r} must be a list of strings, not {_kind(value)}")
    return tuple(value)


def _id_of(obj: object) -> str | None:
    value = obj.get("id") if isinstance(obj, Mapping) else None
    return value if isinstance(value, str) and value else None


def _write_rows(cases: Iterable[Case], sink: BinaryIO | gzip.GzipFile) -> None:
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
