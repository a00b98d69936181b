"""How a site trains one round under the study's privacy plan, and what it charges its ledger.

The unit of privacy is the patient. With ``mechanism = "dp-sgd"`` the site trains with DP-SGD
(Poisson sampling at rate ``q = min(batch_size, n) / n``, per-patient clipping, Gaussian noise
from a cryptographically secure source) and the round is one event
``SampledGaussian(q, σ, steps)`` in the hospital's :class:`~alliance.privacy.ledger.PrivacyLedger`:

1. σ is the plan's ``noise_multiplier``, or, for a plan with a ``target_epsilon``, the smallest σ
   for which the study's rounds at this site's own ``q`` and steps spend at most the target
   (each hospital calibrates from its own size; the coordinator never learns it);
2. before any record is touched the site checks that the rounds still ahead in this study,
   added to everything its patients were already exposed to, stay within the hospital's budget;
   otherwise it raises :class:`~alliance.core.errors.BudgetExceeded` and the coordinator is told
   only "refused: budget";
3. the round is charged before training starts, so a crash can never release an uncharged update.

The round's training is the study's :class:`~alliance.models.steps.TrainStep` (the default:
cross-entropy with the plan's optimiser, Adam unless ``[plan] optimiser`` says
otherwise). It checks first that it can train the model, before anything is
charged; under DP-SGD the site's own mechanism trains, with the step's loss
(:meth:`~alliance.models.steps.TrainStep.private_loss`).

Client-level DP (``client_clip``) then clips the whole update to that L2 norm and adds Gaussian
noise: the full ``σ_c · C_c`` without secure aggregation, or ``σ_c · C_c / √t`` per site under
secure aggregation with threshold ``t`` — the sum of at least ``t`` surviving sites then carries
at least the full noise, which is what the consortium's client-level accounting assumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn
from torch.utils.data import Dataset

from alliance.core.errors import ConfigError
from alliance.models.steps import ClassifierStep, StepSettings, TrainStep
from alliance.models.training import Optimiser, get_weights
from alliance.privacy.accountant import SampledGaussian, calibrate_noise
from alliance.privacy.dpsgd import DPSGDConfig, train_privately
from alliance.privacy.ledger import Charge, PrivacyLedger
from alliance.privacy.noise import SecureGaussian
from alliance.protocol.messages import TrainingPlan
from alliance.protocol.privacy import PrivacyPlan

__all__ = ["LocalUpdate", "round_event", "train_under_plan"]

Arrays = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class LocalUpdate:
    """What one round of local training produced, before it is sent (or masked)."""

    delta: Arrays
    num_examples: int
    train_loss: float
    event: SampledGaussian | None
    clipped: bool = False
    #: The ledger's record of this round's charge (``None``: nothing charged now); ``new`` is
    #: ``False`` when the round had been charged before (a retrained round adds nothing).
    charge: Charge | None = None


def round_event(plan: TrainingPlan, privacy: PrivacyPlan, n: int) -> SampledGaussian:
    """The privacy event of one DP-SGD round at a site with ``n`` training cases."""
    if n < 1:
        raise ConfigError("a site needs at least one training case to train with DP-SGD")
    batch = _batch(plan, n)
    q = batch / n
    steps = plan.local_epochs * math.ceil(n / batch)
    if privacy.noise_multiplier is not None:
        sigma = float(privacy.noise_multiplier)
    else:
        assert privacy.target_epsilon is not None  # PrivacyPlan guarantees one of the two
        sigma = calibrate_noise(
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
            sample_rate=q,
            steps=steps * privacy.rounds,
        )
    return SampledGaussian(sample_rate=q, noise_multiplier=sigma, steps=steps)


def train_under_plan(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    plan: TrainingPlan,
    privacy: PrivacyPlan,
    start: Mapping[str, npt.NDArray[Any]],
    seed: int,
    study: str,
    round_: int,
    ledger: PrivacyLedger | None,
    secure_threshold: int | None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    noise: SecureGaussian | None = None,
    step: TrainStep | None = None,
) -> LocalUpdate:
    """Train ``model`` (already holding ``start``) for one round and return the update.

    ``step`` trains the round (default :class:`~alliance.models.steps.ClassifierStep`); under
    DP-SGD only its loss is used.

    Raises
    ------
    BudgetExceeded
        The study's remaining rounds would take the hospital past its privacy budget; nothing
        was read or trained.
    ConfigError
        The plan asks for DP-SGD but the site has no ledger to account it in, or the step
        cannot train this model (or cannot train it with DP-SGD); nothing was charged.
    """
    n = len(dataset)  # type: ignore[arg-type]
    event: SampledGaussian | None = None
    charge: Charge | None = None
    noise = noise or SecureGaussian()
    step = step or ClassifierStep()
    step.check(model, dataset, collate_fn=collate_fn)
    if privacy.patient_level:
        loss_fn = step.private_loss()
        if plan.optimiser != "adam":
            raise ConfigError(
                f"the plan asks for optimiser {plan.optimiser!r} but this study trains with "
                "DP-SGD, whose private steps use Adam; the study must not name another"
            )
        if ledger is None:
            raise ConfigError(
                "this study trains with DP-SGD but the site has no privacy ledger; set "
                "[privacy] ledger and budget_epsilon in site.toml"
            )
        event = round_event(plan, privacy, n)
        remaining_rounds = max(1, privacy.rounds - round_ + 1)
        ledger.ensure_within_budget(study=study, round=round_, event=event, rounds=remaining_rounds)
        charge = ledger.charge(study=study, round=round_, event=event)
        result = train_privately(
            model,
            dataset,
            config=DPSGDConfig(
                noise_multiplier=event.noise_multiplier, max_grad_norm=privacy.max_grad_norm
            ),
            epochs=plan.local_epochs,
            batch_size=_batch(plan, n),
            learning_rate=plan.learning_rate,
            weight_decay=plan.weight_decay,
            seed=seed,
            collate_fn=collate_fn,
            loss_fn=loss_fn,
            noise=noise,
        )
        loss = result.mean_loss
    else:
        settings = StepSettings(
            epochs=plan.local_epochs,
            batch_size=plan.batch_size,
            learning_rate=plan.learning_rate,
            weight_decay=plan.weight_decay,
            proximal_mu=plan.proximal_mu,
            seed=seed,
            optimiser=Optimiser(plan.optimiser),
            momentum=plan.momentum,
        )
        loss = step.train(model, dataset, settings=settings, collate_fn=collate_fn).mean_loss
    after = get_weights(model)
    delta = {k: after[k] - np.asarray(start[k], dtype=np.float32) for k in after}
    clipped = False
    if privacy.client_level:
        clipped = _clip_and_noise(delta, privacy, secure_threshold, noise)
    return LocalUpdate(delta, n, loss, event, clipped, charge)


def _batch(plan: TrainingPlan, n: int) -> int:
    """The expected batch size: the plan's, or every case when the site has fewer (q = 1)."""
    return min(plan.batch_size, n)


def _clip_and_noise(
    delta: Arrays, privacy: PrivacyPlan, secure_threshold: int | None, noise: SecureGaussian
) -> bool:
    """Client-level DP in place: clip the whole update to ``client_clip``, then add noise."""
    assert privacy.client_clip is not None
    assert privacy.client_noise_multiplier is not None
    norm = math.sqrt(sum(float(np.square(d, dtype=np.float64).sum()) for d in delta.values()))
    factor = min(1.0, privacy.client_clip / (norm + 1e-12))
    std = privacy.client_noise_multiplier * privacy.client_clip
    if secure_threshold is not None:
        std /= math.sqrt(secure_threshold)
    for d in delta.values():
        d *= factor
        if std > 0:
            d += noise.sample(d.shape, std=std).numpy().astype(np.float32, copy=False)
    return factor < 1.0
