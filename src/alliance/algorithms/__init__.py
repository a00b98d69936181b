"""Aggregation strategies (FedAvg, FedProx, FedAdam) as hooks of the one round loop."""

from alliance.algorithms.strategies import (
    STRATEGIES,
    FedAdam,
    FedAvg,
    FedProx,
    SiteUpdate,
    Strategy,
    StrategyName,
    make_strategy,
    update_shares,
    weighted_mean_delta,
)

__all__ = [
    "STRATEGIES",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "SiteUpdate",
    "Strategy",
    "StrategyName",
    "make_strategy",
    "update_shares",
    "weighted_mean_delta",
]
