"""GA4GH Phenopacket v2 documents to and from :class:`~alliance.data.cases.Case` objects.

:func:`case_to_phenopacket` writes a case as a Phenopacket v2 document (a JSON-ready dict);
:func:`phenopacket_to_case` reads one back, its structure and types checked but its codes taken
as written. :func:`read_phenopackets` is the adapter for files (``.json``: one phenopacket or a
list of them): each document is checked field by field (messages name the field) and then
against the schema of the ``phenopackets`` package (GA4GH's own protobuf definitions: unknown
fields, wrong enum values and wrong types are refused), and yielded as a
:class:`~alliance.data.records.SourceRecord` whose codes :mod:`alliance.data.admission` maps.

Three things here are shared with the compact JSON-lines reader in :mod:`alliance.data.compact`
and :mod:`alliance.data.admission`, which import them: JSON decoding whose errors give the
position but never the content, the field checks (their messages name fields, never patient
data), and ISO-8601 durations such as ``P3Y6M``, the Phenopacket age format that compact files
borrow.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from alliance.core.errors import DataError
from alliance.data.cases import Case, Sex
from alliance.data.codes import CodeSystem, parse_code
from alliance.data.records import Location, RecordError, RecordStream, SourceRecord

__all__ = ["case_to_phenopacket", "phenopacket_to_case", "read_phenopackets"]

_T = TypeVar("_T")
_NUMBER = r"(\d+(?:[.,]\d+)?)"
_DURATION = re.compile(
    rf"^P(?!$)(?:{_NUMBER}Y)?(?:{_NUMBER}M)?(?:{_NUMBER}W)?(?:{_NUMBER}D)?"
    rf"(?:T(?=\d)(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?$"
)
_DAYS_PER_YEAR = 365.25
_KIND_NAMES = {str: "a string", dict: "an object", list: "a list", bool: "true or false"}
# Interpretations in these states carry a candidate, not a confirmed diagnosis.
_OPEN_PROGRESS = frozenset({"IN_PROGRESS", "UNSOLVED"})
_RESOURCES = {
    "HP": ("hp", "human phenotype ontology", "http://purl.obolibrary.org/obo/HP_"),
    "OMIM": ("omim", "Online Mendelian Inheritance in Man", "https://omim.org/entry/"),
    "ORPHA": ("orpha", "Orphanet Rare Disease Ontology", "http://www.orpha.net/ORDO/Orphanet_"),
}


def case_to_phenopacket(case: Case) -> dict[str, object]:
    """The case as a GA4GH Phenopacket v2 document (a JSON-ready dict).

    Term and disease labels are left out, since a :class:`Case` holds ids only.
    """
    subject: dict[str, object] = {"id": case.id, "sex": case.sex.value}
    if case.age_years is not None:
        duration = _format_duration(case.age_years, where=f"case {case.id}")
        subject["timeAtLastEncounter"] = {"age": {"iso8601duration": duration}}
    features: list[dict[str, object]] = [{"type": {"id": term}} for term in case.observed]
    features += [{"type": {"id": term}, "excluded": True} for term in case.excluded]
    prefixes = {"HP"} | {disease.split(":")[0] for disease in case.disease_ids}
    meta: dict[str, object] = {
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "createdBy": "guardian-alliance",
        "resources": [
            {"id": short, "name": name, "namespacePrefix": prefix, "iriPrefix": iri}
            for prefix, (short, name, iri) in _RESOURCES.items()
            if prefix in prefixes
        ],
        "phenopacketSchemaVersion": "2.0",
    }
    if case.publication is not None:
        meta["externalReferences"] = [{"id": case.publication}]
    return {
        "id": case.id,
        "subject": subject,
        "phenotypicFeatures": features,
        "diseases": [{"term": {"id": disease}} for disease in case.disease_ids],
        "metaData": meta,
    }


def phenopacket_to_case(doc: Mapping[str, object], *, where: str) -> Case:
    """Read a Phenopacket v2 document into a :class:`Case`, codes as written (not validated).

    Age comes from ``subject.timeAtLastEncounter``, else from the first disease onset; diagnoses
    from the ``diseases`` not excluded, else from ``interpretations`` not marked unsolved or in
    progress; the publication from the first ``metaData.externalReferences`` id.
    :func:`~alliance.data.loading.load_cases` adds the checks of codes against the ontology and
    catalogue.

    Raises
    ------
    DataError
        If the document is malformed or its age is not an ISO-8601 duration; the message starts
        with ``where``.
    """
    try:
        record = _record_from_phenopacket(doc)
        duration = record.age if record.age is not None else record.onset
        age = None if duration is None else _parse_duration(duration)
    except (_RecordError, ValueError) as exc:
        raise DataError(f"{where}: {exc}") from None
    return Case(
        record.id,
        record.observed,
        record.excluded,
        record.disease_ids,
        Sex.parse(record.sex),
        age,
        record.publication,
    )


def read_phenopackets(file: Path) -> RecordStream:
    """Read a ``.json`` file holding one Phenopacket v2 document or a list of them.

    A file that is not JSON gives one :class:`~alliance.data.records.RecordError`; in a list,
    each document is checked on its own (its location names the list entry).

    Raises
    ------
    DataError
        If the file cannot be read as UTF-8, or is empty or an empty list.
    """
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read the file: {exc}") from None
    if not text.strip():
        raise DataError(f"{file}: file is empty; expected {PHENOPACKET_FILES}")
    try:
        doc = _decode(text)
    except _RecordError as exc:
        yield RecordError(Location(str(file)), str(exc))
        return
    if not isinstance(doc, list):
        yield _source_record(doc, Location(str(file)))
        return
    if not doc:
        raise DataError(f"{file}: file holds an empty list; expected {PHENOPACKET_FILES}")
    for index, item in enumerate(doc):
        yield _source_record(item, Location(str(file), resource=f"list entry {index}"))


PHENOPACKET_FILES = "a GA4GH Phenopacket v2 file (.json): one phenopacket or a list of them"


def _source_record(doc: object, where: Location) -> SourceRecord | RecordError:
    try:
        record = _record_from_phenopacket(doc)
        _check_schema(doc)
    except _RecordError as exc:
        found = doc.get("id") if isinstance(doc, Mapping) else None
        return RecordError(where, str(exc), found if isinstance(found, str) and found else None)
    return SourceRecord(
        id=record.id,
        location=where,
        observed=tuple(parse_code(t, default=CodeSystem.HPO) for t in record.observed),
        excluded=tuple(parse_code(t, default=CodeSystem.HPO) for t in record.excluded),
        diagnoses=tuple(parse_code(d) for d in record.disease_ids),
        sex=record.sex,
        age=record.age,
        onset=record.onset,
        publication=record.publication,
    )


@functools.cache
def _schema_parser() -> Callable[[object], None]:
    # Imported on first use: the protobuf runtime is only needed when phenopacket files are read.
    from google.protobuf import json_format
    from phenopackets import Phenopacket

    def parse(doc: object) -> None:
        try:
            json_format.ParseDict(doc, Phenopacket())
        except json_format.ParseError as exc:
            first = str(exc).split("\n", 1)[0]
            raise _RecordError(
                "does not follow the GA4GH Phenopacket v2 schema: "
                + (first if len(first) <= 200 else first[:197] + "...")
            ) from None

    return parse


def _check_schema(doc: object) -> None:
    _schema_parser()(doc)


def _decode(text: str) -> object:
    """Parse JSON text, with errors that give the position but never the content."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _RecordError(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError):
        # Oversized integers and absurdly deep nesting: valid JSON, but not a case.
        raise _RecordError("not usable JSON (oversized number or nesting too deep)") from None


# --- records -----------------------------------------------------------------------------------


class _RecordError(Exception):
    """A record's structure is wrong; the message names the field, never the record's content."""


@dataclass(frozen=True)
class _Record:
    """A record whose structure and types are checked but whose codes are not yet validated."""

    id: str
    observed: tuple[str, ...]
    excluded: tuple[str, ...]
    disease_ids: tuple[str, ...]
    sex: str | None
    age: str | None
    onset: str | None
    publication: str | None


def _record_from_phenopacket(doc: object) -> _Record:
    if not isinstance(doc, Mapping):
        raise _RecordError(f"a phenopacket must be a JSON object, not {_kind(doc)}")
    case_id = _required(doc, "id", str)
    subject = _optional(doc, "subject", dict) or {}
    observed: list[str] = []
    excluded: list[str] = []
    for i, feature in enumerate(_objects(doc, "phenotypicFeatures")):
        context = f"phenotypicFeatures[{i}]."
        term = _required(_required(feature, "type", dict, context), "id", str, context + "type.")
        flag = _optional(feature, "excluded", bool, context)
        (excluded if flag else observed).append(term)
    diseases: list[str] = []
    onset: str | None = None
    for i, disease in enumerate(_objects(doc, "diseases")):
        context = f"diseases[{i}]."
        term = _required(_required(disease, "term", dict, context), "id", str, context + "term.")
        if not _optional(disease, "excluded", bool, context):
            diseases.append(term)
            onset = onset or _age_of(disease, "onset", context)
    for i, interpretation in enumerate([] if diseases else _objects(doc, "interpretations")):
        context = f"interpretations[{i}]."
        if _optional(interpretation, "progressStatus", str, context) not in _OPEN_PROGRESS:
            diagnosis = _optional(interpretation, "diagnosis", dict, context) or {}
            found = _optional(diagnosis, "disease", dict, context + "diagnosis.")
            if found is not None:
                diseases.append(_required(found, "id", str, context + "diagnosis.disease."))
    meta = _optional(doc, "metaData", dict) or {}
    references = _objects(meta, "externalReferences", "metaData.")
    publications = [ref_id for ref in references if isinstance(ref_id := ref.get("id"), str)]
    return _Record(
        id=case_id,
        observed=tuple(observed),
        excluded=tuple(excluded),
        disease_ids=tuple(dict.fromkeys(diseases)),
        sex=_optional(subject, "sex", str, "subject."),
        age=_age_of(subject, "timeAtLastEncounter", "subject."),
        onset=onset,
        publication=publications[0] if publications else None,
    )


def _age_of(obj: Mapping[str, object], key: str, context: str) -> str | None:
    """The ISO-8601 duration of a time element; other kinds (ranges, terms) give ``None``."""
    element = _optional(obj, key, dict, context) or {}
    age = _optional(element, "age", dict, f"{context}{key}.") or {}
    return _optional(age, "iso8601duration", str, f"{context}{key}.age.")


def _optional(obj: Mapping[str, object], key: str, kind: type[_T], context: str = "") -> _T | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise _RecordError(
            f"field {context + key!r} must be {_KIND_NAMES[kind]}, not {_kind(value)}"
        )
    return value


def _required(obj: Mapping[str, object], key: str, kind: type[_T], context: str = "") -> _T:
    value = _optional(obj, key, kind, context)
    if value is None or value == "":
        raise _RecordError(f"field {context + key!r} is missing or empty")
    return value


def _objects(obj: Mapping[str, object], key: str, context: str = "") -> list[dict[str, object]]:
    value = _optional(obj, key, list, context) or []
    if not all(isinstance(item, dict) for item in value):
        raise _RecordError(f"field {context + key!r} must be a list of objects")
    return value


def _kind(value: object) -> str:
    """The JSON type of a value, for messages that must not echo patient data."""
    if value is None:
        return "null"
    if isinstance(value, bool | str | dict):
        return _KIND_NAMES[type(value)]
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list" if all(isinstance(item, str) for item in value) else "a list of non-strings"
    return "a value"


def _show(value: object) -> str:
    """A code as quoted in a message, cut short so that free text never leaks whole."""
    text = repr(value)
    return text if len(text) <= 42 else text[:39] + "...'"


# --- ISO-8601 durations ------------------------------------------------------------------------


def _parse_duration(text: str) -> float:
    """Years in an ISO-8601 duration such as ``P3Y6M``, ``P10D`` or ``P1.5Y``."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{_show(text)} is not an ISO-8601 duration such as P3Y6M or P10D")
    y, mo, w, d, h, mi, s = (
        float(part.replace(",", ".")) if part else 0.0 for part in match.groups()
    )
    return y + mo / 12 + (w * 7 + d + (h + (mi + s / 60) / 60) / 24) / _DAYS_PER_YEAR


def _format_duration(years: float, *, where: str) -> str:
    """The shortest readable ISO-8601 duration that reads back as exactly ``years``."""
    if not math.isfinite(years) or years < 0:
        raise DataError(f"{where}: age {years!r} is not a finite, non-negative number of years")
    whole = int(years)
    months = int((years - whole) * 12)
    for parts in (
        (whole, round((years - whole) * 12), 0),
        (0, 0, round(years * _DAYS_PER_YEAR)),
        (whole, months, round((years - whole - months / 12) * _DAYS_PER_YEAR)),
    ):
        text = "P" + ("".join(f"{n}{u}" for n, u in zip(parts, "YMD", strict=True) if n) or "0Y")
        if _parse_duration(text) == years:
            return text
    # Decimal spells the float's shortest exact digits without exponent notation.
    return f"P{Decimal(repr(years)):f}Y"
