"""Top-k and regression metrics, the sites' evaluation steps, and the HTML report of a run."""

from alliance.evaluation.metrics import TOP_K, TopK, ranks_of_truth, top_k
from alliance.evaluation.ranking import (
    TopKEvaluation,
    rank_dataset,
    topk_counts,
    topk_from_counts,
)
from alliance.evaluation.regression import (
    REGRESSION_METRICS,
    RegressionEvaluation,
    RegressionScores,
    regression_from_sums,
)
from alliance.evaluation.report import render_report, write_report

__all__ = [
    "REGRESSION_METRICS",
    "TOP_K",
    "RegressionEvaluation",
    "RegressionScores",
    "TopK",
    "TopKEvaluation",
    "rank_dataset",
    "ranks_of_truth",
    "regression_from_sums",
    "render_report",
    "top_k",
    "topk_counts",
    "topk_from_counts",
    "write_report",
]
