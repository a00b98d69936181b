"""The rules of asynchronous rounds (FedBuff), kept apart from the synchronous round loop.

In a study with ``[aggregation] mode = "async"`` (:mod:`alliance.protocol.aggregation`) the
:class:`~alliance.coordinator.rounds.Coordinator` runs the same loop with three differences,
each a function here:

- **which updates count** (:func:`check_late_update`): an update may answer an earlier round
  than the open one. It must come from a participant of the round it answers and carry the model
  version that round handed out; its staleness, the current version minus that one, must not
  exceed ``max_staleness``. It is then filed under the *open* round (the store keeps the version
  it was trained on, so a restarted coordinator weighs it the same), and a site still
  contributes at most one update to a model version.
- **how much they count** (:func:`buffered_updates`): ``num_examples * (1 + tau) ** -a``,
  normalised by the strategy (:class:`~alliance.algorithms.strategies.SiteUpdate` ``weight``).
  Every delta, however old its base, is applied to the current weights, as FedBuff does.
- **when a round ends**: as soon as ``buffer`` updates are in, or at the deadline with at
  least one; the next round opens for every invited site at once.

A rejected update changes no state, as in synchronous rounds; the reason names the staleness
and the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy.typing as npt

from alliance.algorithms.strategies import SiteUpdate
from alliance.core.errors import ProtocolError
from alliance.protocol.aggregation import AggregationPlan
from alliance.protocol.envelope import Header
from alliance.store.state import CoordinatorStore, RoundState, UpdateMeta

__all__ = ["buffered_updates", "check_late_round", "check_late_update"]

Loader = Callable[[str], Callable[[], Mapping[str, npt.NDArray[Any]]]]


def _round(store: CoordinatorStore, study: str, round_: int) -> RoundState | None:
    return next((r for r in store.rounds(study) if r.round == round_), None)


def check_late_round(
    store: CoordinatorStore, study: str, header: Header, *, open_round: int
) -> None:
    """A message answering round ``header.round`` before the open one: it must name a round of
    this study in which its sender took part.

    Raises
    ------
    ProtocolError
        Naming the round, the sender and what was expected.
    """
    if header.round < 1 or header.round > open_round:
        raise ProtocolError(f"update for round {header.round}, but the open round is {open_round}")
    if header.round == open_round:
        return
    answered = _round(store, study, header.round)
    if answered is None or header.sender not in answered.participants:
        raise ProtocolError(
            f"site {header.sender!r} was not a participant of round {header.round}, which its "
            "update claims to answer"
        )


def check_late_update(
    store: CoordinatorStore,
    study: str,
    header: Header,
    *,
    model_version: int,
    current_version: int,
    open_round: int,
    plan: AggregationPlan,
) -> int:
    """The staleness of an update trained on ``model_version``, after checking it may count.

    Raises
    ------
    ProtocolError
        The version is not the one its round handed out, or the update is more than
        ``max_staleness`` versions old.
    """
    handed_out = current_version
    if header.round != open_round:
        answered = _round(store, study, header.round)
        handed_out = -1 if answered is None else answered.model_version
    if model_version != handed_out:
        raise ProtocolError(
            f"update for round {header.round} was trained on model version {model_version}, "
            f"but that round handed out version {handed_out}"
        )
    staleness = current_version - model_version
    if staleness > plan.max_staleness:
        raise ProtocolError(
            f"update from {header.sender} trained on model version {model_version} is "
            f"{staleness} versions old (current {current_version}); this study's [aggregation] "
            f"max_staleness is {plan.max_staleness}, so it is refused; the site may train the "
            "current version"
        )
    return staleness


def buffered_updates(
    metas: Sequence[UpdateMeta], *, version: int, plan: AggregationPlan, loader: Loader
) -> tuple[list[SiteUpdate], dict[str, int]]:
    """The open round's updates weighted ``num_examples * (1 + tau) ** -a``, and each site's
    staleness ``tau`` (``version``: the model version the round was opened on)."""
    updates: list[SiteUpdate] = []
    staleness: dict[str, int] = {}
    for meta in metas:
        base = version if meta.base_version is None else meta.base_version
        tau = staleness[meta.site] = version - base
        updates.append(
            SiteUpdate(
                meta.site,
                meta.num_examples,
                loader(meta.site),
                weight=meta.num_examples * plan.discount(tau),
            )
        )
    return updates, staleness
