"""The OMOP CDM adapter: round trips (CSV, SQLite, PostgreSQL), concept mapping, ages, bad rows.

PostgreSQL runs against ``ALLIANCE_TEST_POSTGRES_URL`` (default: ``postgres`` with trust auth on
``127.0.0.1:5432/test``) in a schema of its own, created and dropped by the test. If the server
cannot be reached that test is skipped, or fails when ``ALLIANCE_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateSchema, DropSchema

import alliance.data.omop as omop
from alliance.core.errors import DataError
from alliance.data.cases import Case, Sex
from alliance.data.codes import Code, CodeSystem
from alliance.data.omop import read_omop, write_omop
from alliance.data.records import IssueKind, Location, RecordError, SourceRecord
from alliance.data.synth import SiteCohort

PG_URL = os.environ.get(
    "ALLIANCE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("ALLIANCE_REQUIRE_POSTGRES") == "1"
SECRET = "Jane Q. Patient, 12 Rose Street"
SEIZURE = Code(CodeSystem.HPO, "0001250")
DEV_DELAY = Code(CodeSystem.HPO, "0001263")
PERSON = "person_id,person_source_value,gender_concept_id,year_of_birth"
OBSERVATION = (
    "observation_id,person_id,observation_concept_id,observation_date,value_as_number,"
    "value_as_string,value_as_concept_id,unit_source_value,observation_source_value"
)
CONDITION = (
    "condition_occurrence_id,person_id,condition_concept_id,condition_start_date,"
    "condition_source_value,condition_status_source_value"
)


def write_table(path: Path, header: str, rows: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in (header, *rows)), encoding="utf-8")
    return path


def omop_folder(
    root: Path,
    *,
    person: Sequence[str] = ("1,p1,8532,2000",),
    observation: Sequence[str] = (),
    condition: Sequence[str] = (),
    concept: Sequence[str] | None = None,
    person_header: str = PERSON,
) -> Path:
    root.mkdir(exist_ok=True)
    write_table(root / "person.csv", person_header, person)
    write_table(root / "observation.csv", OBSERVATION, observation)
    write_table(root / "condition_occurrence.csv", CONDITION, condition)
    if concept is not None:
        write_table(root / "concept.csv", "concept_id,vocabulary_id,concept_code", concept)
    return root


def records(location: str | Path, **kwargs: str) -> list[SourceRecord]:
    items = list(read_omop(location, **kwargs))
    assert all(isinstance(item, SourceRecord) for item in items), items
    return [item for item in items if isinstance(item, SourceRecord)]


def hospital_cases(cohort: SiteCohort) -> list[Case]:
    return [*cohort.train, *cohort.test]


def assert_same_cases(found: Sequence[SourceRecord], cases: Sequence[Case]) -> None:
    assert [record.id for record in found] == [case.id for case in cases]
    for record, case in zip(found, cases, strict=True):
        assert Sex.parse(record.sex) == case.sex
        assert record.age == case.age_years  # exactly: written and read as the same float
        assert tuple(str(code) for code in record.observed) == case.observed
        assert tuple(str(code) for code in record.excluded) == case.excluded
        assert tuple(str(code) for code in record.diagnoses) == case.disease_ids


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh, uniquely named schema on the PostgreSQL test server, dropped afterwards."""
    engine = create_engine(
        PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        shown = make_url(PG_URL).render_as_string(hide_password=True)
        reason = (
            f"PostgreSQL at {shown} is unreachable ({first}); start it or point "
            "ALLIANCE_TEST_POSTGRES_URL at a server"
        )
        if REQUIRE_PG:
            pytest.fail(f"{reason}; ALLIANCE_REQUIRE_POSTGRES=1 makes this a failure")
        pytest.skip(reason)
    name = f"alliance_omop_{uuid.uuid4().hex[:12]}"
    with engine.connect() as conn:
        conn.execute(CreateSchema(name))
    try:
        yield name
    finally:
        with engine.connect() as conn:
            conn.execute(DropSchema(name, cascade=True))
        engine.dispose()


def test_export_list_names_what_the_module_defines() -> None:
    assert sorted(omop.__all__) == ["read_omop", "write_omop"]
    assert all(hasattr(omop, name) for name in omop.__all__)


def test_round_trip_through_a_csv_folder(
    tmp_path: Path, small_consortium: tuple[SiteCohort, ...]
) -> None:
    cases = hospital_cases(small_consortium[0])
    write_omop(cases, tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "condition_occurrence.csv",
        "observation.csv",
        "person.csv",
    ]
    found = records(tmp_path / "a")
    assert_same_cases(found, cases)
    assert found[1].location == Location(str(tmp_path / "a" / "person.csv"), 3, "person_id 2")
    # Fixed dates and ids: the same cases give the same bytes.
    write_omop(cases, tmp_path / "b")
    for name in ("person.csv", "observation.csv", "condition_occurrence.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_round_trip_through_sqlite_replaces_the_tables(
    tmp_path: Path, small_consortium: tuple[SiteCohort, ...]
) -> None:
    cases = hospital_cases(small_consortium[1])
    url = f"sqlite:///{tmp_path / 'omop.db'}"
    write_omop(cases, url)
    found = records(url)
    assert_same_cases(found, cases)
    assert found[0].location == Location("person", None, "person_id 1")
    write_omop(cases[:3], url)  # dropped and created again, not appended to
    assert_same_cases(records(url), cases[:3])


def test_round_trip_through_postgresql_in_a_schema(
    pg_schema: str, small_consortium: tuple[SiteCohort, ...]
) -> None:
    cases = hospital_cases(small_consortium[2])
    write_omop(cases, PG_URL, schema=pg_schema)
    found = records(PG_URL, schema=pg_schema)
    assert_same_cases(found, cases)
    assert found[0].location == Location(f"{pg_schema}.person", None, "person_id 1")
    write_omop(cases[:2], PG_URL, schema=pg_schema)
    assert_same_cases(records(PG_URL, schema=pg_schema), cases[:2])


def test_phenotype_codes_are_written_instead_of_hp_ids(tmp_path: Path) -> None:
    case = Case("c1", ("HP:0001250", "HP:0001263"), ("HP:0000252",), ("ORPHA:558",), Sex.MALE)
    local = Code(CodeSystem.LOCAL, "NEU-017")
    snomed = Code(CodeSystem.SNOMED, "91175000")
    write_omop([case], tmp_path, phenotype_codes={"HP:0001250": local, "HP:0000252": snomed})
    assert ",NEU-017," in (tmp_path / "observation.csv").read_text(encoding="utf-8")
    (record,) = records(tmp_path)
    assert record.observed == (local, DEV_DELAY)
    assert record.excluded == (snomed,)
    assert record.diagnoses == (Code(CodeSystem.ORPHA, "558"),)
    assert record.age is None


@pytest.mark.parametrize(
    ("vocabulary", "concept_code", "expected", "is_diagnosis"),
    [
        ("HPO", "HP:0001250", SEIZURE, False),
        ("SNOMED", "91175000", Code(CodeSystem.SNOMED, "91175000"), False),
        ("OMIM", "154700", Code(CodeSystem.OMIM, "154700"), True),
        ("Orphanet", "558", Code(CodeSystem.ORPHA, "558"), True),
        ("ICD10CM", "Q87.40", Code(CodeSystem.ICD10, "Q87.40"), True),
        ("LOINC", "1234-5", Code(CodeSystem.LOCAL, "LOINC:1234-5"), False),
    ],
)
def test_concept_table_gives_the_code_when_the_source_value_is_empty(
    tmp_path: Path, vocabulary: str, concept_code: str, expected: Code, is_diagnosis: bool
) -> None:
    root = omop_folder(
        tmp_path,
        observation=["1,1,2000000002,2020-01-01,,,,,"],
        condition=["1,1,2000000001,2020-01-01,,"],
        concept=[f"2000000001,{vocabulary},{concept_code}", "2000000002,HPO,HP:0001263", "7,X,y"],
    )
    (record,) = records(root)
    assert record.observed == (DEV_DELAY,) + (() if is_diagnosis else (expected,))
    assert record.diagnoses == ((expected,) if is_diagnosis else ())


def test_source_concept_id_is_preferred_and_a_row_without_any_code_is_an_error(
    tmp_path: Path,
) -> None:
    root = tmp_path / "omop"
    omop_folder(root, concept=["11,HPO,HP:0001250", "12,SNOMED,2667000"])
    write_table(
        root / "observation.csv",
        "person_id,observation_concept_id,observation_source_concept_id,observation_source_value",
        ["1,12,11,", "1,99,0,"],
    )
    (record, error) = read_omop(root)
    assert isinstance(record, SourceRecord)
    assert record.observed == (SEIZURE,)
    assert isinstance(error, RecordError)
    assert error.location == Location(str(root / "observation.csv"), 3)
    assert "observation_source_value" in error.message


@pytest.mark.parametrize(
    ("person_header", "person", "years"),
    [
        ("person_id,birth_datetime", "1,2020-01-01T08:30:00", 1277 / 365.25),
        ("person_id,year_of_birth,month_of_birth,day_of_birth", "1,2020,1,1", 1277 / 365.25),
        ("person_id,year_of_birth,month_of_birth", "1,2020,1", 1263 / 365.25),  # 15 January
        ("person_id,year_of_birth", "1,2020", 1095 / 365.25),  # 1 July
    ],
)
def test_age_from_birth_to_the_latest_date_without_an_age_observation(
    tmp_path: Path, person_header: str, person: str, years: float
) -> None:
    root = omop_folder(
        tmp_path,
        person_header=person_header,
        person=[person],
        observation=["1,1,0,2023-07-01,,,,,HP:0001250", "2,1,0,2021-02-03,,,,,HP:0001263"],
        condition=["1,1,0,2022-05-05,OMIM:154700,"],
    )
    (record,) = records(root)
    assert record.age == pytest.approx(years)
    assert record.sex is None


@pytest.mark.parametrize(
    ("value", "unit", "years"),
    [
        ("3.5", "a", 3.5),
        ("7", "", 7.0),
        ("18", "mo", 1.5),
        ("26", "wk", 182 / 365.25),
        ("10", "d", 10 / 365.25),
    ],
)
def test_age_observation_gives_the_age_in_years(
    tmp_path: Path, value: str, unit: str, years: float
) -> None:
    root = omop_folder(
        tmp_path,
        observation=[
            f"1,1,0,2030-01-01,{value},,,{unit},LOINC:30525-0",
            "2,1,0,2031-01-01,,,,,HP:0001250",
        ],
    )
    (record,) = records(root)
    assert record.age == pytest.approx(years)
    assert record.observed == (SEIZURE,)  # the age is not a phenotype


def test_absent_refuted_and_sex_rules(tmp_path: Path) -> None:
    root = omop_folder(
        tmp_path,
        person=["1,p1,8507,2000", "2,,0,2000", "3,p3,8551,2000", "4,p4,12345,2000"],
        observation=[
            "1,1,0,,,Negative,,,HP:0001250",
            "2,1,0,,,,4132135,,HP:0001263",
            "3,1,0,,,present,,,SNOMEDCT:91175000",
            "4,1,0,,,,,,HP:0001250",
        ],
        condition=[
            "1,1,0,,OMIM:154700,refuted",
            "2,1,0,,ORPHA:558,",
            "3,1,0,,HP:0000252,Refuted",
            "4,1,0,,ICD10:Q87.4,",
            "5,1,0,,NEU-017,",
        ],
    )
    first, second, third, fourth = records(root)
    snomed, local = Code(CodeSystem.SNOMED, "91175000"), Code(CodeSystem.LOCAL, "NEU-017")
    assert first.observed == (snomed, SEIZURE, local)
    assert first.excluded == (
        SEIZURE,
        DEV_DELAY,
        Code(CodeSystem.HPO, "0000252"),
    )
    assert first.diagnoses == (Code(CodeSystem.ORPHA, "558"), Code(CodeSystem.ICD10, "Q87.4"))
    assert (first.id, Sex.parse(first.sex)) == ("p1", Sex.MALE)
    assert (second.id, second.sex) == ("2", None)
    assert Sex.parse(third.sex) is Sex.UNKNOWN_SEX
    assert fourth.sex == "gender_concept_id 12345"


def test_gender_source_value_is_used_when_the_concept_says_nothing(tmp_path: Path) -> None:
    root = omop_folder(
        tmp_path,
        person_header="person_id,gender_concept_id,gender_source_value",
        person=["1,0,F", "2,8532,M"],
    )
    assert [Sex.parse(r.sex) for r in records(root)] == [Sex.FEMALE, Sex.FEMALE]


def test_bad_rows_are_errors_and_other_persons_still_load(tmp_path: Path) -> None:
    root = omop_folder(
        tmp_path,
        person=["1,p1,8532,2000", f'x1,"{SECRET}",8532,2000', "2,p2,8507,2001", "1,p9,8507,1990"],
        observation=[
            "1,1,0,,,,,,HP:0001250",
            f'2,99,0,,,"{SECRET}",,,HP:0001250',
            "3,abc,0,,,,,,HP:0001250",
            "4,2,0,,,,,,HP:0001263",
            "5,2,0,,many,,,a,30525-0",
        ],
        condition=["7,98,0,,OMIM:154700,"],
    )
    items = list(read_omop(root))
    found = [item for item in items if isinstance(item, SourceRecord)]
    errors = [item for item in items if isinstance(item, RecordError)]
    assert [(r.id, r.observed) for r in found] == [
        ("p1", (SEIZURE,)),
        ("p2", (DEV_DELAY,)),
    ]
    people, observations, conditions = (
        str(root / name) for name in ("person.csv", "observation.csv", "condition_occurrence.csv")
    )
    assert [(e.location, e.kind) for e in errors] == [
        (Location(people, 3), IssueKind.MALFORMED),
        (Location(people, 5, "person_id 1"), IssueKind.DUPLICATE),
        (Location(observations, 3, "observation_id 2"), IssueKind.MALFORMED),
        (Location(observations, 4, "observation_id 3"), IssueKind.MALFORMED),
        (Location(observations, 6, "observation_id 5"), IssueKind.BAD_VALUE),
        (Location(conditions, 2, "condition_occurrence_id 7"), IssueKind.MALFORMED),
    ]
    assert items.index(errors[0]) == 1  # person errors stay in the person table's order
    assert "person_id 99 is not in the person table" in errors[2].message
    assert "not an integer" in errors[0].message
    assert "not an integer" in errors[3].message
    assert errors[1].record == "p9"
    assert f"{people}:2" in errors[1].message
    assert all(SECRET not in str(error) for error in errors)


def test_missing_column_names_the_file_and_the_columns_found(tmp_path: Path) -> None:
    root = omop_folder(tmp_path, person_header="id,gender_concept_id", person=["1,8507"])
    with pytest.raises(DataError) as caught:
        read_omop(root)
    message = str(caught.value)
    assert str(root / "person.csv") in message
    assert "person_id" in message
    assert "columns found are id, gender_concept_id" in message


def test_a_headerless_file_never_shows_its_first_row(tmp_path: Path) -> None:
    root = omop_folder(tmp_path, person_header=f"1,{SECRET},8507", person=[])
    with pytest.raises(DataError, match="person_id") as caught:
        read_omop(root)
    assert SECRET not in str(caught.value)


def test_observation_without_any_code_column_is_a_data_error(tmp_path: Path) -> None:
    root = omop_folder(tmp_path)
    write_table(root / "observation.csv", "person_id,observation_date", ["1,2020-01-01"])
    with pytest.raises(DataError, match="observation_source_value or observation_concept_id"):
        read_omop(root)


def test_missing_table_folder_and_undecodable_file_are_data_errors(tmp_path: Path) -> None:
    root = omop_folder(tmp_path / "omop")
    (root / "condition_occurrence.csv").unlink()
    with pytest.raises(DataError, match=r"condition_occurrence\.csv: missing"):
        read_omop(root)
    with pytest.raises(DataError, match="no such folder"):
        read_omop(tmp_path / "nowhere")
    root = omop_folder(tmp_path / "latin1")
    (root / "observation.csv").write_bytes(
        (OBSERVATION + "\n1,1,0,,,Fi\xe8vre,,,HP:0001250\n").encode("latin-1")
    )
    with pytest.raises(DataError, match=r"observation\.csv: not UTF-8"):
        read_omop(root)


def test_utf8_with_byte_order_mark_is_read(tmp_path: Path) -> None:
    root = omop_folder(tmp_path)
    (root / "person.csv").write_bytes(b"\xef\xbb\xbf" + (PERSON + "\n1,pé,8532,2000\n").encode())
    assert [record.id for record in records(root)] == ["pé"]


def test_database_errors_name_the_table_and_create_no_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'omop.db'}"
    write_omop([Case("c1", ("HP:0001250",))], url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE observation"))
    engine.dispose()
    with pytest.raises(DataError, match="table observation is missing") as caught:
        read_omop(url)
    assert "condition_occurrence, person" in str(caught.value)
    with pytest.raises(DataError, match="no such SQLite file"):
        read_omop(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(DataError, match="not a usable database URL"):
        read_omop("nosuchdialect://x")
