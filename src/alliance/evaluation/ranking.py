"""Scoring a dataset with a model and counting how often the truth ranks in the top k.

Works for any classifier whose output is one score per label and whose targets are label
indices (anything else is refused, naming the shapes); the site reports only the resulting
counts, never a per-case rank. :class:`TopKEvaluation` is the sites' default
:class:`~alliance.models.steps.EvalStep`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from alliance.evaluation.metrics import TOP_K, TopK, ranks_of_truth, top_k
from alliance.models.steps import Collate, check_class_scores
from alliance.models.training import call_model

__all__ = ["TopKEvaluation", "rank_dataset", "topk_counts", "topk_from_counts"]


def rank_dataset(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    batch_size: int = 256,
) -> npt.NDArray[np.int64]:
    """1-based rank of each item's target among the model's scores, in dataset order.

    Raises
    ------
    ConfigError
        The model's output is not one score per label, or the targets are not label indices.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    ranks: list[npt.NDArray[np.int64]] = []
    model.eval()
    with torch.no_grad():
        for inputs, targets in loader:
            outputs = call_model(model, inputs)
            check_class_scores(
                outputs,
                targets,
                who=f"top-k evaluation of {type(model).__name__}",
                remedy="Pass an eval_step for this task, e.g. RegressionEvaluation() for "
                "regression.",
                exactly_2d=True,
            )
            scores = outputs.detach().cpu().numpy()
            ranks.append(ranks_of_truth(scores, targets.cpu().numpy().tolist()))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def topk_counts(ranks: npt.NDArray[np.int64]) -> dict[str, float]:
    """Aggregate counts a site may share: ``eval_n`` and ``eval_top{k}`` hits."""
    out = {"eval_n": float(len(ranks))}
    for k in TOP_K:
        out[f"eval_top{k}"] = float(np.sum(ranks <= k))
    return out


def topk_from_counts(counts: Sequence[Mapping[str, float]]) -> TopK:
    """Pool several sites' counts into one :class:`TopK`.

    Only sites that report top-k counts are pooled: another task's metrics (regression sums,
    say) are left out, not counted as misses.
    """
    counts = [c for c in counts if all(f"eval_top{k}" in c for k in TOP_K)]
    n = sum(c.get("eval_n", 0.0) for c in counts)
    if n == 0:
        return top_k([])
    hits = [sum(c.get(f"eval_top{k}", 0.0) for c in counts) / n for k in TOP_K]
    return TopK(hits[0], hits[1], hits[2], int(n))


@dataclass(frozen=True)
class TopKEvaluation:
    """The sites' default evaluation: ``eval_n`` and the top-1/3/10 hit counts.

    Parameters
    ----------
    batch_size
        Cases scored at once.
    """

    batch_size: int = 256

    def evaluate(
        self, model: nn.Module, dataset: Dataset[Any], *, collate_fn: Collate
    ) -> dict[str, float]:
        """Top-k counts of ``model`` on ``dataset`` (see :func:`topk_counts`)."""
        return topk_counts(
            rank_dataset(model, dataset, collate_fn=collate_fn, batch_size=self.batch_size)
        )
