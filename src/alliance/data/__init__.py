"""Patient cases and the public knowledge they are coded in.

- :mod:`~alliance.data.cases`: the common case model;
- :mod:`~alliance.data.ontology`: HPO terms and the OMIM/ORPHA disease catalogue;
- :mod:`~alliance.data.loading` and :mod:`~alliance.data.phenopacket`: case files;
- :mod:`~alliance.data.synth`: the seeded synthetic consortium;
- :mod:`~alliance.data.splits`: splitting real cases by publication.
"""

from alliance.data.cases import Case, Sex
from alliance.data.loading import LoadIssue, LoadResult, load_cases, write_jsonl
from alliance.data.ontology import Disease, DiseaseCatalogue, DiseaseSource, Ontology, load_ontology
from alliance.data.phenopacket import case_to_phenopacket, phenopacket_to_case
from alliance.data.splits import split_by_publication
from alliance.data.synth import (
    DEMO_HOSPITALS,
    CohortConfig,
    HospitalSpec,
    SiteCohort,
    Speciality,
    generate_consortium,
    scaled_hospitals,
)

__all__ = [
    "DEMO_HOSPITALS",
    "Case",
    "CohortConfig",
    "Disease",
    "DiseaseCatalogue",
    "DiseaseSource",
    "HospitalSpec",
    "LoadIssue",
    "LoadResult",
    "Ontology",
    "Sex",
    "SiteCohort",
    "Speciality",
    "case_to_phenopacket",
    "generate_consortium",
    "load_cases",
    "load_ontology",
    "phenopacket_to_case",
    "scaled_hospitals",
    "split_by_publication",
    "write_jsonl",
]
