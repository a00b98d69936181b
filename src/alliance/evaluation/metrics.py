"""Top-k accuracy of ranked differential diagnoses.

Pure functions over ranks: the rank of a case's true diagnosis among all candidate diseases
(1 = first). Ties are broken pessimistically, so a model that scores everything equally gets no
credit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["TOP_K", "TopK", "ranks_of_truth", "top_k"]

TOP_K: tuple[int, ...] = (1, 3, 10)


@dataclass(frozen=True)
class TopK:
    """Top-1/3/10 accuracy over ``n`` cases, as fractions in [0, 1]."""

    top1: float
    top3: float
    top10: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready form, accuracy rounded to 4 decimals; ``None`` when there are no cases."""
        if self.n == 0:
            return {"top1": None, "top3": None, "top10": None, "n": 0}
        return {
            "top1": round(self.top1, 4),
            "top3": round(self.top3, 4),
            "top10": round(self.top10, 4),
            "n": self.n,
        }


def ranks_of_truth(scores: npt.NDArray[np.floating], truth: Sequence[int]) -> npt.NDArray[np.int64]:
    """1-based rank of each case's true label in its score row (ties count against the model).

    Parameters
    ----------
    scores
        Array of shape ``(n_cases, n_labels)``; higher is better.
    truth
        True label index for each case.
    """
    if scores.ndim != 2 or scores.shape[0] != len(truth):
        raise ValueError(f"scores of shape {scores.shape} do not match {len(truth)} labels")
    idx = np.asarray(truth, dtype=np.int64)
    true_scores = scores[np.arange(len(idx)), idx]
    ranks: npt.NDArray[np.int64] = (scores >= true_scores[:, None]).sum(axis=1).astype(np.int64)
    return ranks


def top_k(ranks: npt.NDArray[np.int64] | Sequence[int]) -> TopK:
    """Top-1/3/10 accuracy from ranks; an empty input gives zeros with ``n = 0``."""
    arr = np.asarray(ranks, dtype=np.int64)
    if arr.size == 0:
        return TopK(0.0, 0.0, 0.0, 0)
    return TopK(
        top1=float(np.mean(arr <= 1)),
        top3=float(np.mean(arr <= 3)),
        top10=float(np.mean(arr <= 10)),
        n=int(arr.size),
    )
