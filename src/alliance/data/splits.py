"""Assigning real cases to hospitals without leaking publications across the split.

Published cases cluster by paper: the same authors, the same phenotyping habits, often the same
family. A case-level random split puts one paper's cases on both sides and inflates accuracy, so
:func:`split_by_publication` assigns whole publications to hospitals and holds whole
publications out as each hospital's test set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from alliance.core.errors import DataError
from alliance.data.cases import Case
from alliance.data.synth import HospitalSpec, SiteCohort

__all__ = ["split_by_publication"]


def split_by_publication(
    cases: Sequence[Case],
    hospitals: Sequence[HospitalSpec],
    *,
    seed: int,
    test_fraction: float = 0.25,
) -> tuple[SiteCohort, ...]:
    """Give each hospital whole publications, in proportion to its size, and hold some out.

    Parameters
    ----------
    cases
        Cases with ``publication`` set (cases without one form their own group).
    hospitals
        The consortium; ``n_cases`` sets each hospital's relative share, not an exact count.
    seed
        Seed of the assignment.
    test_fraction
        Share of each hospital's publications held out as its test set.
    """
    if not cases:
        raise DataError("no cases to split across hospitals")
    groups: defaultdict[str, list[Case]] = defaultdict(list)
    for case in cases:
        groups[case.publication or f"case:{case.id}"].append(case)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    share = np.array([h.n_cases for h in hospitals], dtype=np.float64)
    share /= share.sum()
    owner = rng.choice(len(hospitals), size=len(keys), p=share)
    held_out = rng.random(len(keys)) < test_fraction
    out: list[SiteCohort] = []
    for j, hospital in enumerate(hospitals):
        train = [
            c
            for k, o, t in zip(keys, owner, held_out, strict=True)
            if o == j and not t
            for c in groups[k]
        ]
        test = [
            c
            for k, o, t in zip(keys, owner, held_out, strict=True)
            if o == j and t
            for c in groups[k]
        ]
        out.append(SiteCohort(hospital, tuple(train), tuple(test)))
    return tuple(out)
