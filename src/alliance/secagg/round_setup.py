"""The public parameters of one secure-aggregation attempt, validated once, shared by both sides.

Design
------
A site's :class:`~alliance.secagg.client.SecAggClient` and the coordinator's
:class:`~alliance.secagg.server.SecAggServer` are built from the same :class:`RoundSetup`:
which attempt (:class:`~alliance.secagg.context.RoundContext`), which sites, how long the
integer vector is and its modulus, the threshold and the masking graph.

Two numbers govern dropouts:

``share_threshold`` (*t*)
    How many shares reconstruct a secret. In the complete graph *t* of the *n* sites (default
    :func:`~alliance.secagg.graph.default_threshold`, ``n - floor(n/3)``: 12 sites → 8, any 4
    may drop; the same default as a study's ``[secure_aggregation]``); with ``neighbours = k``,
    *t* of a site's ``k + 1`` neighbourhood (default ``m - floor(m/3)`` with ``m = k + 1``).
    *t* must exceed half the (nominal) neighbourhood: otherwise a lying coordinator could tell
    two disjoint halves two different survivor lists and collect both shares of a site.

``quorum``
    The fewest sites that must remain at every stage, and the fewest valid confirmation
    signatures a site accepts over the survivor list. Equal to *t* in the complete graph; with
    neighbours ``n - floor(n/3)`` of all *n* sites, so that the consistency check keeps its
    meaning (a site cannot vouch for a list signed by only a few neighbours).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alliance.core.errors import ConfigError
from alliance.secagg.context import RoundContext
from alliance.secagg.graph import MaskingGraph, default_threshold
from alliance.secagg.prg import dtype_for

__all__ = ["RoundSetup"]


@dataclass(frozen=True, kw_only=True)
class RoundSetup:
    """Public parameters of one secure-aggregation attempt (see the module docstring).

    Parameters
    ----------
    context
        The attempt every value is bound to.
    sites
        The configured cohort (any order; kept sorted). At least 2.
    vector_length
        Length of the integer vector each site masks.
    modulus_bits
        Arithmetic is modulo ``2**modulus_bits`` (1..64); vectors are ``uint32`` up to 32 bits,
        else ``uint64``. Take it from :attr:`alliance.secagg.Quantizer.modulus_bits`.
    threshold
        Shares needed to reconstruct a secret; ``None`` for the default.
    neighbours
        ``None``: every pair masks (SecAgg). ``k >= 2``: each site masks and shares with ``k``
        neighbours (SecAgg+); ``k >= n - 1`` is the complete graph.

    Raises
    ------
    ConfigError
        A parameter is invalid; the message says which and what is accepted.
    """

    context: RoundContext
    sites: tuple[str, ...]
    vector_length: int
    modulus_bits: int
    threshold: int | None = None
    neighbours: int | None = None
    graph: MaskingGraph = field(init=False, repr=False, compare=False)
    share_threshold: int = field(init=False)
    quorum: int = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.context, RoundContext):
            raise ConfigError(f"context must be a RoundContext, got {type(self.context).__name__}")
        _check_int("vector_length", self.vector_length, low=1)
        _check_int("modulus_bits", self.modulus_bits, low=1, high=64)
        if self.neighbours is None:
            graph = MaskingGraph.complete(self.sites)
        else:
            graph = MaskingGraph.ring(
                self.sites, degree=self.neighbours, seed=self.context.public_seed
            )
        n = len(graph.sites)
        if n < 2:
            raise ConfigError(f"secure aggregation needs at least 2 sites, got {n}")
        size = graph.neighbourhood_size
        t = default_threshold(size) if self.threshold is None else self.threshold
        where = "all sites" if graph.is_complete else "a neighbourhood"
        _check_int("threshold", t, low=2, high=size, what=f"({size} sites in {where})")
        if 2 * t <= size:
            raise ConfigError(
                f"threshold {t} is too low for {size} sites in {where}: it must exceed half of "
                f"them ({size // 2 + 1} or more; default {default_threshold(size)}), or a "
                "lying coordinator could obtain both shares of one site"
            )
        object.__setattr__(self, "sites", graph.sites)
        object.__setattr__(self, "graph", graph)
        object.__setattr__(self, "share_threshold", t)
        object.__setattr__(self, "quorum", t if graph.is_complete else default_threshold(n))

    @property
    def dtype(self) -> np.dtype[Any]:
        """The unsigned integer type of masked vectors (``uint32`` or ``uint64``)."""
        return np.dtype(dtype_for(self.modulus_bits))


def _check_int(name: str, value: Any, *, low: int, high: int | None = None, what: str = "") -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(
            f"{name} must be an integer {span}{' ' + what if what else ''}, got {value!r}"
        )
