"""The personalised model: the federated ranker corrected for a hospital's case mix.

The "federated" model here is an untrained ranker (its scores are the public disease profiles,
which know nothing of any hospital's case mix); the hospital is a specialised one of the small
synthetic consortium.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from alliance.data.cases import Case
from alliance.data.synth import SiteCohort
from alliance.evaluation.metrics import top_k
from alliance.evaluation.ranking import rank_dataset
from alliance.models.features import PhenotypeFeatures
from alliance.models.personal import (
    PRIOR_STRENGTHS,
    Personalisation,
    case_mix_bias,
    mix_rankers,
    personalise,
    validation_split,
)
from alliance.models.ranker import CaseDataset, PhenotypeRanker
from alliance.sim.demo_personal import wilson_interval


def dataset(features: PhenotypeFeatures, cases: Sequence[Case]) -> CaseDataset:
    return CaseDataset(features.encode(cases))


def top1(model: PhenotypeRanker, data: CaseDataset, features: PhenotypeFeatures) -> float:
    return top_k(rank_dataset(model, data, collate_fn=features.collate)).top1


def specialised(consortium: tuple[SiteCohort, ...]) -> SiteCohort:
    """The hospital whose training cases are most concentrated on few diseases."""
    sized = [c for c in consortium if len(c.train) >= 30 and len(c.test) >= 10]

    def concentration(c: SiteCohort) -> float:
        counts = Counter(case.disease_ids[0] for case in c.train)
        return sum(n for _, n in counts.most_common(5)) / len(c.train)

    return max(sized, key=concentration)


def test_case_mix_bias_is_shrunk_log_counts() -> None:
    bias = case_mix_bias([0, 0, 0, 2], 4, strength=2.0, alpha=1.0)
    assert bias.dtype == np.float32
    np.testing.assert_allclose(bias, 2.0 * np.log([4.0, 1.0, 2.0, 1.0]), rtol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        case_mix_bias([0], 2, strength=1.0, alpha=0.0)


def test_validation_split_is_seeded_disjoint_and_whole() -> None:
    fit, val = validation_split(50, seed=3)
    again = validation_split(50, seed=3)
    assert np.array_equal(fit, again[0])
    assert np.array_equal(val, again[1])
    assert len(val) == 10
    assert not set(fit) & set(val)
    assert sorted([*fit, *val]) == list(range(50))
    assert len(validation_split(4, seed=3)[1]) == 0  # too few to choose on


def test_prior_correction_improves_a_specialised_hospital_on_its_held_out_cases(
    features: PhenotypeFeatures, small_consortium: tuple[SiteCohort, ...]
) -> None:
    hospital = specialised(small_consortium)
    federated = PhenotypeRanker(features, dim=8, seed=1)
    before = federated.disease_bias.detach().clone()
    train, test = dataset(features, hospital.train), dataset(features, hospital.test)
    model, fit = personalise(
        federated, train, method=Personalisation.PRIOR, collate_fn=features.collate, seed=7
    )
    assert fit.personalised
    assert fit.setting["strength"] > 0
    assert top1(model, test, features) >= top1(federated, test, features) + 0.1
    # The federated model is left as it was; only the disease bias differs.
    assert np.array_equal(federated.disease_bias.detach().numpy(), before.numpy())
    assert np.array_equal(model.term_obs.detach().numpy(), federated.term_obs.detach().numpy())
    assert fit.n_validation == round(0.2 * len(hospital.train))


def test_the_setting_is_chosen_on_validation_cases_fitted_without_them(
    features: PhenotypeFeatures, small_consortium: tuple[SiteCohort, ...]
) -> None:
    """The fit part holds one disease, the validation part another: a prior fitted on the fit
    part only can only hurt the validation cases, so the federated model (strength 0) must be
    chosen. Fitting the candidates on all training cases (validation leaking in) would favour
    the validation disease and choose a positive strength."""
    pool = [case for c in small_consortium for case in c.train]
    by_disease = Counter(case.disease_ids[0] for case in pool)
    (a, _), (b, _) = by_disease.most_common(2)
    cases_a = [case for case in pool if case.disease_ids[0] == a]
    cases_b = [case for case in pool if case.disease_ids[0] == b]
    n_val = min(len(cases_b), len(cases_a) // 4)
    n = n_val * 5
    fit_idx, val_idx = validation_split(n, seed=7)
    assert len(val_idx) == n_val
    arranged: list[Case] = [cases_a[0]] * n
    for i, j in enumerate(fit_idx):
        arranged[j] = cases_a[i % len(cases_a)]
    for i, j in enumerate(val_idx):
        arranged[j] = cases_b[i]
    federated = PhenotypeRanker(features, dim=8, seed=1)
    _, fit = personalise(
        federated,
        dataset(features, arranged),
        method=Personalisation.PRIOR,
        collate_fn=features.collate,
        seed=7,
    )
    assert fit.setting == {"strength": 0.0, "drop": 0.0}
    assert not fit.personalised
    assert set(fit.validation) >= {f"strength={s:g},drop=0" for s in PRIOR_STRENGTHS}


def test_bias_fine_tuning_changes_only_the_disease_bias(
    features: PhenotypeFeatures, small_consortium: tuple[SiteCohort, ...]
) -> None:
    hospital = specialised(small_consortium)
    federated = PhenotypeRanker(features, dim=8, seed=1)
    model, fit = personalise(
        federated,
        dataset(features, hospital.train),
        method=Personalisation.FINETUNE,
        collate_fn=features.collate,
        seed=7,
        learning_rate=0.05,
    )
    assert set(fit.validation) == {"epochs=0", "epochs=1", "epochs=2", "epochs=4"}
    assert np.array_equal(model.term_out.detach().numpy(), federated.term_out.detach().numpy())
    assert all(p.requires_grad for p in model.parameters())
    if fit.personalised:
        assert not np.array_equal(
            model.disease_bias.detach().numpy(), federated.disease_bias.detach().numpy()
        )


def test_a_mix_of_two_rankers_is_one_ranker_with_the_mixed_logits(
    features: PhenotypeFeatures, small_consortium: tuple[SiteCohort, ...]
) -> None:
    a, b = PhenotypeRanker(features, dim=4, seed=1), PhenotypeRanker(features, dim=6, seed=2)
    with torch.no_grad():
        for p in (*a.parameters(), *b.parameters()):
            p.add_(torch.randn_like(p) * 0.3)
    data = dataset(features, small_consortium[0].train[:20])
    (observed, excluded), _ = features.collate([data[i] for i in range(len(data))])
    for weight in (0.0, 0.3, 1.0):
        mixed = mix_rankers(a, b, weight=weight)
        assert mixed.dim == (a.dim if weight == 0 else a.dim + b.dim)
        expected = (1 - weight) * a(observed, excluded) + weight * b(observed, excluded)
        torch.testing.assert_close(mixed(observed, excluded), expected, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="weight"):
        mix_rankers(a, b, weight=1.5)


def test_wilson_interval_brackets_the_proportion() -> None:
    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-3)
    assert high == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0.0, 0) == (0.0, 1.0)
    assert wilson_interval(1.0, 10)[1] == pytest.approx(1.0)
