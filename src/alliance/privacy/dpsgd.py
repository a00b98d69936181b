"""Patient-level DP-SGD for any PyTorch module, with a fast exact path for common layers.

The guarantee is Opacus' (Abadi et al. 2016, with Poisson sampling), one patient = one example:

- **Poisson sampling.** Each step includes every example independently with probability
  ``q = batch_size / n``, drawn from the CSPRNG of :class:`~alliance.privacy.noise.
  SecureGaussian`; an epoch is ``ceil(n / batch_size)`` steps and an empty batch still takes a
  noise-only step. The accountant must use exactly :attr:`PrivateResult.steps` and
  :attr:`PrivateResult.sample_rate` with :attr:`PrivateResult.noise_multiplier`.
- **Per-example clipping.** The gradient of each example's own loss (the loss function applied
  to a batch of that one example) is clipped to L2 norm ≤ ``C = max_grad_norm`` over all
  trainable parameters together, with Opacus' factor ``min(1, C / (‖g_i‖ + 1e-6))``.
- **Noise.** ``N(0, σ²C²)`` is added to the sum of clipped gradients (σ = ``noise_multiplier``)
  and the result divided by the *expected* batch size ``q · n`` (= ``batch_size``), as Opacus
  does, so the sensitivity of the update does not depend on the random batch size.
- **Optimiser.** Adam, as :func:`~alliance.models.training.train_locally` uses, so a study's
  learning rate means the same with and without DP; Adam only post-processes the noisy
  gradient, so it costs no privacy. ``weight_decay`` is Adam's L2 term (also post-processing).

``seed`` seeds only what is not private (torch's global generator while training, e.g.
dropout; restored afterwards); the noise and the batches come from ``noise``. Two runs therefore
differ unless a fixed-key :class:`SecureGaussian` is passed, which only tests should do.
``PrivateResult.mean_loss`` is computed from the private data without noise: it is not covered
by the guarantee and must stay at the site.

Datasets and models follow :func:`~alliance.models.training.train_locally`: map-style items
``(inputs, target)``, inputs passed by :func:`~alliance.models.training.call_model`, loss
cross-entropy by default. A custom ``loss_fn`` must return the *mean* of per-example losses over
the batch (as ``cross_entropy`` and ``mse_loss`` do by default). Examples must not interact:
BatchNorm is rejected (use GroupNorm, as Opacus' ``ModuleValidator.fix`` does).

Per-example clipping itself (the exact ghost-clipping rules for ``nn.Linear`` and the
phenotype ranker, and the generic ``torch.func`` and one-at-a-time fallbacks, chosen with
``clip_method``) lives in :mod:`alliance.privacy.clipping`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from alliance.core.errors import ConfigError
from alliance.models.training import LossFn
from alliance.privacy.clipping import ClipMethod, Clipper
from alliance.privacy.noise import SecureGaussian

__all__ = [
    "DPSGDConfig",
    "PrivateResult",
    "train_privately",
]


@dataclass(frozen=True)
class DPSGDConfig:
    """The two knobs of the Gaussian mechanism.

    Attributes
    ----------
    noise_multiplier
        σ: noise standard deviation divided by ``max_grad_norm`` (≥ 0; 0 gives no privacy).
    max_grad_norm
        C: bound on each patient's gradient L2 norm (> 0).
    """

    noise_multiplier: float
    max_grad_norm: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(
                f"noise_multiplier must be a finite number >= 0 (noise std / max_grad_norm), "
                f"got {self.noise_multiplier}; choose it from the privacy budget with the "
                "accountant"
            )
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(
                f"max_grad_norm must be a finite number > 0 (the per-patient clipping bound), "
                f"got {self.max_grad_norm}; 1.0 is a common start"
            )


@dataclass(frozen=True)
class PrivateResult:
    """What one private training run did; the accountant uses ``steps``, ``sample_rate`` and
    ``noise_multiplier``. ``mean_loss`` is not private: keep it at the site."""

    num_examples: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    mean_loss: float


def train_privately(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    config: DPSGDConfig,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    weight_decay: float = 0.0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    loss_fn: LossFn | None = None,
    noise: SecureGaussian | None = None,
    clip_method: ClipMethod = ClipMethod.AUTO,
) -> PrivateResult:
    """Train ``model`` in place with DP-SGD (Poisson sampling, per-patient clipping, Adam).

    Parameters
    ----------
    model
        Any module without BatchNorm; its trainable parameters are updated in place.
    dataset
        Map-style dataset of ``(inputs, target)`` items, one patient each.
    config
        Noise multiplier and clipping bound.
    epochs
        Passes over the data; each is ``ceil(n / batch_size)`` Poisson-sampled steps.
    batch_size
        Expected batch size; the sampling rate is ``batch_size / n``.
    learning_rate, weight_decay
        Adam settings.
    seed
        Seeds only non-private randomness (e.g. dropout), never the noise or the batches.
    collate_fn
        Batch builder, as for a DataLoader (torch's default collate when ``None``).
    loss_fn
        ``loss(outputs, targets)``, the batch mean of per-example losses; cross-entropy by
        default.
    noise
        Source of noise and sampling; a fresh :class:`SecureGaussian` (random key) by default.
    clip_method
        How per-example clipping is computed; ``AUTO`` picks the fastest exact method.

    Returns
    -------
    PrivateResult
        What the accountant needs (``steps``, ``sample_rate``, ``noise_multiplier``) and the
        (non-private) mean training loss over non-empty batches.

    Raises
    ------
    ConfigError
        For ``epochs`` < 1, ``batch_size`` outside [1, n], a non-positive learning rate, a
        negative weight decay, or a model with BatchNorm.
    ModelError
        If ``torch.func`` cannot differentiate a model that has no closed-form rule (pass
        ``clip_method=ClipMethod.LOOP``), or the ranker's closed form disagrees with autograd.
    """
    n = len(dataset)  # type: ignore[arg-type]
    _check_schedule(
        n,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
    )
    source = noise if noise is not None else SecureGaussian()
    collate = collate_fn or default_collate
    rate = batch_size / n
    steps = epochs * math.ceil(n / batch_size)
    clipper = Clipper(
        model, loss_fn=loss_fn, max_grad_norm=config.max_grad_norm, method=clip_method
    )
    named = clipper.named
    opt = torch.optim.Adam([p for _, p in named], lr=learning_rate, weight_decay=weight_decay)
    std = config.noise_multiplier * config.max_grad_norm
    sizes = [p.numel() for _, p in named]
    total_loss, batches = 0.0, 0
    model.train()
    with torch.random.fork_rng(devices=[]), clipper:
        torch.manual_seed(seed)
        for _ in range(steps):
            chosen = source.bernoulli_mask(n, p=rate).nonzero().flatten().tolist()
            # One flat buffer holds the noise; its slices become the parameters' gradients.
            flat = source.sample(sum(sizes), std=std)
            grads = [
                g.view_as(p) for g, (_, p) in zip(torch.split(flat, sizes), named, strict=True)
            ]
            if chosen:
                inputs, targets = collate([dataset[i] for i in chosen])
                sums, loss = clipper.clipped_sum(inputs, targets)
                for grad, (name, _) in zip(grads, named, strict=True):
                    grad.add_(sums[name])
                total_loss += loss
                batches += 1
            flat.div_(batch_size)  # the expected batch size q·n, whatever was drawn
            for grad, (_, p) in zip(grads, named, strict=True):
                p.grad = grad
            opt.step()
    for _, p in named:
        p.grad = None
    return PrivateResult(
        num_examples=n,
        steps=steps,
        sample_rate=rate,
        noise_multiplier=config.noise_multiplier,
        mean_loss=total_loss / max(batches, 1),
    )


def _check_schedule(
    n: int, *, epochs: int, batch_size: int, learning_rate: float, weight_decay: float
) -> None:
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if not 1 <= batch_size <= n:
        raise ConfigError(
            f"batch_size must be between 1 and the number of examples ({n}), got {batch_size}: "
            "Poisson sampling needs a rate q = batch_size / n <= 1; lower batch_size"
        )
    if not (learning_rate > 0 and weight_decay >= 0):
        raise ConfigError(
            f"learning_rate must be > 0 and weight_decay >= 0, got {learning_rate} and "
            f"{weight_decay}"
        )
