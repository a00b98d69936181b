"""Patient cases, the formats hospitals keep them in, and the public knowledge they are coded in.

- :mod:`~alliance.data.cases`: the common case model;
- :mod:`~alliance.data.ontology`: HPO terms and the OMIM/ORPHA disease catalogue;
  :mod:`~alliance.data.hpo_release`: alternative ids, synonyms and cross-references of an HPO
  release file; :mod:`~alliance.data.frequencies`: how often a disease shows each annotated
  phenotype (``phenotype.hpoa``);
- adapters, each turning one format into :mod:`~alliance.data.records`:
  :mod:`~alliance.data.compact` (JSON lines), :mod:`~alliance.data.phenopacket` (GA4GH
  Phenopacket v2), :mod:`~alliance.data.fhir` (FHIR R4 Bundles), :mod:`~alliance.data.tabular`
  (CSV and Excel, over the bytes-level :mod:`~alliance.data.spreadsheet`),
  :mod:`~alliance.data.omop` (OMOP CDM files or database);
- :mod:`~alliance.data.codes`: codes as written and their mapping (the hospital's mapping table);
  :mod:`~alliance.data.suggest`: candidate HPO terms for a local code's label (English or
  Chinese: :mod:`~alliance.data.chinese`), with :mod:`~alliance.data.polarity` keeping terms
  that say the opposite away;
- :mod:`~alliance.data.admission`: the checks every record passes;
  :mod:`~alliance.data.loading`: a hospital's ``[data]`` sources, read and admitted in one call;
- :mod:`~alliance.data.quality`: the data-quality report (``alliance data check``);
- :mod:`~alliance.data.synth`: the seeded synthetic consortium;
  :mod:`~alliance.data.site_files`: each demo hospital's cases in its own format;
  :mod:`~alliance.data.splits`: splitting real cases by publication.
"""

from alliance.data.cases import Case, Sex
from alliance.data.codes import Code, CodeMapper, CodeRole, CodeSystem, LocalMapping, parse_code
from alliance.data.loading import (
    DataConfig,
    DataSource,
    LoadIssue,
    LoadResult,
    SourceFormat,
    load_cases,
    read_source,
    write_jsonl,
)
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
    "Code",
    "CodeMapper",
    "CodeRole",
    "CodeSystem",
    "CohortConfig",
    "DataConfig",
    "DataSource",
    "Disease",
    "DiseaseCatalogue",
    "DiseaseSource",
    "HospitalSpec",
    "LoadIssue",
    "LoadResult",
    "LocalMapping",
    "Ontology",
    "Sex",
    "SiteCohort",
    "SourceFormat",
    "Speciality",
    "case_to_phenopacket",
    "generate_consortium",
    "load_cases",
    "load_ontology",
    "parse_code",
    "phenopacket_to_case",
    "read_source",
    "scaled_hospitals",
    "split_by_publication",
    "write_jsonl",
]
