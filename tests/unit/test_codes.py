"""Codes as written and their mapping: spellings, the hospital's table, cross-references."""

from __future__ import annotations

from pathlib import Path

import pytest

from alliance.core.errors import DataError, UnknownCodeError
from alliance.data.codes import Code, CodeMapper, CodeRole, CodeSystem, LocalMapping, parse_code
from alliance.data.ontology import DiseaseCatalogue, Ontology

SEIZURE = "HP:0001250"
OBSOLETE = "HP:0002355"  # replaced by HP:0001288
REPLACEMENT = "HP:0001288"
DISEASE = "OMIM:301013"
P, D = CodeRole.PHENOTYPE, CodeRole.DIAGNOSIS


class FakeRelease:
    """Cross-references as an HPO release file would give them."""

    version = "test-release"

    def __init__(self, alt: dict[str, str], xrefs: dict[Code, tuple[str, ...]]) -> None:
        self.alt = alt
        self.xrefs = xrefs

    def primary(self, hpo_id: str) -> str | None:
        return self.alt.get(hpo_id)

    def terms_for(self, code: Code) -> tuple[str, ...]:
        return self.xrefs.get(code, ())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HP:0001250", Code(CodeSystem.HPO, "0001250")),
        (" hp_0001250 ", Code(CodeSystem.HPO, "0001250")),
        ("HPO:0001250", Code(CodeSystem.HPO, "0001250")),
        ("OMIM:154700", Code(CodeSystem.OMIM, "154700")),
        ("MIM:154700", Code(CodeSystem.OMIM, "154700")),
        ("ORPHA:558", Code(CodeSystem.ORPHA, "558")),
        ("Orphanet:558", Code(CodeSystem.ORPHA, "558")),
        ("SNOMEDCT_US:91175000", Code(CodeSystem.SNOMED, "91175000")),
        ("SCTID:91175000", Code(CodeSystem.SNOMED, "91175000")),
        ("icd10:q87.4", Code(CodeSystem.ICD10, "Q87.4")),
        ("UMLS:C0036572", Code(CodeSystem.UMLS, "C0036572")),
        ("NEU-017", Code(CodeSystem.LOCAL, "NEU-017")),
        ("NEU_017", Code(CodeSystem.LOCAL, "NEU_017")),  # only HPO has the underscore form
        ("MONDO:0007915", Code(CodeSystem.LOCAL, "MONDO:0007915")),
    ],
)
def test_parse_code_reads_the_usual_spellings(text: str, expected: Code) -> None:
    assert parse_code(text) == expected


def test_parse_code_default_system_and_display() -> None:
    assert parse_code("91175000", default=CodeSystem.SNOMED) == Code(CodeSystem.SNOMED, "91175000")
    assert str(Code(CodeSystem.HPO, "0001250")) == SEIZURE
    assert str(Code(CodeSystem.LOCAL, "NEU-017")) == "NEU-017"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_mapping_table_reads_targets_and_labels_and_skips_rows_to_fill(tmp_path: Path) -> None:
    table = LocalMapping.read(
        write(
            tmp_path / "map.csv",
            "code,target,label\nNEU-1,HP:0001250,fits\nNEU-2,,floppy baby\n"
            "ICD10:Q87.4,ORPHA:558,Marfan\n",
        )
    )
    assert table.targets == {
        Code(CodeSystem.LOCAL, "NEU-1"): SEIZURE,
        Code(CodeSystem.ICD10, "Q87.4"): "ORPHA:558",
    }
    assert table.labels[Code(CodeSystem.LOCAL, "NEU-2")] == "floppy baby"


def test_mapping_table_errors_name_every_wrong_row(tmp_path: Path) -> None:
    path = write(
        tmp_path / "map.csv",
        "code,target\nA,HP:12\nB,SNOMEDCT:1\nC,HP:0001250\nC,HP:0001263\n,OMIM:1\n",
    )
    with pytest.raises(DataError) as info:
        LocalMapping.read(path)
    message = str(info.value)
    assert str(path) in message
    for line in ("line 2", "line 3", "line 5", "line 6"):
        assert line in message
    assert "line 4" not in message


def test_mapping_table_without_its_columns_or_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="lacks the column"):
        LocalMapping.read(write(tmp_path / "m.csv", "local,hpo\nA,HP:0001250\n"))
    with pytest.raises(DataError, match="not found"):
        LocalMapping.read(tmp_path / "absent.csv")


def test_hpo_ids_resolve_obsolete_ones_and_explain_the_rest(ontology: Ontology) -> None:
    mapper = CodeMapper(ontology)
    assert mapper.map(parse_code(SEIZURE), P) == SEIZURE
    assert mapper.map(parse_code(OBSOLETE), P) == REPLACEMENT
    with pytest.raises(UnknownCodeError, match="not in HPO release"):
        mapper.map(parse_code("HP:9999999"), P)
    with pytest.raises(UnknownCodeError, match="'seizures' is not an HPO id"):
        mapper.map(Code(CodeSystem.HPO, "seizures"), P)
    with pytest.raises(UnknownCodeError, match="not in the mapping table"):
        mapper.map(parse_code("NEU-1"), P)
    with pytest.raises(UnknownCodeError, match="no HPO release file"):
        mapper.map(parse_code("SNOMEDCT:91175000"), P)


def test_alternative_ids_and_cross_references_come_from_the_release(ontology: Ontology) -> None:
    release = FakeRelease(
        {"HP:0000001x": SEIZURE, "HP:0004715": SEIZURE},
        {
            Code(CodeSystem.SNOMED, "91175000"): (SEIZURE,),
            Code(CodeSystem.UMLS, "C1"): (SEIZURE, "HP:0001263"),
            Code(CodeSystem.UMLS, "C2"): (OBSOLETE, REPLACEMENT),  # one current term after all
        },
    )
    mapper = CodeMapper(ontology, references=release)
    assert mapper.map(parse_code("HP:0004715"), P) == SEIZURE
    assert mapper.map(parse_code("SNOMEDCT:91175000"), P) == SEIZURE
    assert mapper.map(parse_code("UMLS:C2"), P) == REPLACEMENT
    with pytest.raises(UnknownCodeError, match="ambiguous"):
        mapper.map(parse_code("UMLS:C1"), P)
    with pytest.raises(UnknownCodeError, match="cross-referenced by no current"):
        mapper.map(parse_code("SNOMEDCT:1"), P)


def test_the_hospitals_table_comes_first_and_roles_are_checked(
    tmp_path: Path, ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    table = LocalMapping.read(
        write(
            tmp_path / "m.csv",
            "code,target\nNEU-1,HP:0001250\nSNOMEDCT:91175000,HP:0001263\nDX-1,OMIM:301013\n"
            f"OLD,{OBSOLETE}\nICD10:Q87.4,OMIM:999999\n",
        )
    )
    mapper = CodeMapper(ontology, catalogue, local=table)
    assert mapper.map(parse_code("NEU-1"), P) == SEIZURE
    assert mapper.map(parse_code("SNOMEDCT:91175000"), P) == "HP:0001263"
    assert mapper.map(parse_code("OLD"), P) == REPLACEMENT
    assert mapper.map(parse_code("DX-1"), D) == DISEASE
    with pytest.raises(UnknownCodeError, match="not an HPO term"):
        mapper.map(parse_code("DX-1"), P)
    with pytest.raises(UnknownCodeError, match="a phenotype"):
        mapper.map(parse_code("NEU-1"), D)
    with pytest.raises(UnknownCodeError, match=r"ICD10:Q87.4 \(mapping table\).*catalogue"):
        mapper.map(parse_code("ICD10:Q87.4"), D)


def test_diagnoses_are_checked_against_the_catalogue(
    ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    mapper = CodeMapper(ontology, catalogue)
    assert mapper.map(parse_code(DISEASE), D) == DISEASE
    assert mapper.map(parse_code("OMIM:0301013"), D) == DISEASE
    with pytest.raises(UnknownCodeError, match="catalogue"):
        mapper.map(parse_code("OMIM:999999"), D)
    with pytest.raises(UnknownCodeError, match="has no one-to-one OMIM or ORPHA id"):
        mapper.map(parse_code("ICD10:Q87.4"), D)
    with pytest.raises(UnknownCodeError, match="'D1' is not an OMIM or ORPHA id"):
        mapper.map(parse_code("D1"), D)
    with pytest.raises(UnknownCodeError, match="not of the form"):
        mapper.map(parse_code("OMIM:abc"), D)


def test_each_code_is_mapped_once(ontology: Ontology, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    resolve = ontology.resolve

    def counting(term: str) -> str:
        calls.append(term)
        return resolve(term)

    monkeypatch.setattr(ontology, "resolve", counting)
    mapper = CodeMapper(ontology)
    for _ in range(3):
        mapper.map(parse_code(SEIZURE), P)
        with pytest.raises(UnknownCodeError):
            mapper.map(parse_code("HP:9999999"), P)
    assert calls == [SEIZURE, "HP:9999999"]


def test_a_row_with_an_empty_target_is_not_mapped_yet_rather_than_missing(
    tmp_path: Path, ontology: Ontology
) -> None:
    table = LocalMapping.read(
        write(tmp_path / "m.csv", "code,target,label\nNEU-2,,肌张力低下\nDX-9,,\n")
    )
    assert table.pending == {Code(CodeSystem.LOCAL, "NEU-2"), Code(CodeSystem.LOCAL, "DX-9")}
    mapper = CodeMapper(ontology, local=table)
    with pytest.raises(UnknownCodeError, match=r"'NEU-2' is not mapped yet: its row in .*m\.csv"):
        mapper.map(parse_code("NEU-2"), P)
    with pytest.raises(UnknownCodeError, match=r"'DX-9' is not mapped yet.*OMIM: or ORPHA: id"):
        mapper.map(parse_code("DX-9"), D)
    with pytest.raises(UnknownCodeError, match="'NEU-3' is not in the mapping table"):
        mapper.map(parse_code("NEU-3"), P)
