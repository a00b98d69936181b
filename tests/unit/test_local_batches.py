"""The local training loop builds its batches by indexing the whole site's data, and trains the
same model, to the bit, as the DataLoader loop it replaced (written here as the reference)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from alliance.data.ontology import DiseaseCatalogue, Ontology
from alliance.data.synth import CohortConfig, generate_consortium, scaled_hospitals
from alliance.models.features import EncodedCases, PhenotypeFeatures, SparseProduct
from alliance.models.ranker import CaseDataset, PhenotypeRanker
from alliance.models.training import (
    Optimiser,
    call_model,
    get_weights,
    index_batches,
    shuffled_order,
    train_locally,
)


def dataloader_loop(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    proximal_mu: float = 0.0,
    optimiser: Optimiser = Optimiser.ADAM,
) -> float:
    """``train_locally`` as it was: Adam over a DataLoader of single items (the reference)."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=gen, collate_fn=collate_fn
    )
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt = optimiser.build(params, learning_rate=0.01, weight_decay=0.001)
    model.train()
    total = 0.0
    for _ in range(epochs):
        for inputs, targets in loader:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(call_model(model, inputs), targets)
            if proximal_mu > 0:
                loss = loss + 0.5 * proximal_mu * sum(
                    ((p - s) ** 2).sum() for p, s in zip(params, start, strict=True)
                )
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach())
    return total


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    wa, wb = get_weights(a), get_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert np.array_equal(wa[name], wb[name]), name


def mlp_data(n: int = 150, classes: int = 30) -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(classes, 20, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(torch.randn(n, 20, generator=gen) + centres[y], y)


def mlp(classes: int = 30) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, classes))


@pytest.fixture(scope="module")
def small_ranker_study(ontology: Ontology) -> tuple[PhenotypeFeatures, CaseDataset]:
    """40 catalogue diseases, their vocabulary and their synthetic cases."""
    full = ontology.catalogue()
    catalogue = DiseaseCatalogue(full.diseases[:40], hpo_version=full.hpo_version)
    features = PhenotypeFeatures(ontology, catalogue)
    cohorts = generate_consortium(
        ontology, catalogue, scaled_hospitals(0.02), CohortConfig(seed=3, n_diseases=40)
    )
    return features, CaseDataset(features.encode([x for c in cohorts for x in c.train]))


@pytest.mark.parametrize("n", [1, 7, 32, 64, 100])
def test_epoch_order_draws_what_the_dataloader_draws(n: int) -> None:
    ours, theirs = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    loader = DataLoader(
        TensorDataset(torch.arange(n)), batch_size=32, shuffle=True, generator=theirs
    )
    for _ in range(3):
        expected = torch.cat([batch for (batch,) in loader])
        assert torch.equal(shuffled_order(n, ours), expected)
        assert torch.equal(ours.get_state(), theirs.get_state())


@pytest.mark.parametrize(
    ("epochs", "batch_size", "mu", "optimiser"),
    [(1, 32, 0.0, Optimiser.ADAM), (3, 16, 0.1, Optimiser.ADAM), (2, 64, 0.0, Optimiser.SGD)],
)
def test_mlp_trains_to_the_bit_as_the_dataloader_loop(
    epochs: int, batch_size: int, mu: float, optimiser: Optimiser
) -> None:
    data = mlp_data()
    fast, reference = mlp(), mlp()
    result = train_locally(
        fast,
        data,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=0.01,
        weight_decay=0.001,
        proximal_mu=mu,
        seed=3,
        optimiser=optimiser,
    )
    total = dataloader_loop(
        reference,
        data,
        epochs=epochs,
        batch_size=batch_size,
        seed=3,
        proximal_mu=mu,
        optimiser=optimiser,
    )
    assert_same_weights(fast, reference)
    assert result.steps == epochs * -(-len(data) // batch_size)
    assert result.mean_loss == total / result.steps


class SparseMM:
    """The ranker's profile product as it was: ``torch.sparse.mm`` and its own backward."""

    def mm(self, matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.sparse.mm(matrix, dense)
        return out


def test_ranker_trains_to_the_bit_as_the_dataloader_loop(
    small_ranker_study: tuple[PhenotypeFeatures, CaseDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    features, data = small_ranker_study
    assert len(data) > 40
    fast = PhenotypeRanker(features, dim=8, seed=2)
    reference = PhenotypeRanker(features, dim=8, seed=2)
    monkeypatch.setattr(reference, "_profile_product", SparseMM())
    train_locally(
        fast,
        data,
        epochs=2,
        batch_size=16,
        learning_rate=0.01,
        weight_decay=0.001,
        seed=9,
        collate_fn=features.collate,
    )
    dataloader_loop(reference, data, epochs=2, batch_size=16, seed=9, collate_fn=features.collate)
    assert_same_weights(fast, reference)


def test_sparse_product_and_gradient_are_torch_sparse_mm_to_the_bit(
    features: PhenotypeFeatures,
) -> None:
    profiles = features.profiles()
    product = SparseProduct()
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(features.n_terms, 16, generator=gen, requires_grad=True)
    upstream = torch.randn(features.n_diseases, 16, generator=gen)
    for _ in range(2):  # the second pass reuses the transposed matrix built by the first
        dense.grad = None
        mine = product.mm(profiles, dense)
        mine.backward(upstream)  # type: ignore[no-untyped-call]
        mine_grad = dense.grad
        dense.grad = None
        theirs = torch.sparse.mm(profiles, dense)
        theirs.backward(upstream)
        assert torch.equal(mine, theirs)
        assert mine_grad is not None
        assert torch.equal(mine_grad, dense.grad)
    first_grad = mine_grad
    with torch.no_grad():
        assert torch.equal(product.mm(profiles, dense), torch.sparse.mm(profiles, dense))
    # The kept transpose belongs to that matrix: another one, or a dense one, is not mixed up.
    doubled = torch.sparse_csr_tensor(
        profiles.crow_indices(),
        profiles.col_indices(),
        2 * profiles.values(),
        profiles.shape,
        check_invariants=True,
    )
    for other in (doubled, 2 * profiles.to_dense()):
        dense.grad = None
        product.mm(other, dense).backward(upstream)  # type: ignore[no-untyped-call]
        mine_grad = dense.grad
        dense.grad = None
        torch.sparse.mm(other, dense).backward(upstream)
        assert mine_grad is not None
        assert torch.equal(mine_grad, dense.grad)
        assert torch.allclose(mine_grad, 2 * first_grad, rtol=1e-5, atol=1e-4)
    assert copy.deepcopy(product)._transposed is None  # derived data, not copied


def test_gathered_case_batches_equal_collated_items(
    small_ranker_study: tuple[PhenotypeFeatures, CaseDataset],
) -> None:
    features, data = small_ranker_study
    indices = torch.tensor([5, 0, len(data) - 1, 3, 5])
    gather = index_batches(data, features.collate)
    (obs, exc), labels = gather(indices)
    (obs_ref, exc_ref), labels_ref = features.collate([data[int(i)] for i in indices])
    assert torch.equal(obs, obs_ref)
    assert torch.equal(exc, exc_ref)
    assert torch.equal(labels, labels_ref)
    assert labels.dtype == torch.int64
    assert obs.dtype == exc.dtype == torch.float32
    assert exc.count_nonzero() > 0  # some cases list excluded terms: both halves are exercised


def test_a_case_with_no_term_gathers_as_a_zero_row(ontology: Ontology) -> None:
    full = ontology.catalogue()
    features = PhenotypeFeatures(ontology, DiseaseCatalogue(full.diseases[:5], hpo_version=""))
    empty_rows = EncodedCases(
        obs_ptr=np.zeros(3, dtype=np.int64),
        obs_idx=np.zeros(0, dtype=np.int64),
        obs_w=np.zeros(0, dtype=np.float32),
        exc_ptr=np.zeros(3, dtype=np.int64),
        exc_idx=np.zeros(0, dtype=np.int64),
        exc_w=np.zeros(0, dtype=np.float32),
        labels=np.array([1, 2]),
    )
    (obs, exc), labels = features.collate.gatherer(empty_rows)(torch.tensor([1, 0]))
    assert obs.shape == exc.shape == (2, features.n_terms)
    assert obs.count_nonzero() == 0
    assert labels.tolist() == [2, 1]


def test_other_datasets_are_collated_item_by_item_to_the_same_batches() -> None:
    data = Subset(mlp_data(), list(range(0, 150, 2)))
    fast, reference = mlp(), mlp()
    train_locally(
        fast, data, epochs=2, batch_size=8, learning_rate=0.01, weight_decay=0.001, seed=1
    )
    dataloader_loop(reference, data, epochs=2, batch_size=8, seed=1)
    assert_same_weights(fast, reference)
