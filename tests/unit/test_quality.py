"""The data-quality report: what it counts, what it suppresses, and what it never shows."""

from __future__ import annotations

import json

from alliance.data.admission import admit
from alliance.data.codes import CodeMapper, parse_code
from alliance.data.ontology import DiseaseCatalogue, Ontology
from alliance.data.quality import QualityReport, protect, suppress
from alliance.data.records import IssueKind, Location, RecordError, SourceRecord

SEIZURE = "HP:0001250"
DELAY = "HP:0001263"
DISEASE = "OMIM:301013"
SECRET_AGE = "fifty-seven and a half"


def record(n: int, *, observed: tuple[str, ...] = (SEIZURE,), **fields: object) -> SourceRecord:
    base: dict[str, object] = {
        "id": f"c{n}",
        "location": Location("cases.csv", n + 1),
        "observed": tuple(parse_code(t) for t in observed),
        "diagnoses": (parse_code(DISEASE),),
        "sex": "F",
        "age": 3.0,
    }
    base.update(fields)
    return SourceRecord(**base)  # type: ignore[arg-type]


def test_suppress_hides_counts_below_the_threshold_but_not_zero() -> None:
    assert [suppress(n, 5) for n in (0, 1, 4, 5, 17)] == [0, "<5", "<5", 5, 17]
    assert suppress(1, 1) == 1


def build(ontology: Ontology, catalogue: DiseaseCatalogue, min_count: int = 5) -> QualityReport:
    stream: list[SourceRecord | RecordError] = [record(n) for n in range(12)]
    stream += [
        record(12, observed=(SEIZURE, DELAY, "NEU-7")),  # an unmapped local code: a warning
        record(13, observed=("NEU-7",)),  # nothing left: rejected
        record(3),  # duplicate id
        record(14, age=SECRET_AGE),  # unreadable age: a warning that must not quote it
        record(15, diagnoses=()),
        RecordError(Location("cases.csv", 40), "not valid JSON (x)"),
    ]
    result = admit(stream, CodeMapper(ontology, catalogue))
    return QualityReport.build(result, source="train: cases.csv", min_count=min_count,
                               catalogue=catalogue)  # fmt: skip


def test_report_counts_and_groups_by_reason(
    ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    report = build(ontology, catalogue, min_count=1)
    assert (report.records, report.loaded, report.rejected) == (18, 14, 4)
    assert report.duplicates == 1
    assert report.missing_age == 1
    assert {r.kind: r.count for r in report.rejections} == {
        IssueKind.NO_PHENOTYPE.value: 1,
        IssueKind.DUPLICATE.value: 1,
        IssueKind.NO_DIAGNOSIS.value: 1,
        IssueKind.MALFORMED.value: 1,
    }
    duplicate = next(r for r in report.rejections if r.kind == IssueKind.DUPLICATE.value)
    assert duplicate.examples == ("cases.csv:4",)
    (unmapped,) = report.unmapped
    assert (unmapped.code, unmapped.count, unmapped.first_seen) == ("NEU-7", 2, "cases.csv:13")
    assert "mapping table" in unmapped.reason
    phenotypes = {(s.role, s.system): (s.distinct, s.mapped, s.unmapped) for s in report.systems}
    assert phenotypes[("phenotype", "HP")] == (2, 2, 0)
    assert phenotypes[("phenotype", "LOCAL")] == (1, 0, 1)
    assert report.diseases == 1
    assert report.catalogue_size == len(catalogue)
    assert dict(report.phenotypes_histogram)["1"] == 13
    assert dict(report.phenotypes_histogram)["2–3"] == 1


def test_small_counts_are_suppressed_in_every_rendering(
    ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    report = build(ontology, catalogue)
    assert report.loaded == 14
    assert report.rejected == "<5"
    assert report.duplicates == "<5"
    assert report.unmapped[0].count == "<5"
    data = report.to_dict()
    assert data["schema"] == "alliance.data.quality/1"
    text = json.dumps(data, ensure_ascii=False)
    page = report.to_html()
    for rendering in (text, page):
        assert '"rejected": 4' not in rendering
        assert SECRET_AGE not in rendering
    assert "&lt;5" in page
    assert "<script" not in page
    assert "Codes that could not be mapped" in page


def test_a_suppressed_part_cannot_be_worked_out_from_its_whole() -> None:
    assert protect([40, 3, 12], 5) == [40, "<5", "*"]  # 12 hidden: 55 - 40 - 12 = 3 otherwise
    assert protect([40, 3, 2], 5) == [40, "<5", "<5"]  # two small parts protect each other
    assert protect([40, 0, 12], 5) == [40, 0, 12]
    assert protect([3], 5) == ["<5"]


def test_records_read_become_a_range_when_rejections_are_suppressed(
    ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    report = build(ontology, catalogue)
    assert report.loaded == 14
    assert report.records == "15–18"  # 14 loaded + 1..4 rejected
