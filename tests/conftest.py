"""Shared fixtures: the shipped ontology and a small synthetic consortium; the order in which
the two CI workers take the test files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from alliance.data.ontology import DiseaseCatalogue, Ontology, load_ontology
from alliance.data.synth import CohortConfig, SiteCohort, generate_consortium, scaled_hospitals
from alliance.models.features import PhenotypeFeatures
from tests.cli_logging import kept_logging  # noqa: F401 - autouse: for every test

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PHENOPACKET_STORE = SHARED_DATA / "phenopacket_store_public.jsonl.gz"

#: The slowest test files, slowest first (``--durations`` on the 2-core machine). Under
#: ``--dist loadfile --no-loadscope-reorder`` (``scripts/check``) a worker takes whole files in
#: collection order whenever it frees up: meeting the longest files first, rather than last
#: (xdist's default order is by number of tests, which puts these few-test files at the end),
#: leaves only short files for the end, so the two workers finish close together.
SLOWEST_FIRST = (
    "tests/e2e/test_deployment.py",
    "tests/e2e/test_demo_claims.py",
    "tests/e2e/test_offline_deployment.py",
    "tests/e2e/test_private_deployment.py",
    "tests/integration/test_api_fuzz.py",
    "tests/e2e/test_request_deployment.py",
    "tests/e2e/test_files_crash.py",
    "tests/integration/test_lying_coordinator_on_files.py",
    "tests/integration/test_lying_coordinator_online.py",
    "tests/unit/test_secagg_round.py",
    "tests/integration/test_offline_sites.py",
    "tests/integration/test_privacy_attacks.py",
    "tests/integration/test_async_offline.py",
    "tests/integration/test_secure_federation.py",
    "tests/e2e/test_crl_renewal.py",
    "tests/e2e/test_clinic_browser.py",
)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Two workers on two cores: one torch thread each, not two threads fighting per core.
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the files of :data:`SLOWEST_FIRST` first, in that order; the rest keep theirs."""
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


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
