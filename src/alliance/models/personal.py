"""A hospital's personalised model: the federated ranker, corrected for its own case mix.

The federated model ranks diseases as the federation's patients taught it; a specialised
hospital sees another case mix (a children's hospital, a heart hospital), and on its own
patients the federated model can be worse than the hospital's own model at top-1. The
personalised model is derived at the hospital, from the federated model and the hospital's own
training cases only, with nothing exchanged:

- **prior correction** (:attr:`Personalisation.PRIOR`, kept): add a per-disease log-prior bias
  fitted on the hospital's training cases, with additive shrinkage ``alpha`` toward a flat
  prior, ``delta_d = strength · log(n_d + alpha) − drop · b_d`` (constants cancel in the
  ranking; ``b`` is the federated model's learned ``disease_bias``, which carries the
  federation's case mix, and ``drop`` the share of it taken out), to ``disease_bias``. Closed
  form, one vector, no training;
- **bias fine-tuning** (:attr:`Personalisation.FINETUNE`, compared): a few epochs of local
  training of ``disease_bias`` alone, every other parameter frozen at the federated weights.

Either way the result is a :class:`~alliance.models.ranker.PhenotypeRanker` with the federated
weights and another ``disease_bias``: a model the hospital saves in the same never-pickled file
format and uses like any other.

The setting (``strength`` or epochs) is chosen on a **validation split of the hospital's
training cases** (:func:`validation_split`, seeded), never on its held-out test cases: the
candidates are fitted on the rest of the training cases and scored on the validation cases
(top-1 + top-10 hits; ties to the weaker setting), and ``0`` — the federated model itself — is
always a candidate, so the hospital keeps the federated model when personalising does not help
on its validation cases. The chosen setting is then refitted on all training cases.

- **mix with the hospital's own model** (:attr:`Personalisation.MIX`, the demo's chosen one):
  the prior-corrected model and the hospital's own model mixed in logit space
  (:func:`personalise_with_local`, :func:`mix_rankers`: one ranker of twice the width).

Caveat: the validation cases were among the hospital's training cases in the federated study, so
the federated model has seen them; the choice leans toward it (measured on the demo, where two
specialised hospitals stay short of their own model at top-1).

Measured on the 12-hospital demo (seed 7): see the README's *Personalised models*.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from alliance.models.ranker import CaseDataset, PhenotypeRanker
from alliance.models.training import train_locally

__all__ = [
    "FINETUNE_EPOCHS",
    "MIX_WEIGHTS",
    "PRIOR_DROPS",
    "PRIOR_STRENGTHS",
    "PersonalFit",
    "Personalisation",
    "case_mix_bias",
    "mix_rankers",
    "personalise",
    "personalise_with_local",
    "validation_split",
]

#: Candidate strengths of the prior correction (0: the federated model).
PRIOR_STRENGTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
#: Candidate shares of the federation's learned disease bias taken out (its case mix).
PRIOR_DROPS: tuple[float, ...] = (0.0, 0.5, 1.0)
#: Candidate epochs of bias fine-tuning (0: the federated model).
FINETUNE_EPOCHS: tuple[int, ...] = (0, 1, 2, 4)
#: Candidate weights of the hospital's own model in the mix (0: the prior-corrected model).
MIX_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Fraction of a hospital's training cases held for validation.
VALIDATION_FRACTION = 0.2

Collate = Callable[[list[Any]], Any]


class Personalisation(Enum):
    """How the personalised model is derived from the federated one."""

    PRIOR = "prior"
    FINETUNE = "finetune"
    #: The prior-corrected model mixed with the hospital's own model
    #: (:func:`personalise_with_local`; needs that model, so the demo's comparison only).
    MIX = "mix"


@dataclass(frozen=True)
class PersonalFit:
    """What personalising did, in numbers a hospital may log (counts, no patient).

    Attributes
    ----------
    method
        The personalisation.
    setting
        The chosen setting: ``strength`` and ``drop`` (prior) or ``epochs`` (fine-tuning); all
        0 is the federated model.
    n_train, n_validation
        Training cases, and how many of them were held for the choice.
    validation
        Top-1/top-10 on the validation cases per candidate setting, ``{setting: [top1, top10]}``.
    """

    method: Personalisation
    setting: dict[str, float]
    n_train: int
    n_validation: int
    validation: dict[str, list[float]]

    @property
    def personalised(self) -> bool:
        """Whether the chosen model differs from the federated one."""
        return any(v != 0 for v in self.setting.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "method": self.method.value, "personalised": self.personalised}


def validation_split(
    n: int, *, seed: int, fraction: float = VALIDATION_FRACTION
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Indices ``(fit, validation)`` of ``n`` training cases (a seeded permutation).

    Fewer than 5 cases give no validation cases (nothing to choose on: the federated model).
    """
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    n_val = round(n * fraction) if n >= 5 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def case_mix_bias(
    labels: Sequence[int] | npt.NDArray[np.int64],
    n_diseases: int,
    *,
    strength: float,
    alpha: float = 1.0,
) -> npt.NDArray[np.float32]:
    """The per-disease log-prior correction ``strength · log(n_d + alpha)`` of a case mix.

    ``alpha`` (> 0) shrinks toward the flat prior: a disease the hospital never saw gets
    ``strength · log(alpha)``, one seen ``n`` times ``strength · log(n + alpha)``.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_diseases)
    bias: npt.NDArray[np.float32] = (strength * np.log(counts + alpha)).astype(np.float32)
    return bias


def personalise(
    federated: PhenotypeRanker,
    train: CaseDataset,
    *,
    method: Personalisation = Personalisation.PRIOR,
    collate_fn: Collate,
    seed: int = 0,
    learning_rate: float = 0.01,
    batch_size: int = 64,
) -> tuple[PhenotypeRanker, PersonalFit]:
    """The personalised model of a hospital with training cases ``train`` (``federated`` is
    not changed), and what was chosen on the validation split of ``train``."""
    if method is Personalisation.MIX:
        raise ValueError("mixing with the hospital's own model is personalise_with_local's")
    labels = np.asarray(train.encoded.labels, dtype=np.int64)
    fit_idx, val_idx = validation_split(len(labels), seed=seed)
    tuning = _Tuning(collate_fn, seed=seed, learning_rate=learning_rate, batch_size=batch_size)
    candidates = _candidates(method)
    scores: dict[str, list[float]] = {}
    if len(val_idx):
        val = Subset(train, val_idx.tolist())
        truth = labels[val_idx]
        if method is Personalisation.PRIOR:
            base = _scores(federated, val, collate_fn)
            learned = federated.disease_bias.detach().numpy()
            for c in candidates:
                shift = _prior_shift(labels[fit_idx], learned, c)
                scores[_label(c)] = _hits(base + shift, truth)
        else:
            tuned, done = _copy(federated), 0
            for c in candidates:
                tuning.run(tuned, Subset(train, fit_idx.tolist()), int(c["epochs"]) - done)
                done = int(c["epochs"])
                scores[_label(c)] = _hits(_scores(tuned, val, collate_fn), truth)
    chosen = _best(candidates, scores)
    model = _copy(federated)
    if method is Personalisation.PRIOR:
        shift = _prior_shift(labels, federated.disease_bias.detach().numpy(), chosen)
        with torch.no_grad():
            model.disease_bias.add_(torch.from_numpy(shift))
    else:
        tuning.run(model, train, int(chosen["epochs"]))
    fit = PersonalFit(method, chosen, len(labels), len(val_idx), scores)
    return model, fit


def personalise_with_local(
    federated: PhenotypeRanker,
    train: CaseDataset,
    *,
    local: PhenotypeRanker,
    local_fit: Callable[[Subset[Any]], PhenotypeRanker],
    collate_fn: Collate,
    seed: int = 0,
) -> tuple[PhenotypeRanker, PersonalFit]:
    """The prior-corrected federated model mixed with the hospital's own model ``local``.

    The mix is ``(1 − w)·federated + w·local`` in logit space (:func:`mix_rankers`, itself a
    ranker); ``w`` is chosen on the validation split of ``train`` with the hospital's model
    retrained on the rest by ``local_fit`` (so no validation case was seen by what is scored),
    then applied to ``local`` (trained on all of ``train``).
    """
    corrected, prior = personalise(
        federated, train, method=Personalisation.PRIOR, collate_fn=collate_fn, seed=seed
    )
    labels = np.asarray(train.encoded.labels, dtype=np.int64)
    fit_idx, val_idx = validation_split(len(labels), seed=seed)
    candidates = [{**prior.setting, "local": w} for w in MIX_WEIGHTS]
    scores: dict[str, list[float]] = {}
    if len(val_idx):
        val = Subset(train, val_idx.tolist())
        shift = _prior_shift(
            labels[fit_idx], federated.disease_bias.detach().numpy(), prior.setting
        )
        fed = _scores(federated, val, collate_fn) + shift
        own = _scores(local_fit(Subset(train, fit_idx.tolist())), val, collate_fn)
        for c in candidates:
            w = np.float32(c["local"])
            scores[_label(c)] = _hits((1 - w) * fed + w * own, labels[val_idx])
    chosen = _best(candidates, scores)
    model = mix_rankers(corrected, local, weight=chosen["local"])
    return model, PersonalFit(Personalisation.MIX, chosen, len(labels), len(val_idx), scores)


def mix_rankers(a: PhenotypeRanker, b: PhenotypeRanker, *, weight: float) -> PhenotypeRanker:
    """One ranker scoring exactly ``(1 − weight)·a + weight·b`` (logits): the linear parameters
    mixed, the embeddings side by side scaled by the square roots (width ``a.dim + b.dim``)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if weight == 0.0:
        return _copy(a)
    mixed = _copy(a)
    sa, sb = math.sqrt(1.0 - weight), math.sqrt(weight)
    with torch.no_grad():
        for name in ("term_obs", "term_exc", "term_out", "disease_emb"):
            wide = torch.cat([sa * getattr(a, name), sb * getattr(b, name)], dim=1)
            mixed._parameters[name] = nn.Parameter(wide)
        for name in ("prior_obs", "prior_exc", "disease_bias"):
            value = (1.0 - weight) * getattr(a, name) + weight * getattr(b, name)
            mixed._parameters[name] = nn.Parameter(value)
    mixed.dim = a.dim + b.dim
    return mixed


def _candidates(method: Personalisation) -> list[dict[str, float]]:
    """The settings tried, the federated model itself first."""
    if method is Personalisation.FINETUNE:
        return [{"epochs": float(e)} for e in FINETUNE_EPOCHS]
    return [{"strength": s, "drop": d} for d in PRIOR_DROPS for s in PRIOR_STRENGTHS]


def _label(candidate: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in candidate.items())


def _prior_shift(
    labels: npt.NDArray[np.int64], learned: npt.NDArray[np.float32], c: dict[str, float]
) -> npt.NDArray[np.float32]:
    """What the prior correction adds to ``disease_bias``: the hospital's case mix in, and a
    share ``drop`` of the federation's learned bias (its case mix) out."""
    mix = case_mix_bias(labels, len(learned), strength=c["strength"])
    return (mix - np.float32(c["drop"]) * learned).astype(np.float32)


@dataclass(frozen=True)
class _Tuning:
    collate_fn: Collate
    seed: int
    learning_rate: float
    batch_size: int

    def run(self, model: PhenotypeRanker, data: Any, epochs: int) -> None:
        """Train ``disease_bias`` alone for ``epochs`` (every other parameter frozen)."""
        if epochs <= 0:
            return
        frozen = {name: p.requires_grad for name, p in model.named_parameters()}
        for name, p in model.named_parameters():
            p.requires_grad_(name == "disease_bias")
        try:
            train_locally(
                model,
                data,
                epochs=epochs,
                batch_size=self.batch_size,
                learning_rate=self.learning_rate,
                seed=self.seed,
                collate_fn=self.collate_fn,
            )
        finally:
            for name, p in model.named_parameters():
                p.requires_grad_(frozen[name])


def _copy(model: PhenotypeRanker) -> PhenotypeRanker:
    """A copy with its own parameters; the (sparse, read-only) disease profiles are shared."""
    clone = copy.copy(model)
    clone._parameters = {  # a shallow copy shares the parameter table: give it its own
        name: None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad)
        for name, p in model._parameters.items()
    }
    return clone


def _best(candidates: list[dict[str, float]], scores: dict[str, list[float]]) -> dict[str, float]:
    """The candidate with most top-1 + top-10 hits on validation; ties to the earliest (the
    federated model first)."""
    if not scores:
        return candidates[0]
    return max(candidates, key=lambda c: (sum(scores[_label(c)]), -candidates.index(c)))


def _scores(
    model: PhenotypeRanker, data: Subset[Any], collate_fn: Collate
) -> npt.NDArray[np.float32]:
    out = []
    model.eval()
    with torch.no_grad():
        for (observed, excluded), _ in DataLoader(data, batch_size=256, collate_fn=collate_fn):
            out.append(model(observed, excluded).numpy())
    return np.concatenate(out).astype(np.float32)


def _hits(scores: npt.NDArray[np.float32], truth: npt.NDArray[np.int64]) -> list[float]:
    true = scores[np.arange(len(truth)), truth][:, None]
    ranks = 1 + np.sum(scores > true, axis=1)
    return [float(np.mean(ranks <= 1)), float(np.mean(ranks <= 10))]
