"""Shared fixtures: the shipped ontology and a small synthetic consortium."""

from __future__ import annotations

from pathlib import Path

import pytest

from alliance.data.ontology import DiseaseCatalogue, Ontology, load_ontology
from alliance.data.synth import CohortConfig, SiteCohort, generate_consortium, scaled_hospitals
from alliance.models.features import PhenotypeFeatures

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PHENOPACKET_STORE = SHARED_DATA / "phenopacket_store_public.jsonl.gz"


@pytest.fixture(scope="session")
def ontology() -> Ontology:
    return load_ontology()


@pytest.fixture(scope="session")
def catalogue(ontology: Ontology) -> DiseaseCatalogue:
    return ontology.catalogue()


@pytest.fixture(scope="session")
def features(ontology: Ontology, catalogue: DiseaseCatalogue) -> PhenotypeFeatures:
    return PhenotypeFeatures(ontology, catalogue)


@pytest.fixture(scope="session")
def small_consortium(ontology: Ontology, catalogue: DiseaseCatalogue) -> tuple[SiteCohort, ...]:
    """Twelve hospitals at a tenth of the demo's size, 80 diseases."""
    return generate_consortium(
        ontology, catalogue, scaled_hospitals(0.1), CohortConfig(seed=3, n_diseases=80)
    )
