"""Each demo hospital keeps its cases in its own format; its site reads back exactly its cases.

This is what keeps the demo's table unchanged when the sites load their cases through the
adapters: every format returns the same cases, in the same order, with the same codes and ages.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import PHENOPACKET_STORE

from alliance.data.cases import Case
from alliance.data.loading import DataConfig, SourceFormat, load_cases, read_source
from alliance.data.ontology import DiseaseCatalogue, Ontology
from alliance.data.phenopacket import case_to_phenopacket
from alliance.data.site_files import SITE_FORMATS, SiteFiles, write_site_files
from alliance.data.synth import SiteCohort


@pytest.fixture(scope="module")
def written(
    tmp_path_factory: pytest.TempPathFactory, small_consortium: tuple[SiteCohort, ...],
    ontology: Ontology,
) -> tuple[Path, list[SiteFiles]]:  # fmt: skip
    root = tmp_path_factory.mktemp("hospitals")
    files = [
        write_site_files(c, root / c.hospital.id, index=i, ontology=ontology)
        for i, c in enumerate(small_consortium)
    ]
    return root, files


def test_twelve_hospitals_use_every_format_and_two_use_local_codes(
    written: tuple[Path, list[SiteFiles]],
) -> None:
    _, files = written
    formats = {f.train.format for f in files}
    assert formats >= {
        SourceFormat.PHENOPACKET,
        SourceFormat.FHIR,
        SourceFormat.TABLE,
        SourceFormat.OMOP,
        SourceFormat.COMPACT,
    }
    assert sum(f.train.mapping is not None for f in files) == 2
    assert len({f.description for f in files}) == len(SITE_FORMATS) == 12


def test_every_hospital_reads_back_exactly_its_cases(
    written: tuple[Path, list[SiteFiles]],
    small_consortium: tuple[SiteCohort, ...],
    ontology: Ontology,
    catalogue: DiseaseCatalogue,
) -> None:
    _, files = written
    for cohort, site in zip(small_consortium, files, strict=True):
        for cases, source in ((cohort.train, site.train), (cohort.test, site.test)):
            # A tiny hospital may have no held-out case: its file is empty, and says so.
            result = read_source(
                source, ontology=ontology, catalogue=catalogue, allow_empty=not cases
            )
            assert result.issues == (), (site.description, result.issues[:3])
            assert result.cases == cases, site.description


def test_each_hospital_folder_has_the_data_table_of_its_site_config(
    written: tuple[Path, list[SiteFiles]],
    small_consortium: tuple[SiteCohort, ...],
    ontology: Ontology,
    catalogue: DiseaseCatalogue,
) -> None:
    root, _ = written
    for cohort in small_consortium:
        config = DataConfig.load(root / cohort.hospital.id / "data.toml")
        assert config.test is not None
        result = read_source(
            config.test, ontology=ontology, catalogue=catalogue, allow_empty=not cohort.test
        )
        assert result.cases == cohort.test


def test_real_cases_read_back_through_phenopacket_files(
    tmp_path: Path, ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    """The real published cases, converted back to phenopackets, read as they were written."""
    if not PHENOPACKET_STORE.exists():
        pytest.skip(f"{PHENOPACKET_STORE} is not present")
    compact = load_cases(PHENOPACKET_STORE, ontology=ontology, catalogue=catalogue)
    sample: list[Case] = list(compact.cases[::20])
    folder = tmp_path / "packets"
    folder.mkdir()
    for n, case in enumerate(sample):
        doc = case_to_phenopacket(case)
        (folder / f"{n:05d}.json").write_text(json.dumps(doc), encoding="utf-8")
    result = load_cases(folder, ontology=ontology, catalogue=catalogue)
    assert result.issues == ()
    assert result.cases == tuple(sample)
    assert len(sample) > 350
