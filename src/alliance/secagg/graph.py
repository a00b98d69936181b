"""Who masks with whom: every pair of sites (SecAgg), or a sparse ring of neighbours (SecAgg+).

Design
------
In the original protocol (Bonawitz et al. 2017) every pair of sites agrees on a pairwise mask
and every site secret-shares its keys with every other site: the *complete graph*. For large
consortia Bell et al. (2020, "SecAgg+") mask and share only along the edges of a sparse graph of
degree ``k``; the cost per site falls from O(n) to O(k) key agreements, masks and shares.

The sparse graph here is a Harary-style ring: the configured sites are put in an order that
depends on the attempt's public seed (SHA-256 of seed and site id; everyone computes the same
order, nobody chooses it), and each site is joined to the ``k // 2`` sites on either side of
it, plus, for odd ``k``, the site opposite it on the ring. The graph is symmetric; it is
``k``-regular when ``k`` is even or the number of sites is even. A degree of ``n - 1`` or more
is the complete graph.

A site's *neighbourhood* is itself and its neighbours: the sites that hold a share of its
secrets. Share indices (the Shamir x-coordinates) are positions in the sorted list of
configured sites, ``1..n``, the same for every site and every graph.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from alliance.core.errors import ConfigError

__all__ = ["MaskingGraph", "default_threshold"]


def default_threshold(n: int) -> int:
    """Fewest surviving sites among ``n``: ``n - floor(n/3)`` (12 → 8, 9 → 6, 4 → 3, 3 → 2).

    The one default of the package: a study's ``[secure_aggregation]`` threshold
    (:meth:`alliance.protocol.privacy.SecAggPlan.threshold_for`) and a round set-up without one
    (:class:`~alliance.secagg.round_setup.RoundSetup`) both use it.

    Any third of the sites may drop out (4 of 12). The threshold also bounds collusion: a lying
    coordinator that tells some sites a site dropped and others that it survived obtains both
    its mask seed and its key shares only with ``n_C >= 2t - n`` colluding sites (Bonawitz et al.
    2017: an honest site reveals one of the two for it, and ``t`` of each are needed). With
    ``t = n - floor(n/3)``, ``2t - n = n - 2 floor(n/3) >= n/3``, so a coordinator colluding
    with fewer than a third of the sites (3 of 12) learns no single site's update, and
    ``2t > n`` always holds (:class:`~alliance.secagg.round_setup.RoundSetup` refuses less).
    The paper's
    ``floor(2n/3) + 1`` (9 of 12, this module's default until the two were made one) resists
    more colluders (5 of 12) but one dropout fewer when ``n`` is a multiple of 3; set ``threshold``
    higher for a stronger collusion bound and less tolerance of dropouts.

    Raises
    ------
    ConfigError
        If ``n < 1``.
    """
    if n < 1:
        raise ConfigError(f"a threshold needs at least one site, got {n}")
    return n - n // 3


@dataclass(frozen=True)
class MaskingGraph:
    """The symmetric graph along which sites mask and share secrets.

    Build it with :meth:`complete` or :meth:`ring`; do not call the constructor directly.

    Parameters
    ----------
    sites
        The configured sites, sorted.
    degree
        ``None`` for the complete graph, else the requested number of neighbours.
    adjacency
        Each site's neighbours (without the site itself).
    """

    sites: tuple[str, ...]
    degree: int | None
    adjacency: Mapping[str, frozenset[str]]

    @classmethod
    def complete(cls, sites: Iterable[str]) -> MaskingGraph:
        """Every pair of sites is joined (the original SecAgg)."""
        ordered = _sorted_unique(sites)
        everyone = frozenset(ordered)
        return cls(ordered, None, {s: everyone - {s} for s in ordered})

    @classmethod
    def ring(cls, sites: Iterable[str], *, degree: int, seed: bytes) -> MaskingGraph:
        """A ring of ``degree`` neighbours per site in a seed-dependent order (SecAgg+).

        Raises
        ------
        ConfigError
            ``degree`` is below 2.
        """
        ordered = _sorted_unique(sites)
        if not isinstance(degree, int) or isinstance(degree, bool) or degree < 2:
            raise ConfigError(
                f"neighbours must be an integer >= 2 (or None for every pair), got {degree!r}"
            )
        n = len(ordered)
        if degree >= n - 1:
            return cls.complete(ordered)
        ring = sorted(ordered, key=lambda s: (hashlib.sha256(seed + s.encode()).digest(), s))
        links: dict[str, set[str]] = {s: set() for s in ordered}
        steps = list(range(1, degree // 2 + 1))
        if degree % 2:
            steps.append(n // 2)
        for pos, site in enumerate(ring):
            for step in steps:
                other = ring[(pos + step) % n]
                if other != site:
                    links[site].add(other)
                    links[other].add(site)
        return cls(ordered, degree, {s: frozenset(v) for s, v in links.items()})

    @property
    def is_complete(self) -> bool:
        """Whether every pair of sites is joined."""
        return self.degree is None

    def neighbours(self, site: str) -> frozenset[str]:
        """The sites that ``site`` masks with (not ``site`` itself)."""
        return self.adjacency[site]

    def neighbourhood(self, site: str) -> frozenset[str]:
        """``site`` and its neighbours: the holders of shares of its secrets."""
        return self.adjacency[site] | {site}

    def share_index(self, site: str) -> int:
        """The Shamir x-coordinate of ``site``: its position in the sorted sites, from 1."""
        return self.sites.index(site) + 1

    @property
    def neighbourhood_size(self) -> int:
        """Nominal size of a neighbourhood: ``n`` for the complete graph, else ``k + 1``."""
        return len(self.sites) if self.degree is None else self.degree + 1


def _sorted_unique(sites: Iterable[str]) -> tuple[str, ...]:
    listed: Sequence[str] = list(sites)
    for site in listed:
        if not isinstance(site, str) or not site:
            raise ConfigError(f"site ids must be non-empty strings, got {site!r}")
    if len(set(listed)) != len(listed):
        repeated = sorted({s for s in listed if listed.count(s) > 1})
        raise ConfigError(f"site list repeats {repeated}; list each site once")
    return tuple(sorted(listed))
