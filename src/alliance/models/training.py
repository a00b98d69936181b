"""One local training loop, used by every site, every baseline and the benchmark alike.

Works for any PyTorch module and any map-style dataset of ``(inputs, target)`` items: inputs
that are a tuple are passed to the model as positional arguments, a mapping as keyword
arguments, anything else as one argument. The loss is cross-entropy unless another is given.
FedProx's proximal term is added when ``proximal_mu`` > 0. The optimiser is Adam unless
another :class:`Optimiser` is chosen. Shuffling uses an explicit generator, so the same seed
gives the same model.

Batches are built by indexing the whole site's data, with no DataLoader and no Python work per
item where the data allows (:func:`index_batches`: an :class:`IndexedDataset` such as the
ranker's cases gathers its own batches; a ``TensorDataset`` is indexed whole). The order is
drawn from the generator exactly as ``DataLoader(shuffle=True)`` drew it (:func:`shuffled_order`)
and the batches hold the same values, so the loop trains the same model, to the bit, as the
DataLoader loop it replaced (tests/unit/test_local_batches.py keeps that loop as the reference).

This is the loop behind the sites' default training step
(:class:`~alliance.models.steps.ClassifierStep`); a study whose task it does not fit passes its
own :class:`~alliance.models.steps.TrainStep`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset, default_collate

__all__ = [
    "IndexedDataset",
    "LocalResult",
    "LossFn",
    "Optimiser",
    "call_model",
    "get_weights",
    "index_batches",
    "set_weights",
    "shuffled_order",
    "train_locally",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Optimiser(Enum):
    """The local optimiser of :func:`train_locally` (a fresh one every round)."""

    ADAM = "adam"
    SGD = "sgd"

    def build(
        self,
        params: list[nn.Parameter],
        *,
        learning_rate: float,
        weight_decay: float,
        momentum: float = 0.0,
    ) -> torch.optim.Optimizer:
        """A fresh optimiser of this kind over ``params`` (``momentum``: SGD's only)."""
        if self is Optimiser.SGD:
            return torch.optim.SGD(
                params, lr=learning_rate, weight_decay=weight_decay, momentum=momentum
            )
        return torch.optim.Adam(params, lr=learning_rate, weight_decay=weight_decay)


@dataclass(frozen=True)
class LocalResult:
    """What one local training run did."""

    num_examples: int
    steps: int
    mean_loss: float


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Apply ``model`` to a batch's inputs (tuple → positional, mapping → keyword)."""
    if isinstance(inputs, tuple | list):
        return model(*inputs)  # type: ignore[no-any-return]
    if isinstance(inputs, Mapping):
        return model(**inputs)  # type: ignore[no-any-return]
    return model(inputs)  # type: ignore[no-any-return]


def get_weights(model: nn.Module) -> dict[str, npt.NDArray[np.float32]]:
    """The model's trainable parameters as float32 numpy arrays (copies), by name."""
    return {
        name: p.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, p in model.named_parameters()
    }


def set_weights(model: nn.Module, weights: Mapping[str, npt.NDArray[Any]]) -> None:
    """Load parameters by name; every trainable parameter must be present with its shape."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(np.asarray(weights[name], dtype=np.float32)).reshape(p.shape))


def train_locally(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    loss_fn: LossFn | None = None,
    optimiser: Optimiser = Optimiser.ADAM,
    momentum: float = 0.0,
) -> LocalResult:
    """Train ``model`` in place for ``epochs`` passes over ``dataset`` (Adam by default).

    Parameters
    ----------
    model
        Any module; its trainable parameters are updated in place.
    dataset
        Map-style dataset of ``(inputs, target)`` items.
    epochs, batch_size, learning_rate, weight_decay
        Optimiser settings.
    seed
        Seed of the shuffling order.
    proximal_mu
        FedProx: adds ``mu/2 · ||w − w_start||²`` to the loss (0 disables).
    collate_fn
        Batch builder: ``collate_fn(items)`` is a batch (the DataLoader default when ``None``).
    loss_fn
        ``loss(outputs, targets)``; cross-entropy by default.
    optimiser, momentum
        The local optimiser, Adam by default; SGD's momentum.

    Returns
    -------
    LocalResult
        Examples seen per epoch, optimiser steps and the mean training loss.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        return LocalResult(0, 0, 0.0)
    loss_of = loss_fn or nn.functional.cross_entropy
    gen = torch.Generator().manual_seed(seed)
    batch_of = index_batches(dataset, collate_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    opt = optimiser.build(
        params, learning_rate=learning_rate, weight_decay=weight_decay, momentum=momentum
    )
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        order = shuffled_order(n, gen)
        for lo in range(0, n, batch_size):
            inputs, targets = batch_of(order[lo : lo + batch_size])
            opt.zero_grad(set_to_none=True)
            loss = loss_of(call_model(model, inputs), targets)
            if proximal_mu > 0:
                loss = loss + 0.5 * proximal_mu * sum(
                    ((p - s) ** 2).sum() for p, s in zip(params, start, strict=True)
                )
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach())
            steps += 1
    return LocalResult(num_examples=n, steps=steps, mean_loss=total / max(steps, 1))


def shuffled_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """One epoch's order of ``n`` items, drawn from ``generator`` exactly as
    ``DataLoader(shuffle=True, generator=generator)`` draws it (torch 2.x, one process).

    The loader takes its workers' base seed first, then the sampler a permutation, and a
    second permutation (sliced to nothing) when it runs out; drawing the same three keeps the
    generator's state, so every epoch's order, and the model, is the loader loop's to the bit.
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    order = torch.randperm(n, generator=generator)
    torch.randperm(n, generator=generator)
    return order


@runtime_checkable
class IndexedDataset(Protocol):
    """A dataset that builds a batch straight from item indices, with no Python per item."""

    def batcher(self, collate_fn: Any) -> Callable[[torch.Tensor], Any] | None:
        """The function from item indices (an int64 tensor) to the batch that ``collate_fn``
        builds from those items, value for value; ``None`` if it cannot for this collate_fn."""
        ...


def index_batches(
    dataset: Dataset[Any], collate_fn: Callable[[list[Any]], Any] | None
) -> Callable[[torch.Tensor], Any]:
    """The batch of the items at given indices, equal to ``collate_fn([dataset[i] ...])``.

    An :class:`IndexedDataset` builds it itself, a :class:`~torch.utils.data.TensorDataset`
    with the default collate is indexed as whole tensors; any other dataset is read item by
    item and collated (still without a DataLoader's per-batch machinery).
    """
    if isinstance(dataset, IndexedDataset):
        built = dataset.batcher(collate_fn)
        if built is not None:
            return built
    if collate_fn is None and isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        # default_collate stacks each field of the items: the same values as indexing.
        return lambda indices: [t[indices] for t in tensors]
    collate = collate_fn or default_collate
    return lambda indices: collate([dataset[i] for i in indices.tolist()])
