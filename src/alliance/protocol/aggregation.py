"""How a study turns the sites' updates into model versions: the ``[aggregation]`` table.

Two modes, written in ``study.toml`` and therefore part of the text every hospital approves::

    [aggregation]
    mode = "async"              # "sync" (default) or "async"
    buffer = 6                  # updates that make one model version (default: half the
                                # invited sites, at least 1)
    staleness_exponent = 0.5    # an update tau versions old counts (1 + tau)^-a times its cases
    max_staleness = 10          # updates trained on an older version are refused

- **sync** (the default): every round waits for its participants (or, at its deadline, for the
  quorum), and every update was trained on the round's model version. Rounds are as slow as the
  slowest hospital, which is right for online-only studies and required by secure aggregation.
- **async**: buffered, staleness-aware aggregation (FedBuff, Nguyen et al. 2022, with the
  polynomial discount of FedAsync, Xie et al. 2019). A round is the interval between two model
  versions: it closes as soon as ``buffer`` updates are in (or at its deadline with at least
  one), and the next opens at once, so online hospitals keep training while a hospital on files
  waits for its courier. An update trained on version ``v`` that arrives when the current
  version is ``c`` has staleness ``tau = c - v``; it is applied to the current weights with
  weight ``num_examples * (1 + tau) ** -staleness_exponent`` (normalised over the buffer), and
  refused, with the staleness and the limit in the reason, when ``tau > max_staleness``.
  ``[study] quorum`` is not used (``buffer`` plays its part); ``round_timeout_s`` is each
  round's deadline.

Asynchronous aggregation is refused together with ``[secure_aggregation]``: pairwise masks
cancel only within one cohort that answers the same round, which is exactly the synchronisation
asynchronous rounds give up (:func:`check_combination`, the one place this is checked).
Sites need none of this (they train whatever version a task carries), so
:class:`AggregationPlan` is the coordinator's alone and travels in no message.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alliance.core.errors import ConfigError
from alliance.protocol.privacy import SecAggPlan

__all__ = [
    "AggregationMode",
    "AggregationPlan",
    "check_combination",
    "default_buffer",
    "staleness_discount",
]

_TABLE = "[aggregation]"
_KEYS = ("mode", "buffer", "staleness_exponent", "max_staleness")
#: Upper bounds, so that a study that cannot run is refused before anyone approves it.
MAX_BUFFER = 10_000
MAX_STALENESS = 10_000
MAX_STALENESS_EXPONENT = 10.0


class AggregationMode(enum.Enum):
    """Whether rounds wait for their participants (``SYNC``) or close on a buffer (``ASYNC``)."""

    SYNC = "sync"
    ASYNC = "async"


def default_buffer(n_sites: int) -> int:
    """Updates per model version when the study does not say: half the sites, at least 1."""
    return max(1, n_sites // 2)


@dataclass(frozen=True)
class AggregationPlan:
    """A study's aggregation mode and, in ``async`` mode, its buffer and staleness rules.

    Parameters
    ----------
    mode
        :attr:`AggregationMode.SYNC` (default) or :attr:`AggregationMode.ASYNC`.
    buffer
        Updates that make one model version in ``async`` mode; ``None``: half of the round's
        participants, at least 1 (:func:`default_buffer`).
    staleness_exponent
        ``a`` of the discount ``(1 + tau) ** -a`` (0: stale updates count in full).
    max_staleness
        Oldest accepted update, in model versions behind the current one.
    """

    mode: AggregationMode = AggregationMode.SYNC
    buffer: int | None = None
    staleness_exponent: float = 0.5
    max_staleness: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.mode, AggregationMode):
            raise ConfigError(f"{_TABLE} mode must be an AggregationMode, got {self.mode!r}")
        if self.buffer is not None and not _is_int(self.buffer, minimum=1, maximum=MAX_BUFFER):
            raise ConfigError(
                f"{_TABLE} buffer must be an integer >= 1 and <= {MAX_BUFFER} (updates per model "
                f"version), got "
                f"{self.buffer!r}; leave it out for half of the invited sites"
            )
        a = self.staleness_exponent
        if (
            isinstance(a, bool)
            or not isinstance(a, int | float)
            or not math.isfinite(a)
            or not 0 <= a <= MAX_STALENESS_EXPONENT
        ):
            raise ConfigError(
                f"{_TABLE} staleness_exponent must be a number >= 0, got {a!r}, and at most "
                f"{MAX_STALENESS_EXPONENT:g}; 0.5 (the default) halves an update 3 versions old, "
                "0 counts stale updates in full"
            )
        if not _is_int(self.max_staleness, minimum=0, maximum=MAX_STALENESS):
            raise ConfigError(
                f"{_TABLE} max_staleness must be an integer >= 0 and <= {MAX_STALENESS} (model "
                "versions), got "
                f"{self.max_staleness!r}; set it above the courier's delay in versions"
            )

    @property
    def is_async(self) -> bool:
        """Whether rounds close on a buffer of possibly stale updates."""
        return self.mode is AggregationMode.ASYNC

    def buffer_for(self, n_sites: int) -> int:
        """Updates that close a round with ``n_sites`` participants (never more than them)."""
        wanted = default_buffer(n_sites) if self.buffer is None else self.buffer
        return max(1, min(wanted, n_sites))

    def discount(self, staleness: int) -> float:
        """``(1 + staleness) ** -staleness_exponent``: how much an update that old counts."""
        return staleness_discount(staleness=staleness, exponent=self.staleness_exponent)

    @classmethod
    def from_table(
        cls, table: Mapping[str, Any] | None, *, n_sites: int | None = None
    ) -> AggregationPlan:
        """Build from the study file's ``[aggregation]`` table (``None``: synchronous).

        Parameters
        ----------
        table
            The parsed table.
        n_sites
            The number of invited sites, when the study lists them (bounds ``buffer``).

        Raises
        ------
        ConfigError
            Naming the key, the value and what it accepts.
        """
        raw = dict(table or {})
        unknown = sorted(set(raw) - set(_KEYS))
        if unknown:
            raise ConfigError(f"{_TABLE} has unknown keys {unknown}; accepted: {list(_KEYS)}")
        mode_name = raw.pop("mode", AggregationMode.SYNC.value)
        try:
            mode = AggregationMode(mode_name)
        except ValueError:
            raise ConfigError(
                f'{_TABLE} mode must be "sync" or "async", got {mode_name!r}'
            ) from None
        if mode is AggregationMode.SYNC and raw:
            raise ConfigError(
                f'{_TABLE} {", ".join(sorted(raw))} only apply with mode = "async"; set the '
                "mode or remove them (synchronous rounds wait for every participant)"
            )
        plan = cls(mode=mode, **raw)
        if n_sites is not None:
            plan.check_sites(n_sites)
        return plan

    def check_sites(self, n_sites: int) -> None:
        """Refuse a ``buffer`` larger than the ``n_sites`` invited sites.

        Raises
        ------
        ConfigError
            Naming the buffer, the sites and the largest buffer allowed.
        """
        if self.buffer is not None and self.buffer > n_sites:
            raise ConfigError(
                f"{_TABLE} buffer {self.buffer} is larger than the {n_sites} invited sites, so "
                f"no model version could ever be made; use at most {n_sites}"
            )


def check_combination(aggregation: AggregationPlan, secagg: SecAggPlan) -> None:
    """Refuse asynchronous aggregation together with secure aggregation.

    Raises
    ------
    ConfigError
        Naming both tables and what to change.
    """
    if aggregation.is_async and secagg.enabled:
        raise ConfigError(
            f'{_TABLE} mode = "async" cannot be combined with [secure_aggregation]: a buffered '
            "model version sums updates of different cohorts, so asynchronous aggregation "
            "cannot be combined with secure aggregation, whose masks cancel only within one "
            'cohort that answers the same round; use mode = "sync" or disable secure aggregation'
        )


def staleness_discount(*, staleness: int, exponent: float) -> float:
    """``(1 + staleness) ** -exponent``, the FedAsync polynomial discount (1 for a fresh update).

    Raises
    ------
    ValueError
        If ``staleness`` is negative (an update cannot be trained on a future version).
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return float((1.0 + staleness) ** -exponent)


def _is_int(value: Any, *, minimum: int, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum
