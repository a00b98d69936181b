"""Seeded synthetic rare-disease patients and an unequal consortium of hospitals to hold them.

The generator draws patients from the public disease annotations, the way clinicians record
real cases (Köhler et al., "Clinical diagnostics in human genetics with semantic similarity
searches in ontologies", AJHG 2009, used the same recipe to test phenotype matching):

- **Hidden frequencies.** ``hpo3`` ships no phenotype frequencies, so each disease–phenotype pair
  gets a frequency drawn once from Beta(``frequency_alpha``, ``frequency_beta``), seeded by the
  disease id: some findings are hallmarks, others rare. The model sees only the annotation list;
  what it learns from cases is, among other things, these frequencies.
- **Specific findings are rarer.** A finding's frequency is scaled down by up to
  ``specific_rarity`` with its information-content rank within the disease (hallmark
  general features such as developmental delay are common, very specific ones rare).
- **A patient** of disease *d* shows each annotated finding with its frequency, capped at a
  per-patient number of findings (1 + Poisson(``findings_mean``)).
- **Imprecision.** Each finding is recorded as one of its parents with probability
  ``imprecision`` (a clinician writes "Seizure" for "Focal clonic seizure").
- **Unannotated features.** Public annotations are incomplete: each disease also has
  ``hidden_features`` findings that its annotation lacks (drawn once per disease), shown with their
  own frequencies. In the curated phenopacket-store cases about 17% of observed terms fall outside
  the true disease's propagated annotation; these settings give a similar share.
- **Noise.** 0 + Poisson(``noise_mean``) unrelated findings, drawn from how often terms are
  annotated across the whole catalogue (common findings are common noise).
- **Excluded findings.** Poisson(``excluded_mean``) terms, mostly (``excluded_in_spectrum``)
  annotated features of *d* that this patient does not show, as curators record them (80% of
  the excluded terms of the phenopacket-store cases lie in the true disease's profile); the rest
  contradict nothing about *d*.
- **Age and sex.** Age from the disease's annotated onset (infantile, juvenile, adult...); male
  for most patients of an X-linked disease.

A consortium is a tuple of :class:`HospitalSpec` (name, city, size, speciality). A speciality
multiplies the chance of seeing diseases in its area (a children's hospital sees early-onset
diseases, a neurology centre neurological ones). Rare diseases are referred to a few centres:
each disease is seen at 1 + Poisson(``centres_mean``) hospitals, chosen by size and speciality,
and ``single_site_fraction`` of them at exactly one hospital;
a few appear only in test sets (a patient with a disease no hospital has trained on). Each
hospital keeps ``test_fraction`` of its cases as a held-out test set.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from alliance.data.cases import Case, Sex
from alliance.data.ontology import PHENOTYPIC_ABNORMALITY, Disease, DiseaseCatalogue, Ontology

__all__ = [
    "DEMO_HOSPITALS",
    "CohortConfig",
    "HospitalSpec",
    "SiteCohort",
    "Speciality",
    "generate_consortium",
    "scaled_hospitals",
    "synthesize_patient",
]


class Speciality(enum.Enum):
    """What a hospital is known for; it shapes which diseases its patients have."""

    GENERAL = "general"
    PAEDIATRIC = "paediatric"
    NEUROLOGY = "neurology"
    CARDIOLOGY = "cardiology"
    METABOLIC = "metabolic"
    SKELETAL = "skeletal"


# Top-level HPO branches that define each speciality's area.
_AREA: dict[Speciality, tuple[str, ...]] = {
    Speciality.NEUROLOGY: ("HP:0000707",),
    Speciality.CARDIOLOGY: ("HP:0001626",),
    Speciality.METABOLIC: ("HP:0001939", "HP:0000818"),
    Speciality.SKELETAL: ("HP:0000924",),
}
_EARLY_ONSETS = frozenset(
    {
        "HP:0030674",
        "HP:0011460",
        "HP:0003577",
        "HP:0003623",
        "HP:0003593",
        "HP:0011463",
        "HP:0034199",
    }
)
# Onset term -> (min, max) age at onset in years.
_ONSET_AGES: dict[str, tuple[float, float]] = {
    "HP:0030674": (0.0, 0.05),
    "HP:0011460": (0.0, 0.05),
    "HP:0034199": (0.0, 0.05),
    "HP:0003577": (0.0, 0.1),
    "HP:0003623": (0.0, 0.1),
    "HP:0003593": (0.1, 1.0),
    "HP:0011463": (1.0, 5.0),
    "HP:0003621": (5.0, 15.0),
    "HP:0011462": (16.0, 40.0),
    "HP:0025708": (16.0, 19.0),
    "HP:0003581": (16.0, 60.0),
    "HP:0003596": (40.0, 60.0),
    "HP:0003584": (60.0, 80.0),
}


@dataclass(frozen=True)
class HospitalSpec:
    """One hospital of a (synthetic) consortium."""

    id: str
    name: str
    city: str
    n_cases: int
    speciality: Speciality = Speciality.GENERAL


#: The demo consortium: twelve hospitals, from a national referral centre to a small hospital in
#: Xinjiang. Sizes are total cases (training + test).
DEMO_HOSPITALS: tuple[HospitalSpec, ...] = (
    HospitalSpec("west-china", "West China Hospital", "Chengdu", 1500, Speciality.GENERAL),
    HospitalSpec(
        "pumch", "Peking Union Medical College Hospital", "Beijing", 1300, Speciality.GENERAL
    ),
    HospitalSpec("bch", "Beijing Children's Hospital", "Beijing", 1100, Speciality.PAEDIATRIC),
    HospitalSpec("ruijin", "Ruijin Hospital", "Shanghai", 800, Speciality.METABOLIC),
    HospitalSpec("tiantan", "Beijing Tiantan Hospital", "Beijing", 650, Speciality.NEUROLOGY),
    HospitalSpec("fuwai", "Fuwai Hospital", "Beijing", 450, Speciality.CARDIOLOGY),
    HospitalSpec("xiangya", "Xiangya Hospital", "Changsha", 350, Speciality.GENERAL),
    HospitalSpec(
        "scmc", "Shanghai Children's Medical Center", "Shanghai", 300, Speciality.PAEDIATRIC
    ),
    HospitalSpec("jst", "Beijing Jishuitan Hospital", "Beijing", 200, Speciality.SKELETAL),
    HospitalSpec("qilu", "Qilu Hospital of Shandong University", "Jinan", 150, Speciality.GENERAL),
    HospitalSpec(
        "kunming",
        "First Affiliated Hospital of Kunming Medical University",
        "Kunming",
        80,
        Speciality.NEUROLOGY,
    ),
    HospitalSpec(
        "xinjiang",
        "First Affiliated Hospital of Xinjiang Medical University",
        "Urumqi",
        45,
        Speciality.GENERAL,
    ),
)


def scaled_hospitals(
    scale: float, hospitals: Sequence[HospitalSpec] = DEMO_HOSPITALS
) -> tuple[HospitalSpec, ...]:
    """The consortium with every hospital's size multiplied by ``scale`` (at least 4 cases)."""
    return tuple(replace(h, n_cases=max(4, round(h.n_cases * scale))) for h in hospitals)


@dataclass(frozen=True)
class CohortConfig:
    """Knobs of the generator; every default is documented in the module docstring."""

    seed: int = 7
    n_diseases: int = 600
    min_phenotypes: int = 5
    frequency_alpha: float = 0.6
    frequency_beta: float = 0.8
    findings_mean: float = 6.0
    imprecision: float = 0.25
    specific_rarity: float = 0.7
    hidden_features: int = 4
    noise_mean: float = 1.0
    excluded_mean: float = 3.0
    excluded_in_spectrum: float = 0.8
    speciality_boost: float = 6.0
    prevalence_exponent: float = 1.0
    centres_mean: float = 2.0
    single_site_fraction: float = 0.12
    unseen_fraction: float = 0.03
    test_fraction: float = 0.25


@dataclass(frozen=True)
class SiteCohort:
    """One hospital's cases: its training set and its held-out test set."""

    hospital: HospitalSpec
    train: tuple[Case, ...]
    test: tuple[Case, ...]


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class _PatientModel:
    """The hidden truth of the generator: per-disease frequencies, noise pool, ancestry."""

    def __init__(
        self, ontology: Ontology, catalogue: DiseaseCatalogue, config: CohortConfig
    ) -> None:
        self.ontology = ontology
        self.config = config
        counts: dict[str, int] = {}
        for disease in catalogue.diseases:
            for term in disease.phenotypes:
                counts[term] = counts.get(term, 0) + 1
        self.pool = np.array(sorted(counts))
        weights = np.array([counts[t] for t in self.pool], dtype=np.float64)
        self.pool_p = weights / weights.sum()
        self._spectra: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._parents: dict[str, tuple[str, ...]] = {}

    def spectrum(self, disease: Disease) -> tuple[np.ndarray, np.ndarray]:
        """The disease's true findings (annotated + unannotated) and their frequencies."""
        cached = self._spectra.get(disease.id)
        if cached is not None:
            return cached
        cfg = self.config
        rng = np.random.default_rng(_stable_seed(cfg.seed, "spectrum", disease.id))
        profile = self.ontology.propagate(disease.phenotypes)
        hidden = [
            str(t) for t in rng.choice(self.pool, size=cfg.hidden_features * 3, p=self.pool_p)
        ]
        hidden = list(dict.fromkeys(t for t in hidden if t not in profile))[: cfg.hidden_features]
        terms = np.array([*disease.phenotypes, *hidden])
        freq = rng.beta(cfg.frequency_alpha, cfg.frequency_beta, size=len(terms))
        # Specific (high-IC) findings are rarer in patients than general ones.
        ic = np.array([self.ontology.information_content(str(t)) for t in terms])
        rank = np.argsort(np.argsort(ic)) / max(len(terms) - 1, 1)
        freq = freq * (1.0 - cfg.specific_rarity * rank)
        self._spectra[disease.id] = (terms, freq)
        return terms, freq

    def parents_of(self, term: str) -> tuple[str, ...]:
        """Parents of ``term`` that are still specific phenotypes (cached)."""
        found = self._parents.get(term)
        if found is None:
            found = tuple(
                p
                for p in self.ontology.parents(term)
                if p in self.ontology.phenotype_terms and p != PHENOTYPIC_ABNORMALITY
            )
            self._parents[term] = found
        return found


def synthesize_patient(
    disease: Disease, truth: _PatientModel, rng: np.random.Generator, *, case_id: str
) -> Case:
    """Draw one patient of ``disease`` (see the module docstring for the recipe)."""
    cfg = truth.config
    terms, freq = truth.spectrum(disease)
    shown = terms[rng.random(len(terms)) < freq]
    cap = 1 + int(rng.poisson(cfg.findings_mean))
    if len(shown) == 0:
        shown = terms[[int(np.argmax(freq))]]
    if len(shown) > cap:
        shown = rng.choice(shown, size=cap, replace=False)
    observed: set[str] = set()
    for term in shown:
        parents = truth.parents_of(str(term))
        if parents and rng.random() < cfg.imprecision:
            observed.add(parents[int(rng.integers(len(parents)))])
        else:
            observed.add(str(term))
    n_noise = int(rng.poisson(cfg.noise_mean))
    if n_noise:
        observed.update(str(t) for t in rng.choice(truth.pool, size=n_noise, p=truth.pool_p))
    profile = truth.ontology.propagate(disease.phenotypes)
    absent = [t for t in disease.phenotypes if t not in observed and t not in shown]
    excluded: set[str] = set()
    for _ in range(int(rng.poisson(cfg.excluded_mean))):
        if absent and rng.random() < cfg.excluded_in_spectrum:
            excluded.add(absent[int(rng.integers(len(absent)))])
        else:
            term = str(truth.pool[int(rng.choice(len(truth.pool), p=truth.pool_p))])
            if term not in profile and term not in observed:
                excluded.add(term)
    return Case(
        id=case_id,
        observed=tuple(sorted(observed)),
        excluded=tuple(sorted(excluded)),
        disease_ids=(disease.id,),
        sex=_draw_sex(disease, rng),
        age_years=_draw_age(disease, rng),
    )


def _draw_sex(disease: Disease, rng: np.random.Generator) -> Sex:
    p_male = 0.9 if "x-linked" in disease.name.lower() else 0.5
    return Sex.MALE if rng.random() < p_male else Sex.FEMALE


def _draw_age(disease: Disease, rng: np.random.Generator) -> float:
    known = [_ONSET_AGES[o] for o in disease.onsets if o in _ONSET_AGES]
    low, high = known[int(rng.integers(len(known)))] if known else (0.0, 60.0)
    return round(float(rng.uniform(low, high) + rng.exponential(2.0)), 1)


def _affinity(disease: Disease, ontology: Ontology) -> dict[Speciality, bool]:
    out = {
        Speciality.GENERAL: True,
        Speciality.PAEDIATRIC: bool(set(disease.onsets) & _EARLY_ONSETS),
    }
    for speciality, branches in _AREA.items():
        inside = sum(any(b in ontology.ancestors(t) for b in branches) for t in disease.phenotypes)
        out[speciality] = inside / len(disease.phenotypes) >= 0.4
    return out


def _choose_diseases(catalogue: DiseaseCatalogue, cfg: CohortConfig) -> list[Disease]:
    eligible = [d for d in catalogue.diseases if len(d.phenotypes) >= cfg.min_phenotypes]
    rng = np.random.default_rng(_stable_seed(cfg.seed, "diseases"))
    picks = rng.choice(len(eligible), size=min(cfg.n_diseases, len(eligible)), replace=False)
    return [eligible[int(i)] for i in sorted(picks)]


def generate_consortium(
    ontology: Ontology,
    catalogue: DiseaseCatalogue,
    hospitals: Sequence[HospitalSpec] = DEMO_HOSPITALS,
    config: CohortConfig | None = None,
) -> tuple[SiteCohort, ...]:
    """Generate every hospital's training and test cases (deterministic for a given config).

    Returns
    -------
    tuple of SiteCohort
        In the order of ``hospitals``.
    """
    cfg = config or CohortConfig()
    diseases = _choose_diseases(catalogue, cfg)
    rng = np.random.default_rng(_stable_seed(cfg.seed, "consortium"))
    prevalence = 1.0 / np.arange(1, len(diseases) + 1) ** cfg.prevalence_exponent
    prevalence = prevalence[rng.permutation(len(diseases))]
    kinds = rng.random(len(diseases))
    unseen = kinds < cfg.unseen_fraction
    single = (kinds >= cfg.unseen_fraction) & (
        kinds < cfg.unseen_fraction + cfg.single_site_fraction
    )
    affinity = np.array(
        [
            [area[h.speciality] for h in hospitals]
            for area in (_affinity(d, ontology) for d in diseases)
        ],
        dtype=np.float64,
    )
    weight = prevalence[:, None] * (1.0 + (cfg.speciality_boost - 1.0) * affinity)
    size = np.array([h.n_cases for h in hospitals], dtype=np.float64)
    # Each disease is referred to a few centres, drawn by size and speciality; a single-site
    # disease to exactly one (a never-trained-on disease too, at half the rate), and the last
    # hospital (the smallest, far away) gets its share of single-site diseases, as in the story.
    for i in range(len(diseases)):
        one = bool(single[i] or unseen[i])
        n_centres = 1 if one else min(len(hospitals), 1 + int(rng.poisson(cfg.centres_mean)))
        p_centre = weight[i] * np.sqrt(size)
        centres = rng.choice(
            len(hospitals), size=n_centres, replace=False, p=p_centre / p_centre.sum()
        )
        if single[i] and rng.random() < 0.1:
            centres = np.array([len(hospitals) - 1])
        keep = np.zeros(len(hospitals), dtype=bool)
        keep[centres] = True
        weight[i, ~keep] = 0.0
        weight[i, keep] *= 4.0 if single[i] else (0.5 if unseen[i] else 1.0)
    truth = _PatientModel(ontology, catalogue, cfg)
    cohorts: list[SiteCohort] = []
    for j, hospital in enumerate(hospitals):
        site_rng = np.random.default_rng(_stable_seed(cfg.seed, "site", hospital.id))
        p = weight[:, j] / weight[:, j].sum()
        picks = site_rng.choice(len(diseases), size=hospital.n_cases, p=p)
        cases = [
            synthesize_patient(diseases[int(k)], truth, site_rng, case_id=f"{hospital.id}-{n:05d}")
            for n, k in enumerate(picks)
        ]
        is_test = site_rng.random(len(cases)) < cfg.test_fraction
        is_test |= unseen[picks]
        train = tuple(c for c, t in zip(cases, is_test, strict=True) if not t)
        test = tuple(c for c, t in zip(cases, is_test, strict=True) if t)
        cohorts.append(SiteCohort(hospital, train, test))
    return tuple(cohorts)
