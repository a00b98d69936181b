"""FHIR R4 Bundles: round trips, code systems, exclusion and age rules, per-resource errors."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle

import alliance.data.fhir as fhir
from alliance.core.errors import DataError
from alliance.data.cases import Case, Sex
from alliance.data.codes import Code, CodeSystem
from alliance.data.fhir import read_fhir, write_fhir
from alliance.data.records import IssueKind, Location, RecordError, SourceRecord
from alliance.data.synth import SiteCohort

HPO_URL = "http://purl.obolibrary.org/obo/hp.owl"
SNOMED_URL = "http://snomed.info/sct"
LOINC_URL = "http://loinc.org"
SEIZURE = "HP:0001250"
DEV_DELAY = "HP:0001263"
SECRET = "Jane Q. Patient, 12 Rose Street"
SUBJECT_URL = "urn:uuid:7d9e3c1a-52b4-4f0e-9a61-0c2b8e4f1d37"

Resource = dict[str, object]


def patient(pid: str = "p1", **fields: object) -> Resource:
    return {"resourceType": "Patient", "id": pid, **fields}


def observation(
    oid: str,
    code: str = SEIZURE,
    *,
    system: str = HPO_URL,
    subject: str = "Patient/p1",
    **fields: object,
) -> Resource:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": subject},
        **fields,
    }


def condition(
    cid: str, *codings: tuple[str, str], status: str | None = None, subject: str = "Patient/p1"
) -> Resource:
    resource: Resource = {
        "resourceType": "Condition",
        "id": cid,
        "code": {"coding": [{"system": system, "code": code} for system, code in codings]},
        "subject": {"reference": subject},
    }
    if status is not None:
        system = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
        resource["verificationStatus"] = {"coding": [{"system": system, "code": status}]}
    return resource


def write_bundle(path: Path, *resources: Resource, full_urls: dict[int, str] | None = None) -> Path:
    entries: list[Resource] = [
        {"fullUrl": url, "resource": resource}
        if (url := (full_urls or {}).get(i))
        else {"resource": resource}
        for i, resource in enumerate(resources)
    ]
    doc = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def read(path: Path) -> list[SourceRecord | RecordError]:
    return list(read_fhir(path))


def only_record(path: Path) -> SourceRecord:
    (record,) = read(path)
    assert isinstance(record, SourceRecord), record
    return record


def test_export_list_names_what_the_module_defines() -> None:
    assert sorted(fhir.__all__) == ["read_fhir", "write_fhir"]
    assert all(hasattr(fhir, name) for name in fhir.__all__)


# --- writing and round trips -------------------------------------------------------------------


def test_round_trip_keeps_every_case_of_a_hospital(
    tmp_path: Path, small_consortium: tuple[SiteCohort, ...]
) -> None:
    cases = small_consortium[0].train + small_consortium[0].test
    assert any(case.excluded for case in cases)
    path = tmp_path / "hospital.json"
    write_fhir(cases, path)
    records = read(path)
    assert len(records) == len(cases)
    for case, record in zip(cases, records, strict=True):
        assert isinstance(record, SourceRecord), record
        assert record.id == case.id
        assert record.location == Location(str(path), resource=f"Patient/{case.id}")
        assert Sex.parse(record.sex) == case.sex
        assert record.age == case.age_years
        assert tuple(str(code) for code in record.observed) == case.observed
        assert tuple(str(code) for code in record.excluded) == case.excluded
        assert tuple(str(code) for code in record.diagnoses) == case.disease_ids


def test_round_trip_of_edge_values(tmp_path: Path) -> None:
    cases = (
        Case("wch-0001", (SEIZURE,), (), ("ORPHA:558", "OMIM:154700"), Sex.OTHER_SEX, 1 / 3),
        Case("wch-0002", (DEV_DELAY,), (SEIZURE,), (), Sex.UNKNOWN_SEX, None),
        Case("a.b-" + "9" * 60, (SEIZURE,), age_years=0.0),
    )
    write_fhir(cases, tmp_path / "b.json")
    records = read(tmp_path / "b.json")
    assert [(r.id, Sex.parse(r.sex), r.age) for r in records if isinstance(r, SourceRecord)] == [
        (case.id, case.sex, case.age_years) for case in cases
    ]
    first = records[0]
    assert isinstance(first, SourceRecord)
    assert first.diagnoses == (Code(CodeSystem.ORPHA, "558"), Code(CodeSystem.OMIM, "154700"))


def test_written_bundle_validates_with_fhir_resources(
    tmp_path: Path, small_consortium: tuple[SiteCohort, ...]
) -> None:
    cases = small_consortium[1].train[:20]
    write_fhir(cases, tmp_path / "b.json")
    doc = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))
    bundle = Bundle.model_validate(doc)
    assert bundle.type == "collection"
    entries = bundle.entry or []
    expected = sum(
        1 + (case.age_years is not None) + len(case.observed + case.excluded + case.disease_ids)
        for case in cases
    )
    assert len(entries) == expected
    assert len({entry.fullUrl for entry in entries}) == expected
    assert all(str(entry.fullUrl).startswith("urn:uuid:") for entry in entries)
    patients = [
        e.resource for e in entries if e.resource and e.resource.get_resource_type() == "Patient"
    ]
    assert [p.id for p in patients if p is not None] == [case.id for case in cases]


def test_write_is_deterministic_and_keeps_the_previous_file_on_failure(tmp_path: Path) -> None:
    cases = [Case("wch-0001", (SEIZURE,), (DEV_DELAY,), ("OMIM:154700",), Sex.FEMALE, 3.5)]
    write_fhir(cases, tmp_path / "one.json")
    write_fhir(cases, tmp_path / "two.json")
    before = (tmp_path / "one.json").read_bytes()
    assert before == (tmp_path / "two.json").read_bytes()
    with pytest.raises(DataError, match="'wch_0002' is not a valid FHIR id"):
        write_fhir([*cases, Case("wch_0002", (SEIZURE,))], tmp_path / "one.json")
    with pytest.raises(DataError, match="'wch-0001' is repeated"):
        write_fhir(cases * 2, tmp_path / "one.json")
    assert (tmp_path / "one.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "two.json"]


def test_phenotype_codes_write_other_systems(tmp_path: Path) -> None:
    codes = {SEIZURE: Code(CodeSystem.SNOMED, "91175000"), DEV_DELAY: Code(CodeSystem.LOCAL, "N-7")}
    write_fhir([Case("c1", (SEIZURE,), (DEV_DELAY,))], tmp_path / "b.json", phenotype_codes=codes)
    text = (tmp_path / "b.json").read_text(encoding="utf-8")
    assert SNOMED_URL in text
    assert "urn:alliance:local" in text
    record = only_record(tmp_path / "b.json")
    assert (record.observed, record.excluded) == ((codes[SEIZURE],), (codes[DEV_DELAY],))


# --- reading hospital Bundles ------------------------------------------------------------------


def test_realistic_hospital_bundle(tmp_path: Path) -> None:
    # SNOMED-coded findings, Patient/<id> and urn:uuid references mixed, a resource type the
    # adapter does not use, an entered-in-error Observation dated after the others (it must not
    # move the age), an ICD-10 + ORPHA diagnosis, refuted and provisional Conditions.
    ref = "Patient/p-001"
    icd, orpha, omim = (
        "http://hl7.org/fhir/sid/icd-10",
        "http://www.orpha.net",
        "http://www.omim.org",
    )
    absent = {"coding": [{"system": SNOMED_URL, "code": "2667000", "display": "Absent"}]}
    path = write_bundle(
        tmp_path / "export.json",
        {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"}},
        patient("p-001", gender="female", birthDate="2015-03-10", name=[{"family": "Secret"}]),
        observation(
            "obs-1",
            "91175000",
            system=SNOMED_URL,
            subject=SUBJECT_URL,
            effectiveDateTime="2021-09-10T09:30:00+08:00",
        ),
        observation(
            "obs-2",
            "248290002",
            system=SNOMED_URL,
            subject=ref,
            effectiveDateTime="2020-01-01",
            valueCodeableConcept=absent,
        ),
        observation(
            "obs-3",
            "HP:0001252",
            subject=ref,
            status="entered-in-error",
            effectiveDateTime="2024-01-01",
        ),
        condition("cond-1", (icd, "Q87.4"), (orpha, "558"), status="confirmed", subject=ref),
        condition("cond-2", (SNOMED_URL, "271737000"), status="refuted", subject=SUBJECT_URL),
        condition("cond-3", (omim, "154700"), status="refuted", subject=ref),
        condition("cond-4", (omim, "154700"), status="provisional", subject=ref),
        full_urls={1: SUBJECT_URL},
    )
    age = (datetime.date(2021, 9, 10) - datetime.date(2015, 3, 10)).days / 365.25
    assert read(path) == [
        SourceRecord(
            "p-001",
            Location(str(path), resource="Patient/p-001"),
            observed=(Code(CodeSystem.SNOMED, "91175000"),),
            excluded=(Code(CodeSystem.SNOMED, "248290002"), Code(CodeSystem.SNOMED, "271737000")),
            diagnoses=(Code(CodeSystem.ORPHA, "558"),),
            sex="female",
            age=age,
        )
    ]


@pytest.mark.parametrize(
    ("system", "code", "expected"),
    [
        (HPO_URL, SEIZURE, Code(CodeSystem.HPO, "0001250")),
        ("http://human-phenotype-ontology.org", "0001250", Code(CodeSystem.HPO, "0001250")),
        ("https://hpo.jax.org", "HP:0001250", Code(CodeSystem.HPO, "0001250")),
        ("http://purl.obolibrary.org/obo/HP_", "0001250", Code(CodeSystem.HPO, "0001250")),
        (SNOMED_URL, "91175000", Code(CodeSystem.SNOMED, "91175000")),
        ("http://www.nlm.nih.gov/research/umls/cui", "C0036572", Code(CodeSystem.UMLS, "C0036572")),
        ("http://hl7.org/fhir/sid/icd-10", "r56.9", Code(CodeSystem.ICD10, "R56.9")),
        ("https://omim.org", "OMIM:154700", Code(CodeSystem.OMIM, "154700")),
        ("https://www.orpha.net", "558", Code(CodeSystem.ORPHA, "558")),
        ("urn:oid:1.2.3.4", "NEU-017", Code(CodeSystem.LOCAL, "NEU-017")),
    ],
)
def test_coding_systems_become_codes(
    tmp_path: Path, system: str, code: str, expected: Code
) -> None:
    resource = (
        condition("c", (system, code))
        if expected.system in (CodeSystem.ICD10, CodeSystem.OMIM, CodeSystem.ORPHA)
        else observation("o", code, system=system)
    )
    record = only_record(write_bundle(tmp_path / "b.json", patient(), resource))
    assert (record.observed or record.diagnoses) == (expected,)


def test_hpo_coding_is_preferred_over_snomed_and_local(tmp_path: Path) -> None:
    resource = observation("o", "X1", system="urn:local")
    resource["code"] = {
        "coding": [
            {"system": "urn:local", "code": "X1"},
            {"system": SNOMED_URL, "code": "91175000"},
            {"system": HPO_URL, "code": SEIZURE},
        ]
    }
    record = only_record(write_bundle(tmp_path / "b.json", patient(), resource))
    assert record.observed == (Code(CodeSystem.HPO, "0001250"),)


@pytest.mark.parametrize(
    ("fields", "excluded"),
    [
        ({}, False),
        ({"valueBoolean": True}, False),
        ({"valueBoolean": False}, True),
        ({"interpretation": [{"coding": [{"code": "NEG"}]}]}, True),
        ({"valueCodeableConcept": {"coding": [{"system": SNOMED_URL, "code": "2667000"}]}}, True),
        ({"valueCodeableConcept": {"coding": [{"system": LOINC_URL, "code": "LA9634-2"}]}}, True),
    ],
)
def test_exclusion_rules(tmp_path: Path, fields: Resource, excluded: bool) -> None:
    record = only_record(write_bundle(tmp_path / "b.json", patient(), observation("o") | fields))
    seizure = (Code(CodeSystem.HPO, "0001250"),)
    assert (record.observed, record.excluded) == (((), seizure) if excluded else (seizure, ()))


@pytest.mark.parametrize(
    ("value", "unit", "years"),
    [(3.25, "a", 3.25), (18, "mo", 1.5), (26, "wk", 26 * 7 / 365.25), (730.5, "d", 2.0)],
)
def test_age_observation_units(tmp_path: Path, value: float, unit: str, years: float) -> None:
    quantity = {"value": value, "system": "http://unitsofmeasure.org", "code": unit}
    age = observation("age", "30525-0", system=LOINC_URL, valueQuantity=quantity)
    record = only_record(write_bundle(tmp_path / "b.json", patient(), age, observation("o")))
    assert record.age == pytest.approx(years)
    assert record.observed == (Code(CodeSystem.HPO, "0001250"),)


def test_only_confirmed_diagnoses_count_in_bundle_order(tmp_path: Path) -> None:
    omim, orpha, icd = (
        "http://www.omim.org",
        "http://www.orpha.net",
        "http://hl7.org/fhir/sid/icd-10",
    )
    path = write_bundle(
        tmp_path / "b.json",
        patient(),
        observation("o"),
        condition("c1", (omim, "154700"), status="confirmed"),
        *(condition(s, (omim, "100100"), status=s) for s in ("provisional", "differential")),
        *(condition(s, (omim, "100200"), status=s) for s in ("unconfirmed", "refuted")),
        condition("c2", (icd, "Q87.4"), (orpha, "ORPHA:558"), status="entered-in-error"),
        condition("c3", (icd, "Q87.4")),
        condition("c4", (orpha, "ORPHA:558")),
    )
    record = only_record(path)
    assert record.diagnoses == (
        Code(CodeSystem.OMIM, "154700"),
        Code(CodeSystem.ICD10, "Q87.4"),
        Code(CodeSystem.ORPHA, "558"),
    )


def test_folder_reads_bundles_in_name_order(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b.json", patient("p2"), observation("o", subject="Patient/p2"))
    write_bundle(tmp_path / "a.json", patient("p1"), observation("o"))
    write_bundle(tmp_path / ".hidden.json", patient("p3"))
    (tmp_path / "notes.txt").write_text("not a bundle", encoding="utf-8")
    records = read(tmp_path)
    assert [(r.id, r.location.path) for r in records if isinstance(r, SourceRecord)] == [
        ("p1", str(tmp_path / "a.json")),
        ("p2", str(tmp_path / "b.json")),
    ]


def test_missing_path_and_empty_folder_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_fhir(tmp_path / "absent.json")
    with pytest.raises(DataError, match="no FHIR Bundle"):
        read_fhir(tmp_path)


# --- bad input: one error each, naming file and resource, never the patient's data -------------


def test_malformed_json_file_costs_only_itself(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"resourceType": "Bundle", "entry": [', encoding="utf-8")
    write_bundle(tmp_path / "b.json", patient(), observation("o"))
    error, record = read(tmp_path)
    assert isinstance(error, RecordError)
    assert (error.location.path, error.location.line, error.kind) == (
        str(tmp_path / "a.json"),
        1,
        IssueKind.MALFORMED,
    )
    assert "a.json" in error.message
    assert "not valid JSON" in error.message
    assert isinstance(record, SourceRecord)
    assert record.id == "p1"


@pytest.mark.parametrize("found", ["Patient", "Bundel"])
def test_top_level_resource_must_be_a_bundle(tmp_path: Path, found: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"resourceType": found, "id": "p1"}), encoding="utf-8")
    (error,) = read(path)
    assert isinstance(error, RecordError)
    assert f"'{found}'" in error.message
    assert "Bundle is expected" in error.message
    assert "p.json" in error.message


def test_entry_of_unknown_resource_type(tmp_path: Path) -> None:
    organization: Resource = {"resourceType": "Organization", "id": "org-1", "name": "WCH"}
    path = write_bundle(
        tmp_path / "b.json",
        patient(),
        organization,
        {"resourceType": "Observashun", "id": "x1"},
        observation("o"),
    )
    error, record = read(path)
    assert isinstance(error, RecordError)
    assert error.location == Location(str(path), resource="entry[2]")
    assert "b.json" in error.message
    assert "entry[2]" in error.message
    assert "'Observashun'" in error.message
    assert isinstance(record, SourceRecord)
    assert record.observed == (Code(CodeSystem.HPO, "0001250"),)


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        # fhir.resources checks required primitives (status) only once every field is valid.
        ("status", ("status",)),
        ("code", ("code", "effectiveDateTime")),
    ],
)
def test_invalid_resource_rejects_its_patient_without_echoing_values(
    tmp_path: Path, missing: str, named: tuple[str, ...]
) -> None:
    planted: Resource = {"valueString": SECRET}
    if missing == "code":
        planted["effectiveDateTime"] = SECRET
    bad = observation("obs-12") | planted
    del bad[missing]
    path = write_bundle(
        tmp_path / "b.json",
        patient("p1"),
        bad,
        patient("p2"),
        observation("o", subject="Patient/p2"),
    )
    error, record = read(path)
    assert isinstance(error, RecordError)
    assert (error.record, error.kind) == ("p1", IssueKind.MALFORMED)
    assert error.location == Location(str(path), resource="Patient/p1")
    for name in ("b.json", "Observation/obs-12", *named):
        assert name in error.message
    assert "Jane" not in error.message
    assert "Rose" not in error.message
    assert isinstance(record, SourceRecord)
    assert record.id == "p2"


def test_invalid_resource_without_id_is_named_by_entry_index(tmp_path: Path) -> None:
    bad = observation("unused", valueQuantity={"value": SECRET}, subject="Patient/ghost")
    del bad["id"]
    (error,) = read(write_bundle(tmp_path / "b.json", bad))
    assert isinstance(error, RecordError)
    assert error.location.resource == "entry[0]"
    assert "valueQuantity.value" in error.message
    assert SECRET not in error.message


def test_invalid_patient_is_rejected_and_a_repeated_one_is_a_duplicate(tmp_path: Path) -> None:
    path = write_bundle(
        tmp_path / "b.json",
        patient("p1", birthDate=SECRET, gender="female"),
        observation("o"),
        patient("p2"),
        observation("o2", subject="Patient/p2"),
        patient("p2", gender="male"),
    )
    duplicate, invalid, record = read(path)
    assert isinstance(duplicate, RecordError)
    assert (duplicate.record, duplicate.kind) == ("p2", IssueKind.DUPLICATE)
    assert duplicate.location == Location(str(path), resource="Patient/p2")
    assert isinstance(invalid, RecordError)
    assert (invalid.record, invalid.kind) == ("p1", IssueKind.MALFORMED)
    assert "birthDate" in invalid.message
    assert "Jane" not in invalid.message
    assert isinstance(record, SourceRecord)
    assert (record.id, record.sex) == ("p2", None)


def test_dangling_subject_reference(tmp_path: Path) -> None:
    path = write_bundle(
        tmp_path / "b.json",
        patient(),
        observation("obs-9", subject="Patient/ghost"),
        observation("o"),
    )
    error, record = read(path)
    assert isinstance(error, RecordError)
    assert error.location == Location(str(path), resource="Observation/obs-9")
    assert error.record is None
    assert "Observation/obs-9" in error.message
    assert "no Patient" in error.message
    assert isinstance(record, SourceRecord)
    assert record.id == "p1"
