"""Regression metrics a site may share: sums of squared and absolute errors, and their count.

A site reports sums over its held-out values (``eval_values``, ``eval_sse``, ``eval_sae``),
never a per-patient error; sums pool exactly across sites, so the federation's mean squared and
absolute errors are :func:`regression_from_sums` of the sites' metrics. The count is not called
``eval_n``: that name is top-k's case count, which the coordinator pools into accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from alliance.core.errors import ConfigError
from alliance.models.steps import Collate
from alliance.models.training import call_model

__all__ = ["REGRESSION_METRICS", "RegressionEvaluation", "RegressionScores", "regression_from_sums"]

#: The metrics :class:`RegressionEvaluation` reports.
REGRESSION_METRICS = ("eval_values", "eval_sse", "eval_sae")


@dataclass(frozen=True)
class RegressionEvaluation:
    """Sums of squared and absolute errors over a site's held-out values (an ``EvalStep``).

    Every output is one predicted value; the targets must hold as many values per batch as
    the outputs (a ``(batch,)`` target against a ``(batch, 1)`` output is fine).

    Parameters
    ----------
    batch_size
        Cases scored at once.
    """

    batch_size: int = 256

    def evaluate(
        self, model: nn.Module, dataset: Dataset[Any], *, collate_fn: Collate
    ) -> dict[str, float]:
        """``eval_values`` (predicted values), ``eval_sse`` and ``eval_sae`` over ``dataset``.

        Raises
        ------
        ConfigError
            The outputs and the targets of a batch hold different numbers of values.
        """
        loader = DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, collate_fn=collate_fn
        )
        values, sse, sae = 0, 0.0, 0.0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for inputs, targets in loader:
                    outputs = call_model(model, inputs)
                    if outputs.numel() != targets.numel():
                        raise ConfigError(
                            f"regression evaluation of {type(model).__name__}: outputs of "
                            f"shape {tuple(outputs.shape)} but targets of shape "
                            f"{tuple(targets.shape)}; each output must have one target value"
                        )
                    error = outputs.double().reshape(-1) - targets.double().reshape(-1)
                    values += error.numel()
                    sse += float(error.square().sum())
                    sae += float(error.abs().sum())
        finally:
            model.train(was_training)
        return {"eval_values": float(values), "eval_sse": sse, "eval_sae": sae}


@dataclass(frozen=True)
class RegressionScores:
    """Mean squared and absolute error over ``n`` values (``None`` when there are none)."""

    mse: float | None
    mae: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready form."""
        return {"mse": self.mse, "mae": self.mae, "n": self.n}


def regression_from_sums(metrics: Sequence[Mapping[str, float]]) -> RegressionScores:
    """Pool several sites' regression sums; sites without them (other tasks) are left out."""
    pooled = [m for m in metrics if all(k in m for k in REGRESSION_METRICS)]
    n = sum(m["eval_values"] for m in pooled)
    if n <= 0:
        return RegressionScores(None, None, 0)
    sse = sum(m["eval_sse"] for m in pooled)
    sae = sum(m["eval_sae"] for m in pooled)
    return RegressionScores(sse / n, sae / n, int(n))
