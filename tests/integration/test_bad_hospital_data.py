"""Bad input from a hospital, one case each: the message names the file and line or resource,
the valid cases still load, and the data-quality report counts what was rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alliance.data.cases import Case, Sex
from alliance.data.compact import write_jsonl
from alliance.data.fhir import write_fhir
from alliance.data.loading import DataSource, LoadResult, read_source
from alliance.data.ontology import DiseaseCatalogue, Ontology
from alliance.data.quality import QualityReport
from alliance.data.records import IssueKind
from alliance.data.tabular import TableLayout, write_table

SEIZURE = "HP:0001250"
DELAY = "HP:0001263"
DISEASE = "OMIM:301013"
CASES = tuple(
    Case(f"p{n}", (SEIZURE, DELAY), (), (DISEASE,), Sex.FEMALE, 2.0 + n) for n in range(6)
)


def load(
    location: Path, ontology: Ontology, catalogue: DiseaseCatalogue
) -> tuple[LoadResult, QualityReport]:
    result = read_source(DataSource(str(location)), ontology=ontology, catalogue=catalogue)
    report = QualityReport.build(result, source=str(location), min_count=1, catalogue=catalogue)
    return result, report


def test_malformed_json_costs_only_its_file(
    tmp_path: Path, ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    write_fhir(CASES, tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"resourceType": "Bundle", "entry": [', encoding="utf-8")
    result, report = load(tmp_path, ontology, catalogue)
    assert result.cases == CASES
    (issue,) = result.issues
    assert issue.path == str(tmp_path / "b.json")
    assert "not valid JSON" in issue.message
    assert "line 1" in issue.message
    assert report.rejected == 1
    assert report.rejections[0].kind == IssueKind.MALFORMED.value


def test_bundle_with_a_wrong_resource_type_names_the_entry(
    tmp_path: Path, ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    path = tmp_path / "bundle.json"
    write_fhir(CASES, path)
    bundle = json.loads(path.read_text(encoding="utf-8"))
    bundle["entry"].append({"resource": {"resourceType": "Patiënt", "id": "x"}})
    path.write_text(json.dumps(bundle), encoding="utf-8")
    result, report = load(path, ontology, catalogue)
    assert result.cases == CASES
    (issue,) = result.issues
    assert issue.path == str(path)
    assert "Patiënt" in str(issue)
    assert "entry" in str(issue)
    assert report.rejected == 1
    # A file that is no Bundle at all is refused, naming what it is.
    path.write_text(json.dumps({"resourceType": "Patient", "id": "p9"}), encoding="utf-8")
    (tmp_path / "ok.jsonl").unlink(missing_ok=True)
    write_jsonl(CASES[:1], tmp_path / "ok.jsonl")
    result, report = load(tmp_path, ontology, catalogue)
    assert result.cases == CASES[:1]
    assert "Bundle" in result.issues[0].message
    assert "Patient" in result.issues[0].message


def test_csv_with_a_missing_column_names_file_line_and_column(
    tmp_path: Path, ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    write_table(CASES[:3], tmp_path / "a.csv", TableLayout())
    (tmp_path / "b.csv").write_text(
        "id,sex,diagnoses\nq1,F,OMIM:301013\n", encoding="utf-8"
    )  # no 'observed' column at all
    lines = (tmp_path / "a.csv").read_text(encoding="utf-8").splitlines()
    lines.append("p9,F")  # a row missing its cells
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result, report = load(tmp_path, ontology, catalogue)
    assert result.cases == CASES[:3]
    row_issue, file_issue = result.issues
    assert (row_issue.path, row_issue.line) == (str(tmp_path / "a.csv"), 5)
    assert file_issue.path == str(tmp_path / "b.csv")
    assert "observed" in file_issue.message
    assert "diagnoses" in file_issue.message
    assert report.rejected == 2


def test_unknown_codes_are_named_with_their_line_and_listed_in_the_report(
    tmp_path: Path, ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    path = tmp_path / "cases.csv"
    write_table(CASES[:2], path, TableLayout())
    with path.open("a", encoding="utf-8") as handle:
        handle.write("p7,F,3.0,HP:0001250;NEU-12,,OMIM:301013\n")  # one unknown local code
        handle.write("p8,F,3.0,HP:9999999,,OMIM:301013\n")  # nothing left
        handle.write("p9,F,3.0,HP:0001250,,OMIM:999999\n")  # disease outside the catalogue
    result, report = load(path, ontology, catalogue)
    assert [case.id for case in result.cases] == ["p0", "p1", "p7"]
    warning, dropped, no_phenotype, no_disease = result.issues
    assert (warning.line, warning.rejected) == (4, False)
    assert warning.kind is IssueKind.UNMAPPED_PHENOTYPE
    assert "NEU-12" in warning.message
    assert (dropped.line, dropped.rejected) == (5, False)
    assert "HP:9999999" in dropped.message
    assert (no_phenotype.line, no_phenotype.kind) == (5, IssueKind.NO_PHENOTYPE)
    assert (no_disease.line, no_disease.kind) == (6, IssueKind.UNMAPPED_DIAGNOSIS)
    assert "OMIM:999999" in no_disease.message
    assert report.rejected == 2
    unmapped = {u.code: u for u in report.unmapped}
    assert set(unmapped) == {"NEU-12", "HP:9999999", "OMIM:999999"}
    assert unmapped["NEU-12"].first_seen == f"{path}:4"


def test_duplicate_ids_across_formats_name_the_first_occurrence(
    tmp_path: Path, ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    write_jsonl(CASES[:3], tmp_path / "a.jsonl")
    write_table(CASES[2:], tmp_path / "b.csv", TableLayout())
    result, report = load(tmp_path, ontology, catalogue)
    assert result.cases == CASES
    (issue,) = result.issues
    assert (issue.path, issue.line, issue.record) == (str(tmp_path / "b.csv"), 2, "p2")
    assert f"{tmp_path / 'a.jsonl'}:3" in issue.message
    assert report.duplicates == 1


@pytest.mark.parametrize("encoding", ["utf-8", "gbk"])
def test_gbk_encoded_text_is_refused_by_line_unless_declared(
    tmp_path: Path, ontology: Ontology, catalogue: DiseaseCatalogue, encoding: str
) -> None:
    path = tmp_path / "cases.csv"
    rows = [
        "id,sex,age,observed,diagnoses,note",
        "p0,F,2.0,HP:0001250,OMIM:301013,",
        "p1,F,3.0,HP:0001250,OMIM:301013,癫痫发作",
        "p2,F,4.0,HP:0001250,OMIM:301013,",
    ]
    path.write_bytes(("\n".join(rows) + "\n").encode("gbk"))
    source = DataSource(str(path), table=TableLayout(encoding=encoding))
    result = read_source(source, ontology=ontology, catalogue=catalogue)
    report = QualityReport.build(result, source=str(path), min_count=1)
    if encoding == "gbk":
        assert [case.id for case in result.cases] == ["p0", "p1", "p2"]
        assert result.issues == ()
        return
    assert [case.id for case in result.cases] == ["p0", "p2"]
    (issue,) = result.issues
    assert (issue.line, issue.kind) == (3, IssueKind.ENCODING)
    assert "gbk" in issue.message.lower()
    assert "癫痫" not in issue.message
    assert report.rejected == 1
    assert report.rejections[0].kind == IssueKind.ENCODING.value
