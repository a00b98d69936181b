"""Hospital spreadsheets: layouts, round trips in every format, and one bad row at a time."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from pathlib import Path

import openpyxl
import pytest

import alliance.data.tabular as tabular
from alliance.core.errors import ConfigError, DataError
from alliance.data.admission import admit
from alliance.data.cases import Case, Sex
from alliance.data.codes import Code, CodeMapper, CodeSystem
from alliance.data.ontology import DiseaseCatalogue, Ontology
from alliance.data.records import IssueKind, RecordError, SourceRecord
from alliance.data.synth import SiteCohort
from alliance.data.tabular import (
    RowLayout,
    TableLayout,
    local_labels,
    read_table,
    write_table,
)

CASES = TableLayout()
FINDINGS = TableLayout(layout=RowLayout.FINDING)
SECRET = "Jane Q. Patient"


def hospital_cases(consortium: Sequence[SiteCohort]) -> tuple[Case, ...]:
    site = consortium[0]
    return site.train + site.test


def read(path: Path, layout: TableLayout) -> tuple[list[SourceRecord], list[RecordError]]:
    records: list[SourceRecord] = []
    errors: list[RecordError] = []
    for item in read_table(path, layout):
        (errors if isinstance(item, RecordError) else records).append(item)
    return records, errors


def write_text(path: Path, lines: Sequence[str | bytes]) -> Path:
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() for line in lines))
    return path


def strings(codes: Sequence[Code]) -> tuple[str, ...]:
    return tuple(str(code) for code in codes)


def test_export_list_names_what_the_module_defines() -> None:
    assert sorted(tabular.__all__) == [
        "RowLayout",
        "TableLayout",
        "local_labels",
        "read_table",
        "write_table",
    ]
    assert all(getattr(tabular, name).__doc__ for name in tabular.__all__)


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("cases.csv", CASES),
        ("findings.csv", FINDINGS),
        ("cases.tsv", CASES),
        ("cases.xlsx", CASES),
        ("findings.xlsx", FINDINGS),
        ("findings-gbk.txt", dataclasses.replace(FINDINGS, delimiter=";", encoding="gbk")),
    ],
)
def test_round_trip_keeps_every_field(
    tmp_path: Path,
    small_consortium: Sequence[SiteCohort],
    ontology: Ontology,
    catalogue: DiseaseCatalogue,
    name: str,
    layout: TableLayout,
) -> None:
    cases = hospital_cases(small_consortium)
    path = tmp_path / name
    write_table(cases, path, layout)
    first_bytes = path.read_bytes()
    write_table(cases, path, layout)
    assert path.read_bytes() == first_bytes  # deterministic
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left

    records, errors = read(path, layout)
    assert errors == []
    assert [record.id for record in records] == [case.id for case in cases]
    for record, case in zip(records, cases, strict=True):
        assert Sex.parse(record.sex) == case.sex
        assert record.age == case.age_years
        assert isinstance(record.age, float)
        assert strings(record.observed) == case.observed
        assert strings(record.excluded) == case.excluded
        assert strings(record.diagnoses) == case.disease_ids
    assert local_labels(path, layout) == {}

    result = admit(read_table(path, layout), CodeMapper(ontology, catalogue))
    assert result.issues == ()
    assert result.cases == tuple(dataclasses.replace(case, publication=None) for case in cases)


def test_local_codes_and_labels_round_trip(
    tmp_path: Path, small_consortium: Sequence[SiteCohort]
) -> None:
    cases = hospital_cases(small_consortium)
    terms = sorted({term for case in cases for term in (*case.observed, *case.excluded)})
    local = {term: Code(CodeSystem.LOCAL, f"L{n:04d}") for n, term in enumerate(terms)}
    labels = {code: f"local finding no. {code.value[1:]}" for code in local.values()}
    path = tmp_path / "local.csv"
    write_table(cases, path, FINDINGS, phenotype_codes=local, labels=labels)
    assert "HP:" not in path.read_text()  # phenotypes are written as local codes only

    records, errors = read(path, FINDINGS)
    assert errors == []
    assert [record.id for record in records] == [case.id for case in cases]
    for record, case in zip(records, cases, strict=True):
        assert record.observed == tuple(local[term] for term in case.observed)
        assert record.excluded == tuple(local[term] for term in case.excluded)
        assert strings(record.diagnoses) == case.disease_ids
        assert record.age == case.age_years
        assert Sex.parse(record.sex) == case.sex
    assert local_labels(path, FINDINGS) == labels


def test_finding_rows_of_a_case_are_gathered_wherever_they_are(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "f.csv",
        [
            "ID,Code,Status,Sex,Age\r\n",
            "a,HP:0001250,,F,P3Y6M\r\n",
            "b,NEU-1,yes,,\r\n",
            "\r\n",
            ",,,,\r\n",
            "a,OMIM:154700,,,\r\n",
            "b,HP:0001263,-,m,2\r\n",
            "a,HP:0001263,absent,M,7\r\n",
            "a,,present,,\r\n",
        ],
    )
    records, errors = read(path, FINDINGS)
    assert [(record.id, record.location.line) for record in records] == [("a", 2), ("b", 3)]
    first, second = records
    assert strings(first.observed) == ("HP:0001250",)
    assert strings(first.excluded) == ("HP:0001263",)
    assert strings(first.diagnoses) == ("OMIM:154700",)  # an OMIM code is a diagnosis
    assert (first.sex, first.age) == ("F", "P3Y6M")  # the first non-empty values
    assert second.observed == (Code(CodeSystem.LOCAL, "NEU-1"),)
    assert (second.sex, second.age) == ("m", 2.0)
    (error,) = errors
    assert (str(error.location), error.record) == (f"{path}:9", "a")
    assert "'code' is empty" in error.message


def test_repeated_ids_in_case_layout_are_left_to_admission(tmp_path: Path) -> None:
    path = write_text(tmp_path / "c.csv", ["id,observed\n", "a,X1;X2\n", "a,HP:0001250 ;\n"])
    records, errors = read(path, CASES)
    assert errors == []
    assert [(r.id, r.location.line, strings(r.observed)) for r in records] == [
        ("a", 2, ("X1", "X2")),
        ("a", 3, ("HP:0001250",)),
    ]


def test_missing_required_column_names_it_and_lists_the_header(tmp_path: Path) -> None:
    path = write_text(tmp_path / "c.csv", ["id,sex,hpo terms\n", "a,F,HP:0001250\n"])
    with pytest.raises(DataError) as caught:
        read_table(path, CASES)
    message = str(caught.value)
    assert str(path) in message
    assert "'observed'" in message
    assert '[data.table] observed = "..."' in message
    assert "'id', 'sex', 'hpo terms'" in message
    assert "HP:0001250" not in message


def test_row_with_a_missing_cell_is_rejected_and_the_others_load(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "c.csv",
        ["id,sex,observed\n", "a,F,HP:0001250\n", f"b,{SECRET}\n", "c,M,HP:0001263\n"],
    )
    records, errors = read(path, CASES)
    assert [record.id for record in records] == ["a", "c"]
    (error,) = errors
    assert (str(error.location), error.record) == (f"{path}:3", "b")
    assert error.kind is IssueKind.MALFORMED
    assert "2 cells where the header has 3" in error.message
    assert SECRET not in error.message


def test_unknown_status_is_rejected_with_the_accepted_values(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "f.csv",
        ["id,code,status\n", "a,HP:0001250,+\n", f"a,HP:0001263,{SECRET}\n", "a,HP:0000252,no\n"],
    )
    records, errors = read(path, FINDINGS)
    (record,) = records
    assert strings(record.observed) == ("HP:0001250",)
    assert strings(record.excluded) == ("HP:0000252",)
    (error,) = errors
    assert (str(error.location), error.record) == (f"{path}:3", "a")
    assert "'status'" in error.message
    assert "present, yes, y, 1, true, observed, +" in error.message
    assert "absent, no, n, 0, false, excluded, -" in error.message
    assert SECRET not in error.message


def test_line_in_another_encoding_costs_only_that_line(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "f.csv",
        [
            "\ufeffid,code,label\r\n",
            "a,NEU-1,seizure\r\n",
            b"b,NEU-2," + "癫痫".encode("gbk") + b"\r\n",
            "c,NEU-3,\r\n",
        ],
    )
    records, errors = read(path, FINDINGS)
    assert [record.id for record in records] == ["a", "c"]
    (error,) = errors
    assert error.kind is IssueKind.ENCODING
    assert str(error.location) == f"{path}:3"
    bad_byte = "癫痫".encode("gbk")[0]
    assert f"byte 0x{bad_byte:02X} at character 9 (column 'label')" in error.message
    assert 'set [data.table] encoding = "gbk"' in error.message

    gbk = dataclasses.replace(FINDINGS, encoding="gbk")
    records, errors = read(path, gbk)
    assert (errors, [record.id for record in records]) == ([], ["a", "b", "c"])
    assert local_labels(path, gbk) == {
        Code(CodeSystem.LOCAL, "NEU-1"): "seizure",
        Code(CodeSystem.LOCAL, "NEU-2"): "癫痫",
    }


def test_excel_numbers_read_as_text_and_dates_are_no_age(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "export"
    sheet.append(["id", "observed", "age", "sex"])
    sheet.append([17, 91175000, 3, "F"])
    sheet.append([18.0, "HP:0001250", 2.5, None])
    sheet.append([])
    sheet.append(["c", "HP:0001250", datetime.datetime(2020, 1, 2), "M"])
    path = tmp_path / "hospital.xlsx"
    book.save(path)
    layout = TableLayout(code_system=CodeSystem.SNOMED, sheet="export")
    records, errors = read(path, layout)
    assert [(r.id, r.location.line, r.age, r.sex) for r in records] == [
        ("17", 2, 3.0, "F"),
        ("18", 3, 2.5, None),
    ]
    assert records[0].observed == (Code(CodeSystem.SNOMED, "91175000"),)
    (error,) = errors
    assert (str(error.location), error.record) == (f"{path}:5", "c")
    assert "'age' holds a date" in error.message
    with pytest.raises(DataError, match=r"no sheet 'cases'; set \[data.table\] sheet to one of"):
        read_table(path, TableLayout(sheet="cases"))


def test_layout_from_toml_table() -> None:
    table = {"layout": "finding", "code_system": "hp", "id": "Patient", "encoding": "gbk"}
    assert TableLayout.from_mapping(table, where="site.toml: [data.table]") == TableLayout(
        layout=RowLayout.FINDING, code_system=CodeSystem.HPO, id="Patient", encoding="gbk"
    )


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"colour": "red"}, "site.toml: [data.table] has unknown key(s) colour; accepted: layout"),
        ({"layout": "wide"}, "site.toml: [data.table] layout must be one of 'case', 'finding'"),
        ({"layout": 1}, "site.toml: [data.table] layout must be one of 'case', 'finding'"),
        ({"code_system": "X"}, "site.toml: [data.table] code_system must be one of 'HP', "),
        ({"id": 3}, "site.toml: [data.table] id must be a string"),
        ({"delimiter": ";;"}, "site.toml: [data.table] delimiter must be one character"),
        ({"encoding": "klingon"}, "site.toml: [data.table] encoding 'klingon' is not a known"),
        ({"excluded": "Observed"}, "[data.table] observed and excluded name the same column"),
    ],
)
def test_layout_from_toml_table_names_the_wrong_key(
    table: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        TableLayout.from_mapping(table, where="site.toml: [data.table]")
    assert str(caught.value).startswith(expected) or expected in str(caught.value)


def test_bad_line_inside_a_quoted_cell_costs_that_row(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "c.csv",
        [b"id,observed\n", b'a,"X1;\nX2"\n', b'b,"X3;\n\xff\xfe;\nX4"\n', b"c,X5\n"],
    )
    records, errors = read(path, CASES)
    assert [(r.id, strings(r.observed)) for r in records] == [("a", ("X1", "X2")), ("c", ("X5",))]
    (error,) = errors
    assert (str(error.location), error.kind) == (f"{path}:5", IssueKind.ENCODING)
    assert "inside a quoted cell of the row from line 4" in error.message


def test_utf16_files_are_read_whole_and_named_when_misread(tmp_path: Path) -> None:
    cases = [Case("a", ("HP:0001250",), (), ("OMIM:154700",), Sex.FEMALE, 0.1 + 0.2)]
    utf16 = dataclasses.replace(CASES, encoding="utf-16")
    path = tmp_path / "export.txt"
    write_table(cases, path, utf16)
    (record,) = read_table(path, utf16)
    assert isinstance(record, SourceRecord)
    assert (record.id, record.age, strings(record.diagnoses)) == ("a", 0.1 + 0.2, ("OMIM:154700",))
    with pytest.raises(DataError, match=r'UTF-16.*set \[data.table\] encoding = "utf-16"'):
        read_table(path, CASES)


def test_excel_keeps_text_that_looks_like_a_formula(tmp_path: Path) -> None:
    case = Case("=1+1", ("HP:0001250",), (), (), Sex.MALE, 4.0)
    local = {"HP:0001250": Code(CodeSystem.LOCAL, "=A1")}
    labels = {Code(CodeSystem.LOCAL, "=A1"): "=HYPERLINK(1)"}
    path = tmp_path / "cases.xlsx"
    write_table([case], path, FINDINGS, phenotype_codes=local, labels=labels)
    (record,) = read_table(path, FINDINGS)
    assert isinstance(record, SourceRecord)
    assert (record.id, record.observed) == ("=1+1", (Code(CodeSystem.LOCAL, "=A1"),))
    assert local_labels(path, FINDINGS) == labels


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    path.write_text("previous")
    cases = [Case("a", ("HP:0001250",)), Case("病例-2", ("HP:0001250",))]
    with pytest.raises(DataError, match="case 病例-2: a value cannot be written in ascii"):
        write_table(cases, path, dataclasses.replace(CASES, encoding="ascii"))
    assert [p.name for p in tmp_path.iterdir()] == ["cases.csv"]
    assert path.read_text() == "previous"
    with pytest.raises(ConfigError, match=r"cannot write '\.xls'"):
        write_table(cases, tmp_path / "cases.xls", CASES)
    with pytest.raises(ConfigError, match="only in the finding layout"):
        write_table(cases, path, CASES, labels={})
