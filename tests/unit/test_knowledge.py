"""The knowledge ranker: exactly the plain BMA-Resnik of the reference, exclusions, frequencies,
probabilities, and textbook presentations ranked near the top."""

from __future__ import annotations

import numpy as np
import pytest
from bench.phenomizer_reference import PhenomizerReference

from alliance.core.errors import DataError
from alliance.data.cases import Case
from alliance.data.frequencies import AnnotationFrequencies, find_frequencies, parse_frequency
from alliance.data.ontology import Disease, DiseaseCatalogue, Ontology
from alliance.models.features import PhenotypeFeatures
from alliance.models.knowledge import KnowledgeRanker, probabilities
from alliance.models.ranker import CaseDataset, PhenotypeRanker

MARFAN = "OMIM:154700"
TRIAD = ("HP:0001166", "HP:0001083", "HP:0002616")  # arachnodactyly, ectopia lentis, aortic root


def _frequencies(catalogue: DiseaseCatalogue, seed: int) -> AnnotationFrequencies:
    """Random frequencies for about half of every disease's annotations (0 % included)."""
    rng = np.random.default_rng(seed)
    values = {
        (d.id, t): float(rng.choice([0.0, 0.05, 0.3, 0.7, 1.0]))
        for d in catalogue.diseases
        for t in d.phenotypes
        if rng.random() < 0.5
    }
    return AnnotationFrequencies(values, version="test")


def _rank(scores: np.ndarray, catalogue: DiseaseCatalogue, disease: str) -> int:
    return int((scores >= scores[catalogue.index(disease)]).sum())


@pytest.mark.parametrize(("alpha", "w_exc"), [(0.5, 0.0), (0.8, 0.7)])
def test_scores_equal_the_plain_pairwise_reference(
    ontology: Ontology, catalogue: DiseaseCatalogue, alpha: float, w_exc: float
) -> None:
    freqs = _frequencies(catalogue, seed=1)
    ranker = KnowledgeRanker(
        ontology,
        catalogue,
        frequencies=freqs,
        unknown_frequency=0.6,
        patient_weight=alpha,
        exclusion_weight=w_exc,
    )

    def weight(disease: Disease, term: str) -> float:
        f = freqs.get(disease.id, term)
        return 0.6 if f is None else max(f, 0.01)

    reference = PhenomizerReference(
        ontology, frequency=weight, patient_weight=alpha, exclusion_weight=w_exc
    )
    rng = np.random.default_rng(3)
    sample = sorted(rng.choice(len(catalogue), size=25, replace=False).tolist())
    diseases = [catalogue.diseases[i] for i in sample]
    # Patients mixing annotated terms, their ancestors and terms annotated to no disease.
    pool = sorted(ontology.phenotype_terms)
    for k in range(6):
        source = diseases[k]
        observed = [
            *rng.choice(source.phenotypes, size=min(3, len(source.phenotypes)), replace=False),
            *rng.choice(pool, size=k % 3 + 1, replace=False),
        ]
        parent = ontology.parents(source.phenotypes[0])[0]
        excluded = [*diseases[k + 1].phenotypes[:2], parent]
        # The reference takes phenotypic abnormalities only (the ranker drops other terms).
        excluded = [t for t in dict.fromkeys(excluded) if t in ontology.phenotype_terms]
        observed = list(dict.fromkeys(str(t) for t in observed))
        fast = ranker.scores(observed, excluded)[sample]
        slow = reference.scores(observed, excluded, diseases)
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)


def test_an_excluded_term_in_the_profile_costs_its_ic_times_its_frequency(
    ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    marfan = catalogue.get(MARFAN)
    lens = "HP:0001083"
    assert lens in marfan.phenotypes
    freqs = AnnotationFrequencies({(MARFAN, lens): 0.4}, version="test")
    ranker = KnowledgeRanker(ontology, catalogue, frequencies=freqs, exclusion_weight=0.5)
    plain = ranker.scores(TRIAD[:1] + TRIAD[2:])
    against = ranker.scores(TRIAD[:1] + TRIAD[2:], [lens])
    i = catalogue.index(MARFAN)
    assert plain[i] - against[i] == pytest.approx(0.5 * 0.4 * ontology.information_content(lens))
    # A disease without the term (or anything below it) in its profile pays nothing.
    outside = [
        j for j, d in enumerate(catalogue.diseases) if lens not in ontology.propagate(d.phenotypes)
    ]
    np.testing.assert_array_equal(plain[outside], against[outside])
    # Its rank drops when the patient is known not to have ectopia lentis.
    assert _rank(against, catalogue, MARFAN) > _rank(plain, catalogue, MARFAN)


def test_frequent_findings_weigh_more_in_the_disease_to_patient_direction(
    ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    marfan = catalogue.get(MARFAN)
    lens = "HP:0001083"
    rare = {(MARFAN, t): 0.05 for t in marfan.phenotypes}
    frequent_lens = AnnotationFrequencies({**rare, (MARFAN, lens): 1.0}, version="test")
    rare_lens = AnnotationFrequencies({**rare, (MARFAN, lens): 0.05}, version="test")
    i = catalogue.index(MARFAN)
    high = KnowledgeRanker(ontology, catalogue, frequencies=frequent_lens).scores([lens])[i]
    low = KnowledgeRanker(ontology, catalogue, frequencies=rare_lens).scores([lens])[i]
    assert high > low


def test_frequency_fields_of_the_annotation_file() -> None:
    assert parse_frequency("7/28") == 0.25
    assert parse_frequency("40%") == 0.4
    assert parse_frequency("HP:0040281") == pytest.approx(0.895)
    assert parse_frequency("") is None
    with pytest.raises(ValueError, match="not between 0 and 1"):
        parse_frequency("3/2")
    with pytest.raises(ValueError, match="not a fraction"):
        parse_frequency("often")


def test_unknown_terms_are_a_data_error_and_other_branches_are_ignored(
    ontology: Ontology, catalogue: DiseaseCatalogue
) -> None:
    ranker = KnowledgeRanker(ontology, catalogue)
    with pytest.raises(DataError, match="HP:9999999"):
        ranker.scores(["HP:9999999"])
    # Autosomal dominant inheritance (HP:0000006) is not a phenotypic abnormality.
    np.testing.assert_array_equal(ranker.scores(["HP:0000006"]), np.zeros(len(catalogue)))
    np.testing.assert_array_equal(ranker.scores([*TRIAD, "HP:0000006"]), ranker.scores(list(TRIAD)))


def test_probabilities_are_a_distribution_in_score_order() -> None:
    scores = np.array([[3.0, 1.0, 2.0], [0.0, 0.0, 5.0]])
    p = probabilities(scores, temperature=0.5)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (np.argsort(-p, axis=1) == np.argsort(-scores, axis=1)).all()
    with pytest.raises(ValueError, match="temperature"):
        probabilities(scores, temperature=0)


@pytest.fixture(scope="module")
def ranker(ontology: Ontology, catalogue: DiseaseCatalogue) -> KnowledgeRanker:
    return KnowledgeRanker(ontology, catalogue, frequencies=find_frequencies())


@pytest.mark.parametrize(
    ("terms", "disease", "within"),
    [
        (("HP:0001252", "HP:0008872", "HP:0001513", "HP:0000135"), "OMIM:176270", 3),  # PWS
        (("HP:0007565", "HP:0001067", "HP:0000997", "HP:0009737"), "OMIM:162200", 3),  # NF1
        # Eight diseases carry all three findings in their annotation (Loeys-Dietz 1, 2 and 4,
        # familial ectopia lentis...): the triad alone ties them, Marfan comes 6th.
        (TRIAD, MARFAN, 10),
    ],
)
def test_classic_presentations_rank_their_disease_near_the_top(
    ranker: KnowledgeRanker,
    catalogue: DiseaseCatalogue,
    terms: tuple[str, ...],
    disease: str,
    within: int,
) -> None:
    assert _rank(ranker.scores(terms), catalogue, disease) <= within


def test_textbook_patients_rank_better_than_with_the_cosine_prior(
    ranker: KnowledgeRanker, features: PhenotypeFeatures, catalogue: DiseaseCatalogue
) -> None:
    rng = np.random.default_rng(5)
    eligible = [d for d in catalogue.diseases if len(d.phenotypes) >= 5]
    picked = [eligible[i] for i in rng.choice(len(eligible), size=40, replace=False)]
    cases = [
        Case(d.id, tuple(rng.choice(d.phenotypes, size=5, replace=False)), disease_ids=(d.id,))
        for d in picked
    ]
    truth = [catalogue.index(d.id) for d in picked]
    knowledge = ranker.score_cases(cases)
    model = PhenotypeRanker(features)
    data = CaseDataset(features.encode(cases))
    (obs, exc), _ = features.collate([data[i] for i in range(len(cases))])
    prior = model.prior(obs, exc).detach().numpy()
    top10 = {
        name: np.mean([(s[r] >= s[r, t]).sum() <= 10 for r, t in enumerate(truth)])
        for name, s in (("knowledge", knowledge), ("prior", prior))
    }
    assert top10["knowledge"] >= 0.9
    assert top10["knowledge"] > top10["prior"]
