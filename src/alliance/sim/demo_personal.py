"""The demo's personalised models: each hospital's, judged against its own and the federated.

After the federated run every hospital derives its personalised model from the federated one on
its own training cases (:mod:`alliance.models.personal`), once per method compared; its own
held-out cases score each (they never enter the choice). The first method is the kept one: its
result is the hospital's *chosen* model (the federated model itself when personalising did not
help on the hospital's validation cases).

The demo's promise, per hospital and at top-1 and top-10: the chosen model is at least as good
as the better of the hospital's own model and the federated model, or the shortfall is within
sampling error: the better score lies inside the 95 % Wilson interval of the chosen model's
accuracy on the hospital's ``n`` held-out cases (:func:`wilson_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch.utils.data import Subset

from alliance.evaluation.metrics import top_k
from alliance.evaluation.ranking import rank_dataset
from alliance.models.features import PhenotypeFeatures
from alliance.models.personal import Personalisation, personalise, personalise_with_local
from alliance.models.ranker import CaseDataset, PhenotypeRanker

__all__ = ["judge_personalised", "personalise_sites", "wilson_interval"]

#: z of the two-sided 95 % interval.
Z95 = 1.959964


def personalise_sites(
    federated: PhenotypeRanker,
    train: Mapping[str, CaseDataset],
    test: Mapping[str, CaseDataset],
    features: PhenotypeFeatures,
    *,
    methods: Sequence[Personalisation],
    seed: int,
    local: Mapping[str, PhenotypeRanker],
    local_fit: Callable[[Subset[Any]], PhenotypeRanker],
) -> dict[str, dict[str, Any]]:
    """Per hospital and method: top-k on its held-out cases and what was chosen.

    ``local`` holds each hospital's own model; ``local_fit`` trains one like it on a subset
    (the mix's choice needs one that never saw the validation cases).
    """
    out: dict[str, dict[str, Any]] = {}
    for site, cases in train.items():
        runs: dict[str, Any] = {}
        for method in methods:
            if method is Personalisation.MIX:
                model, fit = personalise_with_local(
                    federated,
                    cases,
                    local=local[site],
                    local_fit=local_fit,
                    collate_fn=features.collate,
                    seed=seed,
                )
            else:
                model, fit = personalise(
                    federated, cases, method=method, collate_fn=features.collate, seed=seed
                )
            ranks = rank_dataset(model, test[site], collate_fn=features.collate)
            runs[method.value] = {**top_k(ranks).as_dict(), "fit": fit.as_dict()}
        out[site] = runs
    return out


def wilson_interval(p: float, n: int, *, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed on ``n`` cases."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def judge_personalised(
    personal: Mapping[str, Mapping[str, Any]], per_site: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Add each hospital's chosen model and the verdict at top-1 and top-10: ``"at least"``
    (≥ the better of local and federated), ``"within CI"`` or ``"below"``."""
    out: dict[str, Any] = {}
    for site, runs in personal.items():
        kept = next(iter(runs))
        chosen = runs[kept]
        verdict = {}
        for k in ("top1", "top10"):
            best = max(per_site[site]["local"][k] or 0.0, per_site[site]["federated"][k] or 0.0)
            value = chosen[k] or 0.0
            _, high = wilson_interval(value, int(chosen["n"]))
            verdict[k] = (
                "at least" if value >= best - 1e-9 else "within CI" if best <= high else "below"
            )
        out[site] = {**runs, "chosen": {**chosen, "method": kept, "verdict": verdict}}
    return out
