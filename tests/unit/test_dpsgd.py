"""DP-SGD: clipped sums against Opacus, the noise, Poisson sampling, and what seeds do not do."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from scipy import stats
from torch import nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from alliance.core.errors import ConfigError, ModelError
from alliance.data.ontology import DiseaseCatalogue, Ontology
from alliance.data.synth import CohortConfig, generate_consortium, scaled_hospitals
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import CaseDataset, PhenotypeRanker
from alliance.models.training import get_weights, train_locally
from alliance.privacy.clipping import ClipMethod, per_sample_clipped_sum
from alliance.privacy.dpsgd import DPSGDConfig, train_privately
from alliance.privacy.noise import SecureGaussian

KEY = bytes(range(32))
Grads = dict[str, torch.Tensor]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )


def tabular(n: int, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 13, generator=gen)
    return TensorDataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


def opacus_clipped_sum(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, max_grad_norm: float
) -> Grads:
    """Opacus' per-sample gradients, clipped the way its DPOptimizer clips them."""
    gsm = GradSampleModule(model)
    try:
        # Inputs that require grad keep Opacus' full backward hooks from warning.
        loss = nn.functional.cross_entropy(gsm(inputs.clone().requires_grad_(True)), targets)
        loss.backward()
        per_sample = {n: p.grad_sample for n, p in model.named_parameters() if p.requires_grad}
    finally:
        gsm._close()
        model.zero_grad(set_to_none=True)
    norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=1) for g in per_sample.values()])
    factor = (max_grad_norm / (norms.norm(2, dim=0) + 1e-6)).clamp(max=1.0)
    return {n: torch.einsum("i,i...", factor, g) for n, g in per_sample.items()}


def assert_same_sums(mine: Grads, reference: Grads) -> None:
    assert mine.keys() == reference.keys()
    for name in mine:
        torch.testing.assert_close(mine[name], reference[name], rtol=1e-5, atol=1e-5, msg=name)


def median_norm(model: nn.Module, x: Any, y: torch.Tensor, loss_fn: Any = None) -> float:
    """A clipping bound that clips about half the examples (so both branches are tested)."""
    norms = []
    for i in range(len(y)):
        model.zero_grad()
        one = tuple(t[i : i + 1] for t in x) if isinstance(x, tuple) else x[i : i + 1]
        out = model(*one) if isinstance(one, tuple) else model(one)
        (loss_fn or nn.functional.cross_entropy)(out, y[i : i + 1]).backward()
        norms.append(
            math.sqrt(
                sum(float(p.grad.square().sum()) for p in model.parameters() if p.grad is not None)
            )
        )
    model.zero_grad(set_to_none=True)
    return float(np.median(norms))


# ------------------------------------------------------------------------------------------------
# (a) The clipped per-sample sum equals Opacus'
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(ClipMethod))
def test_clipped_sum_matches_opacus_on_an_mlp(method: ClipMethod) -> None:
    model = mlp()
    x, y = tabular(32)[:]
    bound = median_norm(model, x, y)
    mine = per_sample_clipped_sum(model, x, y, max_grad_norm=bound, method=method)
    assert_same_sums(mine, opacus_clipped_sum(model, x, y, max_grad_norm=bound))
    assert all(p.grad is None for p in model.parameters())  # .grad is not touched


def test_an_activation_editing_a_layer_output_in_place_does_not_corrupt_the_norms() -> None:
    """ReLU(inplace=True) overwrites the Linear's output; the recorded one must stay intact."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Linear(13, 16),
        nn.ReLU(inplace=True),
        nn.Linear(16, 16),
        nn.ReLU(inplace=True),
        nn.Linear(16, 2),
    )
    x, y = tabular(32)[:]
    for _ in range(2):  # each call detects the edit, then records the outputs before it
        ghost = per_sample_clipped_sum(model, x, y, max_grad_norm=0.3, method=ClipMethod.GHOST)
        loop = per_sample_clipped_sum(model, x, y, max_grad_norm=0.3, method=ClipMethod.LOOP)
        assert_same_sums(ghost, loop)


class SequenceModel(nn.Module):
    """A Linear applied at every time step (3-d input), then pooled: the Gram-trick case."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.step = nn.Linear(5, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.step(x)).mean(1))


@pytest.mark.parametrize(("steps", "width"), [(4, 7), (12, 2)])  # T² ≤ d·p (Gram), T² > d·p
def test_clipped_sum_matches_opacus_for_sequence_inputs(steps: int, width: int) -> None:
    torch.manual_seed(1)
    model = SequenceModel(width)
    x, y = torch.randn(16, steps, 5), torch.randint(0, 3, (16,))
    mine = per_sample_clipped_sum(model, x, y, max_grad_norm=0.3, method=ClipMethod.GHOST)
    assert_same_sums(mine, opacus_clipped_sum(model, x, y, max_grad_norm=0.3))


@pytest.fixture(scope="module")
def small_study(ontology: Ontology) -> tuple[PhenotypeFeatures, CaseDataset]:
    """40 catalogue diseases, their vocabulary and about 100 synthetic cases."""
    full = ontology.catalogue()
    catalogue = DiseaseCatalogue(full.diseases[:40], hpo_version=full.hpo_version)
    features = PhenotypeFeatures(ontology, catalogue)
    cohorts = generate_consortium(
        ontology, catalogue, scaled_hospitals(0.02), CohortConfig(seed=3, n_diseases=40)
    )
    return features, CaseDataset(features.encode([x for c in cohorts for x in c.train]))


def trained_looking_ranker(features: PhenotypeFeatures) -> PhenotypeRanker:
    """A ranker whose learned parameters are away from their (zero) start, so that every
    gradient term is exercised."""
    model = PhenotypeRanker(features, dim=8, init_scale=0.3, seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model.disease_emb.copy_(0.3 * torch.randn(model.disease_emb.shape, generator=gen))
        model.disease_bias.copy_(0.3 * torch.randn(model.disease_bias.shape, generator=gen))
        model.prior_exc.fill_(1.5)
    return model


class OneInputRanker(PhenotypeRanker):
    """The same ranker taking one stacked input: Opacus' functorch path passes one tensor."""

    def forward(self, cases: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(cases[:, 0], cases[:, 1])


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_clipped_sum_matches_opacus_on_the_phenotype_ranker(
    small_study: tuple[PhenotypeFeatures, CaseDataset],
) -> None:
    features, data = small_study
    (observed, excluded), labels = features.collate([data[i] for i in range(24)])
    model = trained_looking_ranker(features)
    bound = median_norm(model, (observed, excluded), labels)
    mine = per_sample_clipped_sum(model, (observed, excluded), labels, max_grad_norm=bound)
    # Opacus vmaps the ranker's own forward; vmap cannot batch sparse CSR, so the reference
    # copy holds the same profile matrix dense (the same function).
    reference_model = OneInputRanker(features, dim=8)
    reference_model.load_state_dict(model.state_dict())
    reference_model.profiles = model.profiles.to_dense()
    stacked = torch.stack([observed, excluded], 1)
    reference = opacus_clipped_sum(reference_model, stacked, labels, max_grad_norm=bound)
    assert_same_sums(mine, reference)
    assert all(float(g.abs().max()) > 0 for g in mine.values())


def test_ranker_with_frozen_parameters_matches_one_example_at_a_time(
    small_study: tuple[PhenotypeFeatures, CaseDataset],
) -> None:
    features, data = small_study
    (observed, excluded), labels = features.collate([data[i] for i in range(16)])
    model = trained_looking_ranker(features)
    model.prior_obs.requires_grad_(False)
    model.term_exc.requires_grad_(False)
    ghost = per_sample_clipped_sum(
        model, (observed, excluded), labels, max_grad_norm=0.5, method=ClipMethod.GHOST
    )
    loop = per_sample_clipped_sum(
        model, (observed, excluded), labels, max_grad_norm=0.5, method=ClipMethod.LOOP
    )
    assert "prior_obs" not in ghost
    assert "term_exc" not in ghost
    assert_same_sums(ghost, loop)


def test_a_changed_ranker_forward_is_caught(
    small_study: tuple[PhenotypeFeatures, CaseDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The closed form is checked against autograd, so it cannot silently go stale."""
    features, data = small_study
    (observed, excluded), labels = features.collate([data[i] for i in range(8)])
    original = PhenotypeRanker.forward

    def changed(self: PhenotypeRanker, observed: torch.Tensor, excluded: torch.Tensor) -> Any:
        # A new class-dependent interaction of existing parameters (same parameter names).
        return original(self, observed, excluded) + observed @ self.term_obs @ self.disease_emb.T

    monkeypatch.setattr(PhenotypeRanker, "forward", changed)
    with pytest.raises(ModelError, match="disagrees with autograd"):
        per_sample_clipped_sum(
            trained_looking_ranker(features), (observed, excluded), labels, max_grad_norm=1.0
        )


class Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.tanh(self.layer(x)))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class WithEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).mean(1))


@pytest.mark.parametrize(
    ("factory", "make_input"),
    [
        (Reused, lambda: torch.randn(12, 4)),
        (Tied, lambda: torch.randn(12, 4)),
        (WithEmbedding, lambda: torch.randint(0, 10, (12, 3))),
    ],
)
def test_layers_without_a_closed_form_fall_back_to_the_same_sum(
    factory: Callable[[], nn.Module], make_input: Callable[[], torch.Tensor]
) -> None:
    torch.manual_seed(3)
    model, x, y = factory(), make_input(), torch.randint(0, 4, (12,))
    auto = per_sample_clipped_sum(model, x, y, max_grad_norm=0.2)
    loop = per_sample_clipped_sum(model, x, y, max_grad_norm=0.2, method=ClipMethod.LOOP)
    assert_same_sums(auto, loop)


def test_ghost_is_refused_where_it_does_not_apply() -> None:
    with pytest.raises(ConfigError, match=r"ClipMethod\.AUTO"):
        per_sample_clipped_sum(
            WithEmbedding(),
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, dtype=torch.long),
            max_grad_norm=1.0,
            method=ClipMethod.GHOST,
        )


# ------------------------------------------------------------------------------------------------
# (b) Without noise and clipping, a private step is a plain step
# ------------------------------------------------------------------------------------------------


def test_without_noise_or_clipping_the_clipped_sum_is_the_plain_gradient() -> None:
    model = mlp()
    x, y = tabular(32)[:]
    summed = per_sample_clipped_sum(model, x, y, max_grad_norm=1e9)
    nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(summed[name] / 32, p.grad, rtol=1e-5, atol=1e-7)


def test_without_noise_or_clipping_a_private_run_is_a_plain_run() -> None:
    """q = 1 includes everyone: one Adam step on the full batch, as train_locally takes."""
    data = tabular(64)
    private, plain = mlp(), mlp()
    result = train_privately(
        private,
        data,
        config=DPSGDConfig(noise_multiplier=0.0, max_grad_norm=1e9),
        epochs=3,
        batch_size=64,
        learning_rate=0.01,
        seed=0,
        noise=SecureGaussian(KEY),
    )
    train_locally(plain, data, epochs=3, batch_size=64, learning_rate=0.01, seed=0)
    assert result.steps == 3
    assert result.sample_rate == 1.0
    for name, w in get_weights(private).items():
        np.testing.assert_allclose(w, get_weights(plain)[name], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# (c) The noise of the update
# ------------------------------------------------------------------------------------------------


def record_gradients(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Every gradient handed to Adam, flattened, one entry per step."""
    seen: list[torch.Tensor] = []
    step = torch.optim.Adam.step

    def spy(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        seen.append(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    return seen


def zero_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs * 0.0).sum(1).mean()


def test_the_update_noise_has_std_sigma_c_over_the_expected_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a zero loss the gradient handed to the optimiser is the noise alone."""
    seen = record_gradients(monkeypatch)
    sigma, bound, batch = 1.3, 0.7, 10
    result = train_privately(
        mlp(),
        tabular(100),
        config=DPSGDConfig(noise_multiplier=sigma, max_grad_norm=bound),
        epochs=2,
        batch_size=batch,
        learning_rate=1e-3,
        seed=0,
        loss_fn=zero_loss,
        noise=SecureGaussian(KEY),
    )
    assert len(seen) == result.steps == 20
    per_step = torch.stack(seen).double()
    expected = sigma * bound / batch  # the expected batch size, whatever the sampled one
    assert per_step.std(dim=1).sub(expected).abs().max() < 0.03 * expected
    assert abs(float(per_step.mean())) < 5 * expected / math.sqrt(per_step.numel())
    assert stats.kstest(per_step.flatten().numpy() / expected, "norm").pvalue > 1e-3


def test_the_noise_is_added_to_the_clipped_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same key, same batches: the difference between σ > 0 and σ = 0 is exactly the noise."""
    runs = []
    for sigma in (0.0, 2.0):
        seen = record_gradients(monkeypatch)
        train_privately(
            mlp(),
            tabular(40),
            config=DPSGDConfig(noise_multiplier=sigma, max_grad_norm=0.5),
            epochs=1,
            batch_size=40,
            learning_rate=1e-9,
            seed=0,
            noise=SecureGaussian(KEY),
        )
        runs.append(seen[0].double())
        monkeypatch.undo()
    source = SecureGaussian(KEY)
    source.bernoulli_mask(40, p=1.0)  # the first request of the run: the batch
    noise = source.sample(runs[0].numel(), std=2.0 * 0.5).double() / 40
    torch.testing.assert_close(runs[1] - runs[0], noise, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# (d) Poisson sampling
# ------------------------------------------------------------------------------------------------


class Recording(Dataset[Any]):
    def __init__(self, inner: TensorDataset) -> None:
        self.inner = inner
        self.fetched: list[int] = []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> Any:
        self.fetched.append(i)
        return self.inner[i]


def test_poisson_batch_sizes_are_binomial() -> None:
    n, batch, epochs = 200, 20, 100
    sizes: list[int] = []

    def collate(items: list[Any]) -> Any:
        sizes.append(len(items))
        return default_collate(items)

    data = Recording(tabular(n))
    model = nn.Linear(13, 2)
    result = train_privately(
        model,
        data,
        config=DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0),
        epochs=epochs,
        batch_size=batch,
        learning_rate=1e-3,
        seed=0,
        collate_fn=collate,
        noise=SecureGaussian(KEY),
    )
    q = batch / n
    assert result.steps == epochs * math.ceil(n / batch) == 1000
    assert result.sample_rate == q
    sizes += [0] * (result.steps - len(sizes))  # empty batches are noise-only steps
    observed = np.bincount(sizes, minlength=n + 1)
    # Chi-square against Binomial(n, q), tails pooled so every bin expects >= 5.
    expected = stats.binom.pmf(np.arange(n + 1), n, q) * result.steps
    low, high = 11, 29
    obs = [observed[: low + 1].sum(), *observed[low + 1 : high], observed[high:].sum()]
    exp = [expected[: low + 1].sum(), *expected[low + 1 : high], expected[high:].sum()]
    assert min(exp) >= 5
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    assert len(set(sizes)) > 10  # not a fixed batch size
    # Each patient is included independently: counts per patient are Binomial(steps, q).
    counts = np.bincount(data.fetched, minlength=n)
    assert stats.kstest(counts, stats.binom(result.steps, q).cdf).pvalue > 1e-3 or (
        abs(counts.var() / (result.steps * q * (1 - q)) - 1) < 0.3
    )


def test_empty_batches_take_a_noise_only_step() -> None:
    """At q = 1/n about e⁻¹ of the steps draw nobody; they still count and still move."""
    model = nn.Linear(13, 2)
    before = get_weights(model)
    calls: list[int] = []

    def collate(items: list[Any]) -> Any:
        calls.append(len(items))
        return default_collate(items)

    result = train_privately(
        model,
        tabular(2000),
        config=DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0),
        epochs=1,
        batch_size=1,
        learning_rate=0.1,
        seed=0,
        collate_fn=collate,
        noise=SecureGaussian(KEY),
    )
    assert result.steps == 2000
    assert 0.3 * result.steps < result.steps - len(calls) < 0.45 * result.steps
    assert any(not np.array_equal(w, before[k]) for k, w in get_weights(model).items())


# ------------------------------------------------------------------------------------------------
# (e) The guarantee does not depend on the seed
# ------------------------------------------------------------------------------------------------


def run(seed: int, noise: SecureGaussian | None) -> tuple[dict[str, Any], Any]:
    model = mlp()
    result = train_privately(
        model,
        tabular(100),
        config=DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0),
        epochs=1,
        batch_size=10,
        learning_rate=0.01,
        seed=seed,
        noise=noise,
    )
    return get_weights(model), result


def test_the_seed_neither_chooses_the_batches_nor_the_noise() -> None:
    (w1, r1), (w2, r2) = run(1, SecureGaussian(KEY)), run(2, SecureGaussian(KEY))
    assert r1 == r2  # steps, sample rate and σ, and even the loss: same batches, same noise
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)


def test_the_same_seed_twice_gives_different_runs() -> None:
    torch.manual_seed(0)
    w1, r1 = run(1, None)
    torch.manual_seed(0)
    w2, r2 = run(1, None)
    assert (r1.steps, r1.sample_rate, r1.noise_multiplier) == (
        r2.steps,
        r2.sample_rate,
        r2.noise_multiplier,
    )
    assert any(not np.array_equal(w1[k], w2[k]) for k in w1)


def test_training_leaves_the_callers_torch_generator_alone() -> None:
    model, data = mlp(), tabular(100)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_privately(
        model,
        data,
        config=DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0),
        epochs=1,
        batch_size=10,
        learning_rate=0.01,
        seed=123,
    )
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sigma", "bound", "message"),
    [
        (-0.1, 1.0, "noise_multiplier must be a finite number >= 0"),
        (math.nan, 1.0, "noise_multiplier"),
        (1.0, 0.0, "max_grad_norm must be a finite number > 0"),
        (1.0, -1.0, "max_grad_norm"),
        (1.0, math.inf, "max_grad_norm"),
    ],
)
def test_bad_configs_are_refused(sigma: float, bound: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DPSGDConfig(noise_multiplier=sigma, max_grad_norm=bound)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 101}, r"between 1 and the number of examples \(100\), got 101"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_training_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"epochs": 1, "batch_size": 10, "learning_rate": 0.01} | kwargs
    with pytest.raises(ConfigError, match=message):
        train_privately(
            mlp(),
            tabular(100),
            config=DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0),
            seed=0,
            **args,
        )


def test_batchnorm_is_refused() -> None:
    model = nn.Sequential(nn.Linear(13, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match=r"1 is a BatchNorm1d.*GroupNorm"):
        per_sample_clipped_sum(
            model, torch.zeros(4, 13), torch.zeros(4, dtype=torch.long), max_grad_norm=1.0
        )


class SparseModel(nn.Module):
    """A module whose sparse product torch.func cannot batch and that has no closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.matrix = torch.eye(4).to_sparse_csr()
        self.weight = nn.Parameter(torch.randn(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(self.matrix, x.T).T @ self.weight


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
def test_a_model_torch_func_cannot_batch_gets_a_clear_error_and_loop_works() -> None:
    model, x, y = SparseModel(), torch.randn(6, 4), torch.randint(0, 3, (6,))
    with pytest.raises(ModelError, match=r"clip_method=ClipMethod\.LOOP"):
        per_sample_clipped_sum(model, x, y, max_grad_norm=1.0)
    loop = per_sample_clipped_sum(model, x, y, max_grad_norm=1.0, method=ClipMethod.LOOP)
    assert loop["weight"].shape == (4, 3)
