"""A study's ``[strategy]`` table as a typed record: the strategy's name and its bounded options.

The study file names an aggregation strategy and may set its options::

    [strategy]
    name = "fedadam"      # "fedavg" (default), "fedprox" or "fedadam"
    server_lr = 0.1
    beta1 = 0.9

Each strategy takes its own options: ``server_lr`` (all three), ``mu`` (FedProx: the proximal
weight sites add to their loss), ``beta1``, ``beta2`` and ``tau`` (FedAdam's server-side Adam).
:class:`StrategySpec` checks the name, refuses an option the strategy does not take and bounds
every value, so a study that could never aggregate gets no hash a hospital could approve. The
strategies themselves (:mod:`alliance.algorithms.strategies`) check their options with the same
:func:`check_strategy_option`, so the bounds exist once.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alliance.core.errors import ConfigError

__all__ = [
    "STRATEGY_DEFAULTS",
    "StrategyName",
    "StrategySpec",
    "check_strategy_option",
    "strategy_name",
]


class StrategyName(enum.Enum):
    """Names under which strategies are registered."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDADAM = "fedadam"


#: The options each strategy takes, with their defaults.
STRATEGY_DEFAULTS: Mapping[StrategyName, Mapping[str, float]] = {
    StrategyName.FEDAVG: {"server_lr": 1.0},
    StrategyName.FEDPROX: {"server_lr": 1.0, "mu": 0.01},
    StrategyName.FEDADAM: {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
}

#: (lowest, whether it is allowed, highest, whether it is allowed) of each option: Adam's betas
#: stay below 1, the proximal weight may be 0, the others must be positive.
_BOUNDS: Mapping[str, tuple[float, bool, float, bool]] = {
    "server_lr": (0.0, False, 100.0, True),
    "mu": (0.0, True, 1000.0, True),
    "beta1": (0.0, False, 1.0, False),
    "beta2": (0.0, False, 1.0, False),
    "tau": (0.0, False, 1.0, True),
}


def strategy_name(value: object) -> StrategyName:
    """The :class:`StrategyName` that ``value`` (a name or the enum) stands for.

    Raises
    ------
    ConfigError
        ``[strategy] name: ...`` for an unknown name, listing the known ones.
    """
    if isinstance(value, StrategyName):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"[strategy] name must be a string such as 'fedavg', got {value!r}")
    try:
        return StrategyName(value)
    except ValueError:
        known = ", ".join(s.value for s in StrategyName)
        raise ConfigError(
            f"[strategy] name: unknown strategy {value!r}; choose one of: {known}"
        ) from None


def check_strategy_option(name: StrategyName, key: str, value: object) -> float:
    """Check one option of strategy ``name``; returns it as a float.

    Raises
    ------
    ConfigError
        ``[strategy] key ...`` when the strategy does not take ``key`` or ``value`` is not a
        finite number within the option's bounds.
    """
    taken = STRATEGY_DEFAULTS[name]
    if key not in taken:
        raise ConfigError(
            f"[strategy] {key}: {name.value} takes no option {key!r}; it takes {', '.join(taken)}"
        )
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"[strategy] {key} of {name.value} must be a number, got {value!r}")
    low, low_ok, high, high_ok = _BOUNDS[key]
    if value < low or (value == low and not low_ok):
        bound = f">= {low:g}" if low_ok else f"> {low:g}"
        raise ConfigError(f"[strategy] {key} of {name.value} must be {bound}, got {value!r}")
    if value > high or (value == high and not high_ok):
        bound = f"<= {high:g}" if high_ok else f"< {high:g}"
        raise ConfigError(f"[strategy] {key} of {name.value} must be {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class StrategySpec:
    """A study's strategy: its name and the options it sets (``None``: the default).

    Parameters
    ----------
    name
        Which strategy aggregates the updates.
    server_lr
        Server learning rate (every strategy).
    mu
        FedProx's proximal weight.
    beta1, beta2, tau
        FedAdam's moment decays and its denominator's offset.

    Raises
    ------
    ConfigError
        For an option the named strategy does not take, or one out of its bounds.
    """

    name: StrategyName = StrategyName.FEDAVG
    server_lr: float | None = None
    mu: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", strategy_name(self.name))
        for key in _BOUNDS:
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, check_strategy_option(self.name, key, value))

    @property
    def options(self) -> dict[str, float]:
        """Every option the strategy takes, with the defaults filled in."""
        out = dict(STRATEGY_DEFAULTS[self.name])
        for key in out:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @property
    def proximal_mu(self) -> float:
        """The proximal weight the strategy puts in every training plan (0 but for FedProx)."""
        return self.options["mu"] if self.name is StrategyName.FEDPROX else 0.0

    def to_table(self) -> dict[str, Any]:
        """The ``[strategy]`` table: the name and the options set."""
        table: dict[str, Any] = {"name": self.name.value}
        table.update({k: getattr(self, k) for k in _BOUNDS if getattr(self, k) is not None})
        return table

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> StrategySpec:
        """Build from the study file's ``[strategy]`` table (``None``: FedAvg, defaults).

        Raises
        ------
        ConfigError
            ``[strategy] key ...``, naming the key, what it accepts and what it got.
        """
        raw = dict(table or {})
        name = strategy_name(raw.pop("name", StrategyName.FEDAVG.value))
        for key, value in raw.items():
            check_strategy_option(name, key, value)
        return cls(name, **raw)
