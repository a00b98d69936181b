"""Aggregation strategies as a few hooks; the round loop lives once, in the coordinator.

A strategy sees the current global weights and the sites' updates (parameter deltas with their
example counts) and returns the next global weights. It may also adjust the training plan sent
to sites (FedProx sets the proximal term). Strategies register by name in :data:`STRATEGIES`.

- **FedAvg** (McMahan et al. 2017): the sample-weighted mean of the deltas.
- **FedProx** (Li et al. 2020): FedAvg aggregation; sites add ``mu/2 · ||w − w_global||²``.
- **FedAdam** (Reddi et al. 2021): the weighted mean delta is a pseudo-gradient for a server-side
  Adam step with its own learning rate and state.

Each update counts in proportion to its number of training examples, or to an explicit
:attr:`SiteUpdate.weight` when the round loop sets one (asynchronous rounds discount a stale
update by its staleness, :mod:`alliance.protocol.aggregation`); strategies do not know why.
Aggregation sums in float64 in sorted site order, so results do not depend on arrival order.
It streams: each site's delta is loaded, added and dropped in turn, so a coordinator needs memory
for the model, not for sites × model. A strategy's own state (FedAdam's moments) is exposed as
named arrays by ``state()`` and restored by ``load_state()``: the coordinator stores it with
every model version, so a restarted coordinator continues bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from alliance.core.errors import ConfigError, FederationError
from alliance.protocol.messages import TrainingPlan
from alliance.protocol.strategy_spec import (
    STRATEGY_DEFAULTS,
    StrategyName,
    StrategySpec,
    check_strategy_option,
    strategy_name,
)

__all__ = [
    "STRATEGIES",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "SiteUpdate",
    "Strategy",
    "StrategyName",
    "build_strategy",
    "make_strategy",
    "update_shares",
    "weighted_mean_delta",
]

Weights = Mapping[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class SiteUpdate:
    """One site's contribution to a round.

    ``delta`` is the parameter delta, or a function that loads it (from the coordinator's
    store), so that only one site's delta is in memory at a time while aggregating. ``weight``
    is the update's unnormalised weight in the mean; ``None`` (the default) means its
    ``num_examples``.
    """

    site: str
    num_examples: int
    delta: Weights | Callable[[], Weights]
    weight: float | None = None

    def load(self) -> Weights:
        """The parameter delta."""
        return self.delta() if callable(self.delta) else self.delta


def update_shares(updates: Sequence[SiteUpdate]) -> dict[str, float]:
    """Each update's normalised weight in the mean (they sum to 1), by site.

    Raises
    ------
    FederationError
        If there is no update, or a weight is negative or not finite, or they sum to zero.
    """
    shares: dict[str, float] = {}
    for u, share in zip(updates, _shares(updates), strict=True):
        shares[u.site] = shares.get(u.site, 0.0) + share
    return shares


def _shares(updates: Sequence[SiteUpdate]) -> list[float]:
    """Normalised weights, in the order of ``updates``."""
    if not updates:
        raise FederationError("no site update to aggregate: the round has no contribution")
    raw: list[int | float] = []
    for u in updates:
        value = u.num_examples if u.weight is None else u.weight
        if not math.isfinite(value) or value < 0:
            raise FederationError(
                f"update from {u.site}: its weight must be finite and >= 0, got {value}"
            )
        raw.append(value)
    # Integers while no weight is set, so that the shares are those of the plain sample count.
    total = sum(raw)
    if total <= 0:
        raise FederationError("the updates of this round weigh nothing (zero examples in all)")
    return [value / total for value in raw]


class Strategy(Protocol):
    """The hooks a strategy provides."""

    name: str

    def configure(self, plan: TrainingPlan) -> TrainingPlan:
        """The plan to send to sites this round."""
        ...

    def aggregate(
        self, weights: Weights, updates: Sequence[SiteUpdate]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """The next global weights."""
        ...

    def state(self) -> dict[str, npt.NDArray[np.float64]]:
        """The strategy's state as named arrays (empty for a stateless strategy)."""
        ...

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore what :meth:`state` returned."""
        ...


def weighted_mean_delta(updates: Sequence[SiteUpdate]) -> dict[str, npt.NDArray[np.float64]]:
    """Weighted mean of the deltas (weights: :func:`update_shares`), accumulated in float64, in
    sorted site order."""
    shares = _shares(updates)
    out: dict[str, npt.NDArray[np.float64]] = {}
    for i in sorted(range(len(updates)), key=lambda i: updates[i].site):
        delta = updates[i].load()
        if not out:
            out = {name: np.zeros(d.shape, dtype=np.float64) for name, d in delta.items()}
        for name, acc in out.items():
            acc += shares[i] * delta[name].astype(np.float64)
        del delta
    return out


def _check_options(strategy: Any, *names: str) -> None:
    """Each named option within its bounds (the study file's, checked by
    :func:`~alliance.protocol.strategy_spec.check_strategy_option`)."""
    for key in names:
        check_strategy_option(strategy_name(strategy.name), key, getattr(strategy, key))


def _default(name: StrategyName, key: str) -> float:
    return STRATEGY_DEFAULTS[name][key]


@dataclass
class FedAvg:
    """Sample-weighted federated averaging with a server learning rate (1.0 = plain FedAvg)."""

    server_lr: float = _default(StrategyName.FEDAVG, "server_lr")
    name: str = StrategyName.FEDAVG.value

    def __post_init__(self) -> None:
        _check_options(self, "server_lr")

    def configure(self, plan: TrainingPlan) -> TrainingPlan:
        """FedAvg sends the plan unchanged."""
        return plan

    def aggregate(
        self, weights: Weights, updates: Sequence[SiteUpdate]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """``w + server_lr · mean(delta)``."""
        mean = weighted_mean_delta(updates)
        return {k: (weights[k] + self.server_lr * mean[k]).astype(np.float32) for k in weights}

    def state(self) -> dict[str, npt.NDArray[np.float64]]:
        """FedAvg keeps no state."""
        return {}

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """FedAvg keeps no state; anything given is an error."""
        if state:
            raise ConfigError(f"fedavg keeps no state, got {sorted(state)[:3]}")


@dataclass
class FedProx(FedAvg):
    """FedAvg aggregation with a proximal term in every site's local loss."""

    mu: float = _default(StrategyName.FEDPROX, "mu")
    name: str = StrategyName.FEDPROX.value

    def __post_init__(self) -> None:
        _check_options(self, "server_lr", "mu")

    def configure(self, plan: TrainingPlan) -> TrainingPlan:
        """Set the proximal weight ``mu`` in the plan."""
        return replace(plan, proximal_mu=self.mu)


@dataclass
class FedAdam:
    """Server-side Adam on the mean delta (Reddi et al. 2021, "Adaptive Federated Optimization")."""

    server_lr: float = _default(StrategyName.FEDADAM, "server_lr")
    beta1: float = _default(StrategyName.FEDADAM, "beta1")
    beta2: float = _default(StrategyName.FEDADAM, "beta2")
    tau: float = _default(StrategyName.FEDADAM, "tau")
    name: str = StrategyName.FEDADAM.value

    def __post_init__(self) -> None:
        _check_options(self, "server_lr", "beta1", "beta2", "tau")
        self._m: dict[str, npt.NDArray[np.float64]] = {}
        self._v: dict[str, npt.NDArray[np.float64]] = {}

    def configure(self, plan: TrainingPlan) -> TrainingPlan:
        """FedAdam sends the plan unchanged."""
        return plan

    def aggregate(
        self, weights: Weights, updates: Sequence[SiteUpdate]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """One Adam step with the mean delta as the (negative) gradient."""
        mean = weighted_mean_delta(updates)
        out: dict[str, npt.NDArray[np.float32]] = {}
        for k, w in weights.items():
            m = self._m.get(k, np.zeros_like(mean[k]))
            v = self._v.get(k, np.zeros_like(mean[k]))
            m = self.beta1 * m + (1 - self.beta1) * mean[k]
            v = self.beta2 * v + (1 - self.beta2) * mean[k] ** 2
            self._m[k], self._v[k] = m, v
            out[k] = (w + self.server_lr * m / (np.sqrt(v) + self.tau)).astype(np.float32)
        return out

    def state(self) -> dict[str, npt.NDArray[np.float64]]:
        """The first and second moments, as ``m/<param>`` and ``v/<param>``."""
        return {
            **{f"m/{k}": m for k, m in self._m.items()},
            **{f"v/{k}": v for k, v in self._v.items()},
        }

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore the moments saved by :meth:`state`."""
        m: dict[str, npt.NDArray[np.float64]] = {}
        v: dict[str, npt.NDArray[np.float64]] = {}
        for key, arr in state.items():
            kind, _, name = key.partition("/")
            if kind not in ("m", "v") or not name:
                raise ConfigError(f"fedadam state has an unknown entry {key!r}")
            (m if kind == "m" else v)[name] = np.array(arr, dtype=np.float64)
        self._m, self._v = m, v


STRATEGIES: dict[StrategyName, Callable[..., Strategy]] = {
    StrategyName.FEDAVG: FedAvg,
    StrategyName.FEDPROX: FedProx,
    StrategyName.FEDADAM: FedAdam,
}


def make_strategy(name: str | StrategyName, **options: Any) -> Strategy:
    """Build a registered strategy by name, e.g. ``make_strategy("fedprox", mu=0.1)``.

    Raises
    ------
    ConfigError
        For an unknown name or an option the strategy does not take.
    """
    key = strategy_name(name)
    try:
        return STRATEGIES[key](**options)
    except TypeError as exc:
        raise ConfigError(f"[strategy] {key.value}: {exc}") from None


def build_strategy(spec: StrategySpec) -> Strategy:
    """Build the strategy a study's :class:`~alliance.protocol.strategy_spec.StrategySpec`
    names, with its options (checked when the spec was made)."""
    return make_strategy(spec.name, **spec.options)
