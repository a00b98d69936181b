"""Top-k metrics, ranking a dataset, and the HTML report of a run."""

from alliance.evaluation.metrics import TOP_K, TopK, ranks_of_truth, top_k
from alliance.evaluation.ranking import rank_dataset, topk_counts, topk_from_counts
from alliance.evaluation.report import render_report, write_report

__all__ = [
    "TOP_K",
    "TopK",
    "rank_dataset",
    "ranks_of_truth",
    "render_report",
    "top_k",
    "topk_counts",
    "topk_from_counts",
    "write_report",
]
