"""Scoring a dataset with a model and counting how often the truth ranks in the top k.

Works for any classifier whose output is one score per label and whose targets are label
indices; the site reports only the resulting counts, never a per-case rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from alliance.evaluation.metrics import TOP_K, TopK, ranks_of_truth, top_k
from alliance.models.training import call_model

__all__ = ["rank_dataset", "topk_counts", "topk_from_counts"]


def rank_dataset(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    batch_size: int = 256,
) -> npt.NDArray[np.int64]:
    """1-based rank of each item's target among the model's scores, in dataset order."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    ranks: list[npt.NDArray[np.int64]] = []
    model.eval()
    with torch.no_grad():
        for inputs, targets in loader:
            scores = call_model(model, inputs).detach().cpu().numpy()
            ranks.append(ranks_of_truth(scores, targets.cpu().numpy().tolist()))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def topk_counts(ranks: npt.NDArray[np.int64]) -> dict[str, float]:
    """Aggregate counts a site may share: ``eval_n`` and ``eval_top{k}`` hits."""
    out = {"eval_n": float(len(ranks))}
    for k in TOP_K:
        out[f"eval_top{k}"] = float(np.sum(ranks <= k))
    return out


def topk_from_counts(counts: list[dict[str, float]]) -> TopK:
    """Pool several sites' counts into one :class:`TopK`."""
    n = sum(c.get("eval_n", 0.0) for c in counts)
    if n == 0:
        return top_k([])
    hits = [sum(c.get(f"eval_top{k}", 0.0) for c in counts) / n for k in TOP_K]
    return TopK(hits[0], hits[1], hits[2], int(n))
