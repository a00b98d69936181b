"""The local training step: how a site trains one round, and what it reports on held-out cases.

A site runs each round through two hooks, which a researcher chooses in the Python API
(``Simulation(train_step=..., eval_step=...)``, ``Site(train_step=..., eval_step=...)``):

- a :class:`TrainStep` trains the model in place on the site's cases (loss, optimiser,
  batching) and says what it did (:class:`~alliance.models.training.LocalResult`);
- an :class:`EvalStep` scores the model the site received on its held-out cases and returns
  aggregate numbers only (counts and sums over cases, never a per-patient value); they travel
  in the update's ``metrics``.

The default train step, :class:`ClassifierStep`, is the loop every site ran before the hook
existed (:func:`~alliance.models.training.train_locally`: cross-entropy, shuffled batches,
the study's optimiser: Adam unless its ``[plan]`` names SGD), result for result.
Cross-entropy over a single output is identically zero, so a
regression model would train to nothing without a word; the default therefore refuses, before
anything is trained or charged, a model whose output is not a score per class or targets that
are not class indices. :class:`LossStep` trains any loss (``mse_loss`` for regression, say)
with a chosen optimiser. The default evaluation is top-k counts
(:class:`~alliance.evaluation.ranking.TopKEvaluation`); regression sums are
:class:`~alliance.evaluation.regression.RegressionEvaluation`.

Under DP-SGD (a study with patient-level privacy) the site keeps its own mechanism (Poisson
sampling, per-patient clipping, noise and Adam, :mod:`alliance.privacy.dpsgd`) and takes only
the loss from the step, :meth:`TrainStep.private_loss`; a step that cannot name the loss it
minimises, or that steps with another optimiser, refuses there, before the round is charged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from alliance.core.errors import ConfigError
from alliance.models.training import LocalResult, LossFn, Optimiser, call_model, train_locally

__all__ = [
    "ClassifierStep",
    "Collate",
    "EvalStep",
    "LossStep",
    "StepSettings",
    "TrainStep",
    "check_class_scores",
    "probe",
]

Collate = Callable[[list[Any]], Any] | None


@dataclass(frozen=True)
class StepSettings:
    """The study's settings for one round of local training at one site.

    Attributes
    ----------
    epochs
        Passes over the site's training cases.
    batch_size
        Cases per optimiser step.
    learning_rate, weight_decay
        Optimiser settings.
    seed
        The site's shuffling seed for this round.
    proximal_mu
        FedProx's proximal weight (0 disables it).
    optimiser, momentum
        The study's local optimiser (``[plan] optimiser``) and SGD's momentum; a step given
        its own optimiser uses that instead.
    """

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    optimiser: Optimiser = Optimiser.ADAM
    momentum: float = 0.0


class TrainStep(Protocol):
    """How one round of local training runs at a site (loss, optimiser, batching)."""

    def check(self, model: nn.Module, dataset: Dataset[Any], *, collate_fn: Collate) -> None:
        """Raise :class:`~alliance.core.errors.ConfigError` if this step cannot train ``model``
        on ``dataset``; the site calls it before every round, before anything is trained or
        charged to its privacy ledger."""
        ...

    def train(
        self,
        model: nn.Module,
        dataset: Dataset[Any],
        *,
        settings: StepSettings,
        collate_fn: Collate,
    ) -> LocalResult:
        """Train ``model`` in place for one round; return examples, optimiser steps, mean loss."""
        ...

    def private_loss(self) -> LossFn | None:
        """The loss DP-SGD differentiates per patient: the batch mean of per-example losses,
        or ``None`` for cross-entropy (computed as an exact sum).

        Raises
        ------
        ConfigError
            The step cannot be trained with DP-SGD.
        """
        ...


class EvalStep(Protocol):
    """What a site reports about the model it received, from its held-out cases.

    Metrics are lowercase names (``[a-z][a-z0-9_]*``) with finite values: counts and sums over
    cases, never a per-patient value. The coordinator pools the top-k counts (``eval_n``,
    ``eval_top1/3/10``) into each round's accuracy; other names are kept per site in the round
    record. Under secure aggregation only the top-k counts and the training loss are in the
    masked sum, so any other metric stays at the site.
    """

    def evaluate(
        self, model: nn.Module, dataset: Dataset[Any], *, collate_fn: Collate
    ) -> dict[str, float]:
        """Aggregate metrics of ``model`` on ``dataset``."""
        ...


def probe(
    model: nn.Module, dataset: Dataset[Any], *, collate_fn: Collate, grad: bool = False
) -> tuple[Any, Any]:
    """The model's outputs on the dataset's first two cases (one if it has one), and their
    targets, in eval mode (no dropout, no running statistics updated); the mode is restored.

    Raises
    ------
    ConfigError
        The dataset is empty or its items are not ``(inputs, target)`` pairs.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError("the training step has no case to check the model on; load cases first")
    batch = (collate_fn or default_collate)([dataset[i] for i in range(min(2, n))])
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ConfigError(
            "a dataset's items must be (inputs, target) pairs, batched by collate_fn into "
            f"(inputs, targets); got a batch of type {type(batch).__name__}"
        )
    inputs, targets = batch
    was_training = model.training
    model.eval()
    try:
        with torch.set_grad_enabled(grad):
            outputs = call_model(model, inputs)
    finally:
        model.train(was_training)
    return outputs, targets


def check_class_scores(
    outputs: Any, targets: Any, *, who: str, remedy: str, exactly_2d: bool = False
) -> None:
    """Refuse outputs that are not one score per class, or targets that are not class indices.

    Accepted: outputs ``(batch, classes ≥ 2, ...)`` (exactly 2-D with ``exactly_2d``) and
    integer targets of shape ``(batch, ...)`` (the outputs' shape without the class axis).

    Raises
    ------
    ConfigError
        Naming ``who`` needs it, the outputs' shape, the targets' dtype and shape, and
        ``remedy``.
    """
    if isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor):
        dims = outputs.ndim == 2 if exactly_2d else outputs.ndim >= 2
        integer = not (
            targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool
        )
        if (
            dims
            and outputs.shape[1] >= 2
            and integer
            and tuple(targets.shape) == (outputs.shape[0], *outputs.shape[2:])
        ):
            return
        got = (
            f"on a batch of its cases the model's outputs have shape {tuple(outputs.shape)} "
            f"and the targets are {targets.dtype} of shape {tuple(targets.shape)}"
        )
    else:
        got = (
            f"the model returns {type(outputs).__name__} and the targets are "
            f"{type(targets).__name__}"
        )
    raise ConfigError(
        f"{who} needs a score per class, outputs of shape (batch, classes >= 2), and integer "
        f"class indices of shape (batch,) as targets; {got}. {remedy}"
    )


@dataclass(frozen=True)
class ClassifierStep:
    """The default step: cross-entropy over class scores, shuffled minibatches, a fresh
    optimiser each round (the study's, Adam unless its plan says otherwise).

    It refuses, in :meth:`check`, a model whose output is not a score per class (a 1-output
    regression head, say) and targets that are not class indices (floats), which cross-entropy
    would otherwise train to nothing or fail on deep inside torch.

    Parameters
    ----------
    optimiser
        Adam or SGD every round, overriding the study's ``[plan] optimiser``; ``None``
        (default): the plan's (:attr:`StepSettings.optimiser`).
    """

    optimiser: Optimiser | None = None

    def check(self, model: nn.Module, dataset: Dataset[Any], *, collate_fn: Collate) -> None:
        """Refuse a model or targets that cross-entropy over classes cannot train."""
        outputs, targets = probe(model, dataset, collate_fn=collate_fn)
        check_class_scores(
            outputs,
            targets,
            who=f"the default training step (cross-entropy) for {type(model).__name__}",
            remedy="Pass a train_step for this task, e.g. "
            "LossStep(loss=torch.nn.functional.mse_loss) for regression.",
        )

    def train(
        self,
        model: nn.Module,
        dataset: Dataset[Any],
        *,
        settings: StepSettings,
        collate_fn: Collate,
    ) -> LocalResult:
        """Check the model (again: the site checks first, a direct caller may not), then run
        :func:`~alliance.models.training.train_locally`."""
        self.check(model, dataset, collate_fn=collate_fn)
        return train_locally(
            model,
            dataset,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay,
            proximal_mu=settings.proximal_mu,
            seed=settings.seed,
            collate_fn=collate_fn,
            optimiser=self.optimiser or settings.optimiser,
            momentum=settings.momentum if self.optimiser is None else 0.0,
        )

    def private_loss(self) -> LossFn | None:
        """Cross-entropy (``None``); refused for an optimiser other than DP-SGD's Adam."""
        _adam_only(self.optimiser)
        return None


@dataclass(frozen=True)
class LossStep:
    """Minibatch training of any loss: the default loop with another loss and optimiser.

    Parameters
    ----------
    loss
        ``loss(outputs, targets)``, the batch mean of per-example losses, e.g.
        ``torch.nn.functional.mse_loss`` for regression (targets shaped as the outputs).
    optimiser
        Adam or SGD, fresh each round, overriding the study's ``[plan] optimiser``; ``None``
        (default): the plan's (:attr:`StepSettings.optimiser`).
    """

    loss: LossFn
    optimiser: Optimiser | None = None

    def check(self, model: nn.Module, dataset: Dataset[Any], *, collate_fn: Collate) -> None:
        """Refuse a loss that is not a finite number the model's parameters can move."""
        outputs, targets = probe(model, dataset, collate_fn=collate_fn, grad=True)
        value = self.loss(outputs, targets)
        name = getattr(self.loss, "__name__", type(self.loss).__name__)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ConfigError(
                f"the loss {name} must return one number (the batch mean), got "
                f"{type(value).__name__} of shape {_shape(value)}"
            )
        if not value.requires_grad or not torch.isfinite(value.detach()):
            raise ConfigError(
                f"the loss {name} on {type(model).__name__}'s outputs of shape "
                f"{_shape(outputs)} and targets of shape {_shape(targets)} is "
                f"{float(value.detach())}{'' if value.requires_grad else ' and has no gradient'}"
                "; training would not move the model: check the loss and the targets' shape"
            )

    def train(
        self,
        model: nn.Module,
        dataset: Dataset[Any],
        *,
        settings: StepSettings,
        collate_fn: Collate,
    ) -> LocalResult:
        """Run :func:`~alliance.models.training.train_locally` with this loss and optimiser."""
        return train_locally(
            model,
            dataset,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay,
            proximal_mu=settings.proximal_mu,
            seed=settings.seed,
            collate_fn=collate_fn,
            loss_fn=self.loss,
            optimiser=self.optimiser or settings.optimiser,
            momentum=settings.momentum if self.optimiser is None else 0.0,
        )

    def private_loss(self) -> LossFn | None:
        """The step's loss; refused for an optimiser other than DP-SGD's Adam."""
        _adam_only(self.optimiser)
        return self.loss


def _adam_only(optimiser: Optimiser | None) -> None:
    if optimiser is not None and optimiser is not Optimiser.ADAM:
        raise ConfigError(
            f"this study trains with DP-SGD, whose private steps use Adam, but the train_step "
            f"asks for {optimiser.value}; choose optimiser=Optimiser.ADAM (or None, the "
            "study's) for a private study"
        )


def _shape(value: Any) -> tuple[int, ...] | str:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else type(value).__name__
