"""HL7 FHIR R4 Bundles to and from the records every adapter yields.

:func:`read_fhir` reads a Bundle JSON file, or the non-hidden ``*.json`` files directly inside a
folder in name order, into one :class:`~alliance.data.records.SourceRecord` per ``Patient``
(codes as written) and a :class:`~alliance.data.records.RecordError` per problem. ``Patient``,
``Observation`` and ``Condition`` resources are validated with the FHIR R4 (4.3, ``R4B``) models
of ``fhir.resources``; other FHIR resource types (``Encounter``...) are ignored.

Patient
    ``id`` is the case id, ``gender`` the recorded sex.
Observation
    Ignored when ``entered-in-error`` or ``cancelled``. LOINC ``30525-0`` with a
    ``valueQuantity`` in UCUM ``a``, ``mo``, ``wk`` or ``d`` is the age (365.25 days a year; an
    unusable one is logged and ignored). Any other is a phenotype: its HPO coding, else SNOMED
    CT, else UMLS, else its first other coding (LOINC codings are questions: one coded in LOINC
    only takes the phenotype from ``valueCodeableConcept``, or is a measurement and ignored).
    Ruled out when ``valueBoolean`` is false, an ``interpretation`` code is ``NEG``, or
    ``valueCodeableConcept`` is SNOMED CT ``2667000`` (Absent) or LOINC ``LA9634-2``.
Condition
    Ignored when ``entered-in-error``. A diagnosis when a coding is OMIM, ORPHA or ICD-10 (the
    first OMIM or ORPHA one, else ICD-10), kept in Bundle order unless ``verificationStatus`` is
    ``refuted``, ``provisional``, ``differential`` or ``unconfirmed``. Otherwise a phenotype,
    chosen as for Observations and ruled out when ``refuted``.
Age
    The last age Observation; else the days from ``Patient.birthDate`` to the latest
    ``effectiveDateTime`` of the patient's Observations / 365.25, when both are full dates.

A resource names its patient in ``subject.reference``: ``Patient/<id>`` (also as an absolute URL)
or the Patient entry's ``fullUrl`` (``urn:uuid:...``). HPO codes may be written ``HP:0001250``,
``HP_0001250`` or ``0001250``; ICD-10 codes are upper-cased; codings without a code are skipped.

One error per problem, and the rest still reads: a file that is not JSON or holds no valid Bundle
(the whole file); an entry of an unknown resource type, a resource naming no Patient of its
Bundle, a Patient id seen twice; an invalid Patient, or an invalid resource of a patient (that
patient). Messages name the file, the resource (``Observation/obs-12``, or ``entry[3]`` without
a usable id), the fields and pydantic error types, never a value.

:func:`write_fhir` writes cases as one ``collection`` Bundle: the same cases, the same bytes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from alliance.core.errors import DataError
from alliance.core.files import write_atomically
from alliance.data.cases import Case, Sex
from alliance.data.codes import Code, CodeSystem, parse_code
from alliance.data.records import IssueKind, Location, RecordError, RecordStream, SourceRecord

__all__ = ["read_fhir", "write_fhir"]

logger = logging.getLogger(__name__)

_LOINC = "http://loinc.org"
_UCUM = "http://unitsofmeasure.org"
_AGE_CODE = "30525-0"
_DAYS_PER_YEAR = 365.25
_PER_YEAR = {"a": 1.0, "mo": 12.0, "wk": _DAYS_PER_YEAR / 7, "d": _DAYS_PER_YEAR}
# System URLs without scheme, lower-cased; each matches itself and what follows it after a "/".
_SYSTEMS: tuple[tuple[str, CodeSystem], ...] = (
    ("purl.obolibrary.org/obo/hp.owl", CodeSystem.HPO),
    ("purl.obolibrary.org/obo/hp_", CodeSystem.HPO),
    ("human-phenotype-ontology.org", CodeSystem.HPO),
    ("hpo.jax.org", CodeSystem.HPO),
    ("snomed.info/sct", CodeSystem.SNOMED),
    ("www.nlm.nih.gov/research/umls", CodeSystem.UMLS),
    ("hl7.org/fhir/sid/icd-10", CodeSystem.ICD10),
    ("hl7.org/fhir/sid/icd-10-cm", CodeSystem.ICD10),
    ("www.omim.org", CodeSystem.OMIM),
    ("omim.org", CodeSystem.OMIM),
    ("www.orpha.net", CodeSystem.ORPHA),
    ("orpha.net", CodeSystem.ORPHA),
)
_WRITTEN_SYSTEMS = {
    CodeSystem.HPO: "http://purl.obolibrary.org/obo/hp.owl",
    CodeSystem.SNOMED: "http://snomed.info/sct",
    CodeSystem.UMLS: "http://www.nlm.nih.gov/research/umls",
    CodeSystem.ICD10: "http://hl7.org/fhir/sid/icd-10",
    CodeSystem.OMIM: "http://www.omim.org",
    CodeSystem.ORPHA: "http://www.orpha.net",
    CodeSystem.LOCAL: "urn:alliance:local",
}
_PHENOTYPE_ORDER = (CodeSystem.HPO, CodeSystem.SNOMED, CodeSystem.UMLS)
_DIAGNOSIS_SYSTEMS = (CodeSystem.OMIM, CodeSystem.ORPHA, CodeSystem.ICD10)
_ABSENT = frozenset({("snomed.info/sct", "2667000"), ("loinc.org", "LA9634-2")})
_IGNORED_STATUS = frozenset({"entered-in-error", "cancelled"})
_UNCONFIRMED = frozenset({"refuted", "provisional", "differential", "unconfirmed"})
_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]*)?$")
_MALFORMED = IssueKind.MALFORMED
_MODELS: dict[str, type[Resource]] = {m.__name__: m for m in (Patient, Observation, Condition)}
_URL_NAMESPACE = uuid.UUID("6f0c8a52-3c1e-4d59-9f43-2b8f5a1d7e60")  # of written fullUrls


# --- reading -----------------------------------------------------------------------------------


def read_fhir(path: Path) -> RecordStream:
    """Read FHIR R4 Bundles into records, one per Patient (rules in the module docstring).

    Parameters
    ----------
    path
        A Bundle JSON file, or a folder whose non-hidden ``*.json`` files (not in subfolders)
        are Bundles, read in name order.

    Returns
    -------
    RecordStream
        Records and errors in file and Bundle order.

    Raises
    ------
    DataError
        At once, if the path does not exist, is not a ``.json`` file, or is a folder without one.
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.glob("*.json") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{root}: folder holds no FHIR Bundle (.json) file")
    elif root.is_file() and root.suffix.lower() == ".json":
        files = [root]
    elif root.exists():
        raise DataError(f"{root}: expected a FHIR R4 Bundle (.json) or a folder of them")
    else:
        raise DataError(f"{root}: no such file or folder")
    return (item for file in files for item in _read_bundle(file))


def _read_bundle(file: Path) -> RecordStream:
    doc = _load_json(file)
    if isinstance(doc, RecordError):
        yield doc
        return
    found = doc.get("resourceType") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or found != "Bundle":
        what = f"resourceType {_cut(found)}" if isinstance(found, str) else "no resourceType"
        yield RecordError(Location(str(file)), f"{file.name}: {what}; a FHIR Bundle is expected")
        return
    entries = doc.get("entry", [])
    try:
        Bundle.model_validate({key: value for key, value in doc.items() if key != "entry"})
        problem = None if isinstance(entries, list) else "entry (list_type)"
    except ValidationError as exc:
        problem = _fields(exc)
    if problem is not None or not isinstance(entries, list):
        text = f"{file.name}: Bundle is not valid FHIR R4: {problem}"
        yield RecordError(Location(str(file)), text)
        return
    bundle = _BundleReader(file)
    for index, entry in enumerate(entries):
        yield from bundle.add(index, entry)
    yield from bundle.records()


def _load_json(file: Path) -> object:
    """The parsed file, or a :class:`RecordError` saying why it cannot be parsed."""
    place = Location(str(file))
    try:
        return json.loads(file.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        return RecordError(place, f"{file.name}: cannot be read ({exc.strerror})")
    except UnicodeDecodeError as exc:
        text = f"{file.name}: not UTF-8 text (byte {exc.start}); export the Bundle as UTF-8"
        return RecordError(place, text, kind=IssueKind.ENCODING)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        text = f"{file.name}: not valid JSON ({exc.msg} at {where}); fix or re-export the file"
        return RecordError(Location(str(file), line=exc.lineno), text)
    except (ValueError, RecursionError):
        return RecordError(place, f"{file.name}: not usable JSON (huge number or deep nesting)")


@dataclass
class _PatientEntry:
    resource: Patient | None  # None when the Patient itself is invalid
    label: str
    related: list[Observation | Condition] = field(default_factory=list)
    problem: str | None = None


class _BundleReader:
    """The resources of one Bundle, gathered by patient before records are built."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.patients: dict[str, _PatientEntry] = {}
        self.by_url: dict[str, str] = {}
        # (label, resource or None when invalid, subject reference as written, problem)
        self.pending: list[tuple[str, Observation | Condition | None, object, str | None]] = []

    def error(
        self, label: str, text: str, record: str | None = None, kind: IssueKind = _MALFORMED
    ) -> RecordError:
        message = f"{self.file.name}: {label}: {text}"
        return RecordError(Location(str(self.file), resource=label), message, record, kind)

    def add(self, index: int, entry: object) -> Iterator[RecordError]:
        raw = entry.get("resource") if isinstance(entry, dict) else None
        if raw is None and isinstance(entry, dict):
            return  # entries without a resource (requests, deletions) carry no data
        kind = raw.get("resourceType") if isinstance(raw, dict) else None
        if not isinstance(raw, dict) or not isinstance(kind, str):
            yield self.error(f"entry[{index}]", "is not an object with a resourceType")
            return
        raw_id = raw.get("id")
        case_id = raw_id if isinstance(raw_id, str) and _FHIR_ID.match(raw_id) else None
        label = f"{kind}/{case_id}" if case_id else f"entry[{index}]"
        if kind not in _MODELS:
            try:
                get_fhir_model_class(kind)  # valid FHIR, but not used here: ignored
            except ValueError:
                yield self.error(f"entry[{index}]", f"unknown FHIR resourceType {_cut(kind)}")
            return
        try:
            resource, problem = _MODELS[kind].model_validate(raw), None
        except ValidationError as exc:
            resource, problem = None, f"is not a valid FHIR R4 {kind}: {_fields(exc)}"
        if isinstance(resource, Observation | Condition) or (problem and kind != "Patient"):
            subject = raw.get("subject")
            reference = subject.get("reference") if isinstance(subject, dict) else None
            related = resource if isinstance(resource, Observation | Condition) else None
            self.pending.append((label, related, reference, problem))
        elif case_id is None:
            yield self.error(label, problem or "Patient has no valid id (the case id)")
        elif case_id in self.patients:
            text = "Patient id seen twice in this Bundle; the first is kept"
            yield self.error(label, text, case_id, IssueKind.DUPLICATE)
        else:
            patient = resource if isinstance(resource, Patient) else None
            self.patients[case_id] = _PatientEntry(patient, label, problem=problem)
            full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
            self.by_url.update({full_url: case_id} if isinstance(full_url, str) else {})

    def records(self) -> Iterator[SourceRecord | RecordError]:
        for label, resource, reference, problem in self.pending:
            owner = self.patients.get(self._patient_id(reference))
            if owner is None:
                text = "subject.reference names no Patient of this Bundle"
                yield self.error(label, f"{problem}; also, {text}" if problem else text)
            elif problem is not None:
                owner.problem = owner.problem or f"{label} {problem}"
            elif resource is not None:
                owner.related.append(resource)
        for case_id, patient in self.patients.items():
            if patient.problem is not None:
                yield self.error(patient.label, f"patient rejected: {patient.problem}", case_id)
            else:
                yield _record(case_id, patient, Location(str(self.file), resource=patient.label))

    def _patient_id(self, reference: object) -> str:
        if not isinstance(reference, str):
            return ""
        match = _PATIENT_REFERENCE.search(reference)
        return self.by_url.get(reference) or (match.group(1) if match else "")


def _record(case_id: str, patient: _PatientEntry, place: Location) -> SourceRecord:
    observed: list[Code] = []
    excluded: list[Code] = []
    diagnoses: list[Code] = []
    age: float | None = None
    latest: datetime.date | None = None
    for resource in patient.related:
        if isinstance(resource, Condition):
            _read_condition(resource, observed, excluded, diagnoses)
            continue
        if resource.status in _IGNORED_STATUS:
            continue
        codings, when = _codings(resource.code), _full_date(resource.effectiveDateTime)
        if when is not None and (latest is None or when > latest):
            latest = when
        if any(_system(c.system) == "loinc.org" and c.code == _AGE_CODE for c in codings):
            found = _age_of(resource, f"{place.path} (Observation/{resource.id or '?'})")
            age = age if found is None else found
            continue
        code = _phenotype(resource)
        if code is not None:
            (excluded if _ruled_out(resource) else observed).append(code)
    person = patient.resource
    born = _full_date(person.birthDate) if person is not None else None
    if age is None and born is not None and latest is not None and latest >= born:
        age = (latest - born).days / _DAYS_PER_YEAR
    return SourceRecord(
        case_id,
        place,
        tuple(dict.fromkeys(observed)),
        tuple(dict.fromkeys(excluded)),
        tuple(dict.fromkeys(diagnoses)),
        sex=person.gender if person is not None else None,
        age=age,
    )


def _read_condition(
    condition: Condition, observed: list[Code], excluded: list[Code], diagnoses: list[Code]
) -> None:
    status = next((c.code for c in _codings(condition.verificationStatus) if c.code), None)
    codes = _codes(condition.code)
    diseases = [code for code in codes if code.system in _DIAGNOSIS_SYSTEMS]
    if status == "entered-in-error" or not codes:
        return
    if not diseases:
        (excluded if status == "refuted" else observed).append(_preferred(codes))
    elif status not in _UNCONFIRMED:
        named = [code for code in diseases if code.system is not CodeSystem.ICD10]
        diagnoses.append((named or diseases)[0])


def _phenotype(observation: Observation) -> Code | None:
    """The phenotype an Observation records, or ``None`` for a measurement without one."""
    codes = _codes(observation.code)
    if not codes:
        absent = Code(CodeSystem.SNOMED, "2667000")
        codes = [code for code in _codes(observation.valueCodeableConcept) if code != absent]
    return _preferred(codes) if codes else None


def _ruled_out(observation: Observation) -> bool:
    if observation.valueBoolean is False:
        return True
    if any(c.code == "NEG" for i in observation.interpretation or () for c in _codings(i)):
        return True
    answer = observation.valueCodeableConcept
    return any((_system(c.system), c.code) in _ABSENT for c in _codings(answer))


def _age_of(observation: Observation, where: str) -> float | None:
    """Years in an age Observation; ``None``, with a warning, when there is no usable value."""
    quantity = observation.valueQuantity
    unit = (quantity.code or quantity.unit or "") if quantity is not None else ""
    value = quantity.value if quantity is not None else None
    years = float(value) / _PER_YEAR[unit] if value is not None and unit in _PER_YEAR else None
    if years is None or not math.isfinite(years) or years < 0:
        logger.warning("%s: age needs a value >= 0 in UCUM a, mo, wk or d; ignored", where)
        return None
    return years


# --- codes -------------------------------------------------------------------------------------


def _codings(concept: CodeableConcept | None) -> list[Coding]:
    return list(concept.coding or ()) if concept is not None else []


def _codes(concept: CodeableConcept | None) -> list[Code]:
    """The codings of a concept as codes, LOINC ones (questions, answers) left out."""
    codes: list[Code] = []
    for coding in _codings(concept):
        system = _system(coding.system)
        if coding.code and system != "loinc.org":
            known = (cs for url, cs in _SYSTEMS if system == url or system.startswith(url + "/"))
            codes.append(_code(next(known, CodeSystem.LOCAL), coding.code))
    return codes


def _code(system: CodeSystem, value: str) -> Code:
    if system is CodeSystem.LOCAL:
        return Code(system, value)
    parsed = parse_code(value, default=system)
    value = parsed.value if parsed.system is system else value.strip()
    return Code(system, value.upper() if system is CodeSystem.ICD10 else value)


def _preferred(codes: list[Code]) -> Code:
    ranked = [code for system in _PHENOTYPE_ORDER for code in codes if code.system is system]
    return (ranked or codes)[0]


def _system(url: str | None) -> str:
    """A system URL without scheme, case or trailing separator, for comparison."""
    text = (url or "").strip().lower().removeprefix("https://").removeprefix("http://")
    return text.rstrip("/#")


def _full_date(value: object) -> datetime.date | None:
    """A complete date; partial dates (``2020``, ``2020-03``) are strings and give ``None``."""
    date = value.date() if isinstance(value, datetime.datetime) else value
    return date if isinstance(date, datetime.date) else None


def _fields(exc: ValidationError) -> str:
    """The failing fields and error types of a validation error, never the values."""
    errors = exc.errors()
    shown = [
        f"{'.'.join(str(part) for part in error['loc']) or '(resource)'} ({error['type']})"
        for error in errors[:6]
    ]
    return ", ".join(shown) + (f" and {len(errors) - 6} more" if len(errors) > 6 else "")


def _cut(text: str) -> str:
    """A name quoted in a message, cut short so that free text never leaks whole."""
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


# --- writing -----------------------------------------------------------------------------------


def write_fhir(
    cases: Iterable[Case], path: Path, *, phenotype_codes: Mapping[str, Code] | None = None
) -> None:
    """Write cases as one FHIR R4 ``collection`` Bundle, atomically.

    Each case gives a Patient (id = case id), an age Observation (LOINC ``30525-0``, years) when
    the age is known, an Observation per observed (``valueBoolean`` true) or excluded (false)
    phenotype and a confirmed Condition per diagnosis. Ids and ``urn:uuid`` fullUrls derive from
    the case id and no timestamp is written, so the same cases give the same bytes. The file is
    written next to its destination and moved into place only when complete.

    Parameters
    ----------
    cases
        The cases, written in this order.
    path
        The Bundle file to write.
    phenotype_codes
        Translates an HPO id to the code written instead (SNOMED CT, a local code with the
        system ``urn:alliance:local``...).

    Raises
    ------
    DataError
        If a case id is not a valid FHIR id or is repeated, an age is negative or not finite, a
        diagnosis is not an OMIM or ORPHA id, or a resource would not be valid FHIR R4.
    """
    target = Path(path)
    entries: list[dict[str, object]] = []
    seen: set[str] = set()
    for case in cases:
        if _FHIR_ID.match(case.id) is None:
            raise DataError(
                f"case id {_cut(case.id)} is not a valid FHIR id (1 to 64 letters, digits, "
                "'-' or '.'); rename the case"
            )
        if case.id in seen:
            raise DataError(f"case id {_cut(case.id)} is repeated; FHIR ids must be unique")
        seen.add(case.id)
        entries += _case_entries(case, phenotype_codes or {})
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    data = json.dumps(bundle, indent=1, ensure_ascii=False).encode() + b"\n"
    write_atomically(target, data)


def _case_entries(case: Case, phenotype_codes: Mapping[str, Code]) -> list[dict[str, object]]:
    # Derived ids must stay within FHIR's 64 characters: long case ids are replaced by a digest.
    stem = case.id if len(case.id) <= 52 else hashlib.sha256(case.id.encode()).hexdigest()[:16]
    subject = {"reference": _full_url(f"Patient/{case.id}")}
    gender = {Sex.MALE: "male", Sex.FEMALE: "female", Sex.OTHER_SEX: "other"}.get(case.sex)
    resources: list[dict[str, object]] = [
        {"resourceType": "Patient", "id": case.id, "gender": gender or "unknown"}
    ]
    if case.age_years is not None:
        if not math.isfinite(case.age_years) or case.age_years < 0:
            raise DataError(f"case {case.id}: age is not a finite, non-negative number of years")
        age = {"value": case.age_years, "unit": "years", "system": _UCUM, "code": "a"}
        concept = {"coding": [{"system": _LOINC, "code": _AGE_CODE, "display": "Age"}]}
        resources.append(_observation(f"{stem}-age", concept, subject, valueQuantity=age))
    terms = [(term, True) for term in case.observed] + [(term, False) for term in case.excluded]
    for n, (term, present) in enumerate(terms, 1):
        code = phenotype_codes.get(term) or parse_code(term, default=CodeSystem.HPO)
        concept = {"coding": [_coding(code)]}
        resources.append(_observation(f"{stem}-obs-{n}", concept, subject, valueBoolean=present))
    for n, disease in enumerate(case.disease_ids, 1):
        code = parse_code(disease)
        if code.system not in (CodeSystem.OMIM, CodeSystem.ORPHA):
            raise DataError(f"case {case.id}: diagnosis {_cut(disease)} is not an OMIM or ORPHA id")
        verified = {"coding": [{"system": _VERIFICATION, "code": "confirmed"}]}
        condition: dict[str, object] = {"resourceType": "Condition", "id": f"{stem}-dx-{n}"}
        condition |= {"verificationStatus": verified, "code": {"coding": [_coding(code)]}}
        resources.append(condition | {"subject": subject})
    for resource in resources:
        try:
            _MODELS[str(resource["resourceType"])].model_validate(resource)
        except ValidationError as exc:
            name = f"{resource['resourceType']}/{resource['id']}"
            raise DataError(f"case {case.id}: {name} is not valid FHIR: {_fields(exc)}") from None
    return [
        {"fullUrl": _full_url(f"{r['resourceType']}/{r['id']}"), "resource": r} for r in resources
    ]


def _observation(
    resource_id: str, concept: object, subject: object, **value: object
) -> dict[str, object]:
    kind = {"resourceType": "Observation", "id": resource_id, "status": "final"}
    return {**kind, "code": concept, "subject": subject, **value}


def _coding(code: Code) -> dict[str, str]:
    value = f"HP:{code.value}" if code.system is CodeSystem.HPO else code.value
    return {"system": _WRITTEN_SYSTEMS[code.system], "code": value}


def _full_url(reference: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_URL_NAMESPACE, reference)}"
