"""Reading case files: formats, per-record error policy, round trips, the real store export."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from tests.conftest import PHENOPACKET_STORE

import alliance.data.loading as loading
import alliance.data.phenopacket as phenopacket
from alliance.core.errors import DataError
from alliance.data.cases import Case, Sex
from alliance.data.loading import LoadIssue, LoadResult, load_cases, write_jsonl
from alliance.data.ontology import DiseaseCatalogue, Ontology
from alliance.data.phenopacket import case_to_phenopacket, phenopacket_to_case

SEIZURE = "HP:0001250"
DEV_DELAY = "HP:0001263"
OBSOLETE = "HP:0002355"  # replaced by HP:0001288
REPLACEMENT = "HP:0001288"
DISEASE = "OMIM:301013"
REAL_FILE = PHENOPACKET_STORE
SECRET = "Jane Q. Patient, 12 Rose Street"


def row(case_id: str = "c1", **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": case_id,
        "sex": "FEMALE",
        "age": "P3Y6M",
        "observed": [SEIZURE],
        "excluded": [],
        "disease_ids": [DISEASE],
        "note": SECRET,
    }
    base.update(fields)
    return base


def write_lines(path: Path, lines: Sequence[object]) -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def load(
    path: Path,
    ontology: Ontology,
    *,
    catalogue: DiseaseCatalogue | None = None,
    require_diagnosis: bool = True,
) -> LoadResult:
    return load_cases(
        path, ontology=ontology, catalogue=catalogue, require_diagnosis=require_diagnosis
    )


def test_export_lists_name_what_the_modules_define() -> None:
    assert sorted(loading.__all__) == [
        "CodeUse",
        "DataConfig",
        "DataSource",
        "LoadIssue",
        "LoadResult",
        "SourceFormat",
        "code_mapper",
        "load_cases",
        "local_labels",
        "read_source",
        "write_jsonl",
    ]
    assert sorted(phenopacket.__all__) == [
        "case_to_phenopacket",
        "phenopacket_to_case",
        "read_phenopackets",
    ]
    for module in (loading, phenopacket):
        assert all(hasattr(module, name) for name in module.__all__)


def test_compact_line_fields_map_to_case(tmp_path: Path, ontology: Ontology) -> None:
    line = row(pmid="PMID:1", sex="male", excluded=[DEV_DELAY], onset="P1Y", cohort="X")
    result = load(write_lines(tmp_path / "a.jsonl", [line]), ontology)
    assert result.cases == (
        Case("c1", (SEIZURE,), (DEV_DELAY,), (DISEASE,), Sex.MALE, 3.5, "PMID:1"),
    )
    assert result.issues == ()
    assert result.rejected == 0


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("P56Y", 56.0),
        ("P3Y6M", 3.5),
        ("P10D", 10 / 365.25),
        ("P2W", 14 / 365.25),
        ("P1.5Y", 1.5),
        ("P0D", 0.0),
        ("P1YT12H", 1 + 0.5 / 365.25),
    ],
)
def test_iso_durations_become_years(
    tmp_path: Path, ontology: Ontology, text: str, years: float
) -> None:
    result = load(write_lines(tmp_path / "a.jsonl", [row(age=text)]), ontology)
    assert result.cases[0].age_years == pytest.approx(years)


def test_age_falls_back_to_onset_and_a_bad_age_only_warns(
    tmp_path: Path, ontology: Ontology
) -> None:
    lines = [
        row("onset-only", age=None, onset="P8M"),
        row("no-age", age=None, onset=None),
        row("bad-age", age="56 years", onset=None),
    ]
    result = load(write_lines(tmp_path / "a.jsonl", lines), ontology)
    ages = {case.id: case.age_years for case in result.cases}
    assert ages == {"onset-only": pytest.approx(8 / 12), "no-age": None, "bad-age": None}
    (issue,) = result.issues
    assert (issue.record, issue.line, issue.rejected) == ("bad-age", 3, False)
    assert "'age'" in issue.message
    assert "'56 years'" in issue.message


def test_unrecognised_sex_warns_and_is_recorded_unknown(tmp_path: Path, ontology: Ontology) -> None:
    lines = [row("a", sex="X9"), row("b", sex=None), row("c", sex="UNKNOWN_SEX")]
    result = load(write_lines(tmp_path / "a.jsonl", lines), ontology)
    assert {case.sex for case in result.cases} == {Sex.UNKNOWN_SEX}
    (issue,) = result.issues
    assert (issue.record, issue.rejected) == ("a", False)
    assert "'X9'" in issue.message


@pytest.mark.parametrize(
    ("bad_line", "expected", "record"),
    [
        ('{"id": "c2", "observed": [', "not valid JSON", None),
        ("[1, 2, 3]", "not an object", None),
        ('{"id": "c2", "age": ' + "9" * 5000 + "}", "not usable JSON", None),
        ("[" * 100_000 + "]" * 100_000, "not usable JSON", None),
        (json.dumps(row("c2", id="")), "'id' is missing or empty", None),
        (json.dumps(row("c2", id=None)), "'id' is missing", None),
        (json.dumps(row("c2", id=7)), "'id' must be a string", None),
        (json.dumps({"id": "c2", "disease_ids": [DISEASE], "note": SECRET}), "'observed'", "c2"),
        (json.dumps(row("c2", observed=SEIZURE)), "'observed' must be a list", "c2"),
        (json.dumps(row("c2", observed=[SEIZURE, 5])), "'observed' must be a list of str", "c2"),
        (json.dumps(row("c2", age=56)), "'age' must be a string", "c2"),
        (json.dumps(row("c2", pmid=["PMID:1"])), "'pmid' must be a string", "c2"),
    ],
)
def test_malformed_line_is_rejected_with_its_line_number(
    tmp_path: Path, ontology: Ontology, bad_line: str, expected: str, record: str | None
) -> None:
    path = write_lines(tmp_path / "a.jsonl", [row("c1"), "", bad_line, row("c3")])
    result = load(path, ontology)
    assert [case.id for case in result.cases] == ["c1", "c3"]
    (issue,) = result.issues
    assert (issue.path, issue.line, issue.record, issue.rejected) == (str(path), 3, record, True)
    assert expected in issue.message
    assert str(issue).startswith(f"{path}:3: ")
    assert SECRET not in str(issue)


def test_unknown_and_malformed_terms_are_dropped_with_a_warning(
    tmp_path: Path, ontology: Ontology
) -> None:
    lines = [
        row("c1", observed=[SEIZURE, "HP:9999999", "seizures"], excluded=["HP:9999998"]),
        row("c2", observed=[OBSOLETE, REPLACEMENT, DEV_DELAY], excluded=[OBSOLETE]),
    ]
    path = write_lines(tmp_path / "a.jsonl", lines)
    result = load(path, ontology)
    first, second = result.cases
    assert first.observed == (SEIZURE,)
    assert first.excluded == ()
    # The obsolete id is resolved silently, and its duplicate collapses.
    assert second.observed == (REPLACEMENT, DEV_DELAY)
    assert second.excluded == (REPLACEMENT,)
    assert result.rejected == 0
    assert [(i.line, i.record, i.rejected) for i in result.issues] == [(1, "c1", False)] * 3
    messages = [str(issue) for issue in result.issues]
    for term in ("HP:9999999", "seizures", "HP:9999998"):
        assert any(term in m and m.startswith(f"{path}:1: ") for m in messages), term


def test_case_without_a_usable_observed_term_is_rejected(
    tmp_path: Path, ontology: Ontology
) -> None:
    lines = [row("c1"), row("c2", observed=["HP:9999999"]), row("c3", observed=[])]
    result = load(write_lines(tmp_path / "a.jsonl", lines), ontology)
    assert [case.id for case in result.cases] == ["c1"]
    assert [(i.record, i.rejected) for i in result.issues] == [
        ("c2", False),
        ("c2", True),
        ("c3", True),
    ]
    assert "HP:9999999" in result.issues[0].message
    assert "observed" in result.issues[1].message


def test_unknown_disease_is_rejected_when_a_catalogue_is_given(
    tmp_path: Path, ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    lines = [row("c1"), row("c2", disease_ids=["OMIM:999999"]), row("c3", disease_ids=["D1"])]
    path = write_lines(tmp_path / "a.jsonl", lines)
    result = load(path, ontology, catalogue=catalogue)
    assert [case.id for case in result.cases] == ["c1"]
    assert [(i.line, i.record, i.rejected) for i in result.issues] == [
        (2, "c2", True),
        (3, "c3", True),
    ]
    assert "OMIM:999999" in result.issues[0].message
    assert "catalogue" in result.issues[0].message
    assert "'D1'" in result.issues[1].message
    # Without a catalogue a well-formed id is kept; a malformed one is still refused.
    without = load(path, ontology)
    assert [case.id for case in without.cases] == ["c1", "c2"]
    assert [i.record for i in without.issues] == ["c3"]


def test_diagnosis_is_required_unless_told_otherwise(tmp_path: Path, ontology: Ontology) -> None:
    lines = [row("c1"), row("c2", disease_ids=[]), {"id": "c3", "observed": [SEIZURE]}]
    path = write_lines(tmp_path / "a.jsonl", lines)
    strict = load(path, ontology)
    assert [case.id for case in strict.cases] == ["c1"]
    assert [(i.record, i.rejected) for i in strict.issues] == [("c2", True), ("c3", True)]
    assert "require_diagnosis=False" in strict.issues[0].message
    lenient = load(path, ontology, require_diagnosis=False)
    assert [case.disease_ids for case in lenient.cases] == [(DISEASE,), (), ()]
    assert lenient.issues == ()


def test_duplicate_case_id_rejects_the_later_record(tmp_path: Path, ontology: Ontology) -> None:
    path = write_lines(tmp_path / "a.jsonl", [row("c1"), row("c2"), row("c1", age="P9Y")])
    result = load(path, ontology)
    assert [(case.id, case.age_years) for case in result.cases] == [("c1", 3.5), ("c2", 3.5)]
    (issue,) = result.issues
    assert (issue.line, issue.record, issue.rejected) == (3, "c1", True)
    assert f"{path}:1" in issue.message


def test_duplicates_are_found_across_the_files_of_a_folder(
    tmp_path: Path, ontology: Ontology
) -> None:
    write_lines(tmp_path / "a.jsonl", [row("c1")])
    write_lines(tmp_path / "b.jsonl", [row("c1"), row("c2")])
    result = load(tmp_path, ontology)
    assert [case.id for case in result.cases] == ["c1", "c2"]
    (issue,) = result.issues
    assert (issue.path, issue.line) == (str(tmp_path / "b.jsonl"), 1)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
@pytest.mark.parametrize("name", ["cases.jsonl", "cases.json"])
def test_empty_file_raises_naming_path_and_format(
    tmp_path: Path, ontology: Ontology, content: str, name: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="empty") as info:
        load(path, ontology)
    assert str(path) in str(info.value)
    # The message names the format the file was read as.
    assert (".jsonl" if name.endswith(".jsonl") else "Phenopacket v2 file (.json)") in str(
        info.value
    )


def test_empty_gzip_file_raises(tmp_path: Path, ontology: Ontology) -> None:
    path = tmp_path / "cases.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n"))
    with pytest.raises(DataError, match="empty"):
        load(path, ontology)


def test_folder_without_case_files_raises(tmp_path: Path, ontology: Ontology) -> None:
    (tmp_path / "notes.txt").write_text("not cases", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    write_lines(tmp_path / "sub" / "nested.jsonl", [row()])
    with pytest.raises(DataError, match="no case file") as info:
        load(tmp_path, ontology)
    assert str(tmp_path) in str(info.value)
    assert ".jsonl" in str(info.value)


def test_missing_path_raises_naming_it(tmp_path: Path, ontology: Ontology) -> None:
    path = tmp_path / "absent.jsonl"
    with pytest.raises(DataError, match="no such file") as info:
        load(path, ontology)
    assert str(path) in str(info.value)


def test_unsupported_file_type_raises(tmp_path: Path, ontology: Ontology) -> None:
    path = tmp_path / "cases.xml"
    path.write_text("<cases/>\n", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported file type"):
        load(path, ontology)


def test_a_table_with_only_its_header_raises_naming_it(tmp_path: Path, ontology: Ontology) -> None:
    path = tmp_path / "cases.csv"
    path.write_text("id,observed\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no case record") as info:
        load(path, ontology)
    assert str(path) in str(info.value)


def test_corrupt_gzip_raises_naming_the_file(tmp_path: Path, ontology: Ontology) -> None:
    path = tmp_path / "cases.jsonl.gz"
    path.write_bytes(gzip.compress(json.dumps(row()).encode() * 50)[:40])
    with pytest.raises(DataError, match="cannot read") as info:
        load(path, ontology)
    assert str(path) in str(info.value)


def test_all_records_rejected_raises_with_count_and_first_three_issues(
    tmp_path: Path, ontology: Ontology
) -> None:
    lines = ["{oops", row("c2", observed=[]), row("c3", disease_ids=[]), row("c4", id=None)]
    path = write_lines(tmp_path / "a.jsonl", lines)
    with pytest.raises(DataError) as info:
        load(path, ontology)
    message = str(info.value)
    assert str(path) in message
    assert "4 records" in message
    assert f"{path}:1:" in message
    assert f"{path}:2:" in message
    assert f"{path}:3:" in message
    assert f"{path}:4:" not in message
    assert SECRET not in message


def test_issue_renders_as_path_line_message() -> None:
    with_line = LoadIssue("a.jsonl", 7, "c1", "observed term dropped", rejected=False)
    assert str(with_line) == "a.jsonl:7: case c1: warning: observed term dropped"
    whole_file = LoadIssue("p.json", None, None, "not valid JSON", rejected=True)
    assert str(whole_file) == "p.json: rejected: not valid JSON"


# --- round trips -------------------------------------------------------------------------------


CASES = (
    Case("a", (SEIZURE, DEV_DELAY), (REPLACEMENT,), (DISEASE,), Sex.FEMALE, 3.5, "PMID:1"),
    Case("b", (SEIZURE,), (), (DISEASE,), Sex.MALE, 56.0, None),
    Case("c", (DEV_DELAY,), (), (DISEASE,), Sex.UNKNOWN_SEX, None, "PMID:2"),
    Case("d", (SEIZURE,), (), (DISEASE,), Sex.OTHER_SEX, 10 / 365.25, None),
    Case("e", (SEIZURE,), (), (DISEASE,), Sex.MALE, 0.123456789, None),
    Case("f", (SEIZURE,), (), (DISEASE,), Sex.MALE, 3 + 6 / 12 + 10 / 365.25, None),
    Case("g", (SEIZURE,), (), (DISEASE,), Sex.FEMALE, 0.0, None),
    Case("h", (SEIZURE,), (), (DISEASE,), Sex.FEMALE, 1e-9, None),
)


@pytest.mark.parametrize("name", ["cases.jsonl", "cases.jsonl.gz"])
def test_write_jsonl_then_load_gives_equal_cases(
    tmp_path: Path, ontology: Ontology, catalogue: DiseaseCatalogue, name: str
) -> None:
    path = tmp_path / name
    write_jsonl(iter(CASES), path)
    result = load(path, ontology, catalogue=catalogue)
    assert result.cases == CASES
    assert result.issues == ()
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_write_jsonl_is_deterministic_and_compact(tmp_path: Path) -> None:
    write_jsonl(CASES, tmp_path / "one.jsonl.gz")
    write_jsonl(CASES, tmp_path / "two.jsonl.gz")
    assert (tmp_path / "one.jsonl.gz").read_bytes() == (tmp_path / "two.jsonl.gz").read_bytes()
    write_jsonl(CASES[:1], tmp_path / "plain.jsonl")
    first = json.loads((tmp_path / "plain.jsonl").read_text(encoding="utf-8"))
    assert first == {
        "id": "a",
        "pmid": "PMID:1",
        "sex": "FEMALE",
        "age": "P3Y6M",
        "observed": [SEIZURE, DEV_DELAY],
        "excluded": [REPLACEMENT],
        "disease_ids": [DISEASE],
    }


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    write_jsonl(CASES, path)
    before = path.read_bytes()

    def cases_then_failure() -> Iterator[Case]:
        yield CASES[0]
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        write_jsonl(cases_then_failure(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cases.jsonl"]


def test_phenopacket_file_round_trip(
    tmp_path: Path, ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    for case in CASES:
        (tmp_path / f"{case.id}.json").write_text(
            json.dumps(case_to_phenopacket(case)), encoding="utf-8"
        )
        single = load(tmp_path / f"{case.id}.json", ontology, catalogue=catalogue)
        assert single.cases == (case,)
    folder = load(tmp_path, ontology, catalogue=catalogue)
    assert folder.cases == CASES
    assert folder.issues == ()


def test_phenopacket_list_file_and_mixed_folder(tmp_path: Path, ontology: Ontology) -> None:
    docs = [case_to_phenopacket(case) for case in CASES[:3]]
    (tmp_path / "a_list.json").write_text(json.dumps(docs), encoding="utf-8")
    write_jsonl(CASES[3:], tmp_path / "b_rest.jsonl.gz")
    (tmp_path / "._a_list.json").write_bytes(b"\x00\x05\x16\x07")  # macOS leftovers are skipped
    assert load(tmp_path / "a_list.json", ontology).cases == CASES[:3]
    assert load(tmp_path, ontology).cases == CASES


def test_phenopacket_document_shape() -> None:
    doc = case_to_phenopacket(CASES[0])
    assert doc["id"] == "a"
    assert doc["subject"] == {
        "id": "a",
        "sex": "FEMALE",
        "timeAtLastEncounter": {"age": {"iso8601duration": "P3Y6M"}},
    }
    assert doc["phenotypicFeatures"] == [
        {"type": {"id": SEIZURE}},
        {"type": {"id": DEV_DELAY}},
        {"type": {"id": REPLACEMENT}, "excluded": True},
    ]
    assert doc["diseases"] == [{"term": {"id": DISEASE}}]
    meta = doc["metaData"]
    assert isinstance(meta, dict)
    assert meta["phenopacketSchemaVersion"] == "2.0"
    assert meta["externalReferences"] == [{"id": "PMID:1"}]
    assert [r["namespacePrefix"] for r in meta["resources"]] == ["HP", "OMIM"]


def test_phenopacket_reads_interpretations_and_disease_onset() -> None:
    doc: dict[str, object] = {
        "id": "p1",
        "subject": {"id": "p1", "sex": "MALE"},
        "phenotypicFeatures": [{"type": {"id": SEIZURE, "label": "Seizure"}}],
        "diseases": [
            {"term": {"id": "OMIM:100000"}, "excluded": True},
            {"term": {"id": DISEASE}, "onset": {"age": {"iso8601duration": "P2Y"}}},
        ],
    }
    case = phenopacket_to_case(doc, where="doc")
    assert (case.disease_ids, case.age_years, case.sex) == ((DISEASE,), 2.0, Sex.MALE)
    doc.pop("diseases")
    doc["interpretations"] = [
        {"id": "i1", "progressStatus": "UNSOLVED", "diagnosis": {"disease": {"id": "OMIM:1"}}},
        {"id": "i2", "progressStatus": "SOLVED", "diagnosis": {"disease": {"id": DISEASE}}},
    ]
    assert phenopacket_to_case(doc, where="doc").disease_ids == (DISEASE,)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"id": None}, "'id' is missing"),
        ({"phenotypicFeatures": [{"excluded": True}]}, "'phenotypicFeatures[0].type' is missing"),
        (
            {"phenotypicFeatures": [{"type": {"id": 5}}]},
            "'phenotypicFeatures[0].type.id' must be a string",
        ),
        ({"diseases": [{"term": {}}]}, "'diseases[0].term.id' is missing"),
        ({"subject": {"sex": 1}}, "'subject.sex' must be a string"),
        ({"diseases": "OMIM:1"}, "'diseases' must be a list"),
        ({"subject": {"timeAtLastEncounter": {"age": {"iso8601duration": "old"}}}}, "ISO-8601"),
    ],
)
def test_malformed_phenopacket_raises_naming_where(
    change: dict[str, object], expected: str
) -> None:
    doc = case_to_phenopacket(CASES[0]) | change
    with pytest.raises(DataError, match=r"^somewhere\.json: ") as info:
        phenopacket_to_case(doc, where="somewhere.json")
    assert expected in str(info.value)


def test_bad_phenopacket_in_a_folder_costs_only_itself(tmp_path: Path, ontology: Ontology) -> None:
    (tmp_path / "a.json").write_text(json.dumps(case_to_phenopacket(CASES[0])), encoding="utf-8")
    (tmp_path / "b.json").write_text('{"id": "b", ', encoding="utf-8")
    docs = [case_to_phenopacket(CASES[1]), {"id": "x", "phenotypicFeatures": 3}]
    (tmp_path / "c.json").write_text(json.dumps(docs), encoding="utf-8")
    result = load(tmp_path, ontology)
    assert result.cases == CASES[:2]
    assert [(Path(i.path).name, i.line, i.record, i.resource) for i in result.issues] == [
        ("b.json", None, None, None),
        ("c.json", None, "x", "list entry 1"),
    ]
    assert "not valid JSON" in result.issues[0].message
    assert str(result.issues[1]).startswith(f"{tmp_path / 'c.json'} (list entry 1): case x: ")


# --- the real phenopacket-store export ---------------------------------------------------------


def test_real_phenopacket_store_file_loads(
    ontology: Ontology, catalogue: DiseaseCatalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not REAL_FILE.exists():
        pytest.skip(f"{REAL_FILE} is not present")
    calls: list[str] = []
    resolve = ontology.resolve

    def counting_resolve(term_id: str) -> str:
        calls.append(term_id)
        return resolve(term_id)

    # Speed is measured in bench/, never asserted as wall-clock; what keeps the load fast is
    # resolving each distinct term once, which is deterministic and checked here.
    monkeypatch.setattr(ontology, "resolve", counting_resolve)
    result = load_cases(REAL_FILE, ontology=ontology, catalogue=catalogue)
    assert len(calls) == len(set(calls))
    assert len(result.cases) >= 7_500
    assert len({case.id for case in result.cases}) == len(result.cases)
    rejected = [issue for issue in result.issues if issue.rejected]
    assert len(rejected) == result.rejected == 9_302 - len(result.cases)
    about_diseases = [i for i in rejected if "unknown disease" in i.message]
    assert len(about_diseases) >= 0.95 * len(rejected)
    for issue in about_diseases:
        assert issue.record is not None
        assert issue.line is not None
        assert "OMIM:" in issue.message
        assert "catalogue" in issue.message
    assert all(case.observed and case.disease_ids for case in result.cases)
