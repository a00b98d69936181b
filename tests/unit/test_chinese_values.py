"""Chinese hospitals' values: sex, status and kind spelled in Chinese are understood, and a value
that is not names itself, where it was and what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from alliance.data.admission import admit
from alliance.data.cases import SEX_SPELLINGS, Sex, accepted_sex_values, is_unknown_on_purpose
from alliance.data.codes import CodeMapper
from alliance.data.ontology import Ontology
from alliance.data.records import IssueKind, RecordError, SourceRecord
from alliance.data.tabular import RowLayout, TableLayout, read_table

FINDINGS = TableLayout(layout=RowLayout.FINDING)


@pytest.mark.parametrize(
    ("written", "sex"),
    [
        ("男", Sex.MALE),
        ("男性", Sex.MALE),
        (" 女 ", Sex.FEMALE),
        ("女性", Sex.FEMALE),
        ("m", Sex.MALE),
        ("Female", Sex.FEMALE),
        ("其他", Sex.OTHER_SEX),
        ("未知", Sex.UNKNOWN_SEX),
        ("ｍａｌｅ", Sex.MALE),  # full-width letters, as a Chinese input method types them
    ],
)
def test_chinese_and_english_sex_spellings_are_parsed(written: str, sex: Sex) -> None:
    assert Sex.parse(written) is sex


def test_every_spelling_reads_back_as_its_sex_and_is_listed_as_accepted() -> None:
    accepted = accepted_sex_values()
    for sex, spellings in SEX_SPELLINGS.items():
        for spelling in spellings:
            assert Sex.parse(spelling) is sex
            assert (spelling or "empty") in accepted
    assert is_unknown_on_purpose("不详")
    assert is_unknown_on_purpose(None)
    assert not is_unknown_on_purpose("X9")


def _findings(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "findings.csv"
    path.write_text("id,sex,code,status,kind\n" + "".join(r + "\n" for r in rows), "utf-8")
    return path


def test_a_chinese_findings_table_loads_with_its_sex_status_and_kind(
    tmp_path: Path, ontology: Ontology
) -> None:
    path = _findings(
        tmp_path,
        [
            "p1,男,HP:0001250,有,表型",
            "p1,男,HP:0001263,无,表型",
            "p1,男,OMIM:301013,,诊断",
            "p2,女,HP:0001250,阳性,症状",
            "p2,女,OMIM:301013,,疾病",
        ],
    )
    result = admit(read_table(path, FINDINGS), CodeMapper(ontology))
    assert result.issues == ()
    assert [(c.id, c.sex) for c in result.cases] == [("p1", Sex.MALE), ("p2", Sex.FEMALE)]
    assert result.cases[0].excluded == ("HP:0001263",)
    assert result.cases[0].disease_ids == ("OMIM:301013",)


def test_an_unreadable_sex_names_the_value_the_place_and_the_accepted_values(
    tmp_path: Path, ontology: Ontology
) -> None:
    path = _findings(tmp_path, ["p1,男,HP:0001250,,", "p2,X9,HP:0001250,,"])
    result = admit(read_table(path, FINDINGS), CodeMapper(ontology), require_diagnosis=False)
    (issue,) = result.issues
    text = str(issue)
    assert (issue.kind, issue.rejected) == (IssueKind.BAD_VALUE, False)
    assert text.startswith(f"{path}:3: case p2: warning:")
    assert "'X9'" in text
    assert "MALE, M, 男, 男性" in text
    assert "FEMALE, F, 女, 女性" in text


@pytest.mark.parametrize(
    ("column", "cell", "accepted"),
    [("status", "可能", "有, 是, 阳性"), ("kind", "检查", "表型, 症状, 体征")],
)
def test_an_unreadable_status_or_kind_names_the_value_and_the_accepted_ones(
    tmp_path: Path, column: str, cell: str, accepted: str
) -> None:
    row = {"status": f"p1,男,HP:0001250,{cell},", "kind": f"p1,男,HP:0001250,,{cell}"}[column]
    items = list(read_table(_findings(tmp_path, [row]), FINDINGS))
    (error,) = (item for item in items if isinstance(item, RecordError))
    assert str(error.location).endswith("findings.csv:2")
    assert f"column '{column}' holds '{cell}'" in error.message
    assert accepted in error.message
    assert not any(isinstance(item, SourceRecord) for item in items)
