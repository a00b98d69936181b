"""The rare-disease ranker: prior, learning, unseen diseases, diagnosis, model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alliance.core.errors import DataError, ModelError
from alliance.data.cases import Case
from alliance.data.ontology import DiseaseSource, Ontology
from alliance.data.synth import SiteCohort
from alliance.evaluation.metrics import top_k
from alliance.evaluation.ranking import rank_dataset
from alliance.models.diagnosis import diagnose
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import CaseDataset, PhenotypeRanker
from alliance.models.training import get_weights, train_locally
from alliance.store.modelfile import load_model, save_model


def test_vocabulary_and_labels_come_from_public_knowledge_only(
    features: PhenotypeFeatures, small_consortium: tuple[SiteCohort, ...]
) -> None:
    """The label space is the whole catalogue, not the union of what sites hold."""
    held = {case.disease_ids[0] for c in small_consortium for case in c.train}
    assert len(features.catalogue) > 20 * len(held)
    assert held <= set(features.catalogue.ids)
    assert features.terms == tuple(sorted(features.terms))


def test_prior_ranks_a_disease_from_its_profile_alone(features: PhenotypeFeatures) -> None:
    """An untrained model ranks a disease first for a patient showing its specific findings."""
    catalogue, onto = features.catalogue, features.ontology
    disease = catalogue.get("OMIM:154700")  # Marfan syndrome
    specific = sorted(disease.phenotypes, key=lambda t: -onto.information_content(t))[:8]
    ranked = diagnose(PhenotypeRanker(features), features, specific, top=10)
    assert "OMIM:154700" in [c.disease_id for c in ranked]
    top = next(c for c in ranked if c.disease_id == "OMIM:154700")
    assert set(top.supporting) == set(specific)


def test_training_beats_the_prior_and_generalises_to_other_hospitals(
    features: PhenotypeFeatures, small_consortium: tuple[SiteCohort, ...]
) -> None:
    train = CaseDataset(features.encode([x for c in small_consortium for x in c.train]))
    test = CaseDataset(features.encode([x for c in small_consortium for x in c.test]))
    model = PhenotypeRanker(features, dim=16, seed=1)
    prior = top_k(rank_dataset(model, test, collate_fn=features.collate))
    train_locally(
        model,
        train,
        epochs=4,
        batch_size=32,
        learning_rate=0.01,
        seed=0,
        collate_fn=features.collate,
    )
    trained = top_k(rank_dataset(model, test, collate_fn=features.collate))
    assert trained.top10 > prior.top10 + 0.05
    assert trained.top1 > prior.top1 + 0.05


def test_diagnose_rejects_unknown_and_empty_phenotypes(features: PhenotypeFeatures) -> None:
    model = PhenotypeRanker(features)
    with pytest.raises(DataError, match=r"HP:9999999 is not in HPO release"):
        diagnose(model, features, ["HP:0001250", "HP:9999999"])
    with pytest.raises(DataError, match="not an HPO id"):
        diagnose(model, features, ["seizures"])
    with pytest.raises(DataError, match="at least one observed"):
        diagnose(model, features, [])


def test_obsolete_terms_are_resolved_in_a_diagnosis(features: PhenotypeFeatures) -> None:
    model = PhenotypeRanker(features)
    obsolete = diagnose(model, features, ["HP:0002355", "HP:0001250"], top=5)
    current = diagnose(model, features, ["HP:0001288", "HP:0001250"], top=5)
    assert [c.disease_id for c in obsolete] == [c.disease_id for c in current]


def test_model_file_round_trip(
    tmp_path: Path, features: PhenotypeFeatures, ontology: Ontology
) -> None:
    model = PhenotypeRanker(features, dim=8, seed=5)
    path = save_model(
        tmp_path / "m.alliance",
        model,
        features,
        sources=(DiseaseSource.OMIM,),
        min_phenotypes=3,
        metadata={"note": "test"},
    )
    loaded = load_model(path, ontology)
    assert loaded.metadata == {"note": "test"}
    for name, arr in get_weights(model).items():
        assert np.array_equal(arr, get_weights(loaded.model)[name])
    assert not any(p.name.startswith(".m.alliance") for p in tmp_path.iterdir()), "temp file left"


def test_bad_model_files_are_refused_clearly(tmp_path: Path, ontology: Ontology) -> None:
    with pytest.raises(ModelError, match="cannot read model file"):
        load_model(tmp_path / "missing.alliance", ontology)
    junk = tmp_path / "junk.alliance"
    junk.write_bytes(b"\x80\x04not a model")  # a pickle header must never be unpickled
    with pytest.raises(ModelError, match="not a Guardian Alliance model file"):
        load_model(junk, ontology)


def test_labels_of_cases_outside_the_catalogue_are_refused(features: PhenotypeFeatures) -> None:
    with pytest.raises(DataError, match="not in the study's disease catalogue"):
        features.encode([Case("x", ("HP:0001250",), disease_ids=("OMIM:999999",))])
