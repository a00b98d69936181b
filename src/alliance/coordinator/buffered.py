"""The rules of asynchronous rounds (FedBuff), kept apart from the synchronous round loop.

In a study with ``[aggregation] mode = "async"`` (:mod:`alliance.protocol.aggregation`) the
coordinator opens :class:`BufferedRound` rounds, a :class:`~alliance.coordinator.plain.PlainRound`
with four differences:

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
- **who gets a task**: a hospital on files whose task is still unanswered and young enough to
  count gets no new one (:class:`BufferedMode` remembers what was handed out, across rounds and,
  through :meth:`BufferedMode.restore_issued`, across restarts), so a hospital waiting for its
  courier does not train superseded versions and spend its privacy budget twice.

A rejected update changes no state, as in synchronous rounds; the reason names the staleness
and the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy.typing as npt

from alliance.algorithms.strategies import SiteUpdate, update_shares
from alliance.coordinator.plain import PlainRound, record_of
from alliance.coordinator.round import Closing, Opening, Receipt, Round, RoundMode
from alliance.core.errors import FederationError, ProtocolError
from alliance.core.faults import crash_point
from alliance.protocol.aggregation import AggregationPlan
from alliance.protocol.envelope import Envelope, Header
from alliance.protocol.messages import ModelUpdate
from alliance.store.state import CoordinatorStore, RoundState, UpdateMeta

__all__ = [
    "BufferedMode",
    "BufferedRound",
    "buffered_updates",
    "check_late_round",
    "check_late_update",
]

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


class BufferedMode(RoundMode):
    """Opens :class:`BufferedRound` rounds and remembers the tasks handed to hospitals on files.

    Parameters
    ----------
    plan
        The study's ``[aggregation]`` plan.
    offline
        Hospitals on files: they get no new task while the last one may still count.
    """

    def __init__(self, plan: AggregationPlan, offline: Collection[str] = ()) -> None:
        self.plan = plan
        self.offline = frozenset(offline)
        #: site → model version of its unanswered task.
        self.outstanding: dict[str, int] = {}

    def open(self, opening: Opening) -> Round:
        """A buffered round."""
        return BufferedRound(opening, self)

    def holds_task(self, site: str, version: int) -> bool:
        """``site`` still holds a task whose answer could count."""
        issued = self.outstanding.get(site)
        return issued is not None and version - issued <= self.plan.max_staleness

    def restore_issued(
        self, store: CoordinatorStore, study: str, issued: Mapping[str, int]
    ) -> None:
        """``issued`` gives, for hospitals on files, the version of the last task written for
        each (the coordinator's bundle ledger): one whose answer the store does not hold is on
        the road again, so the hospital is handed no second one before it comes back."""
        answered: dict[str, int] = {}
        for stored in store.rounds(study):
            for meta in store.updates(study, stored.round):
                base = -1 if meta.base_version is None else meta.base_version
                answered[meta.site] = max(answered.get(meta.site, -1), base)
        for site, version in issued.items():
            if site in self.offline and answered.get(site, -1) < version:
                self.outstanding[site] = version


class BufferedRound(PlainRound):
    """An asynchronous, staleness-aware round (see the module docstring)."""

    def __init__(self, opening: Opening, mode: BufferedMode) -> None:
        super().__init__(opening)
        self.mode = mode

    def check_round(self, header: Header) -> None:
        """A late update may answer an earlier round its sender took part in."""
        if header.round != self.number:
            check_late_round(self.opening.store, self.opening.study, header, open_round=self.number)
            return
        super().check_round(header)

    def base_version(self, header: Header, update: ModelUpdate) -> int:
        """The version a (possibly late) update was trained on, if it is young enough."""
        check_late_update(
            self.opening.store,
            self.opening.study,
            header,
            model_version=update.model_version,
            current_version=self.opening.version,
            open_round=self.number,
            plan=self.mode.plan,
        )
        return update.model_version

    def accept(self, env: Envelope) -> Receipt:
        """Store the update; its sender holds no task any more."""
        receipt = super().accept(env)
        if receipt is Receipt.ACCEPTED:
            self.mode.outstanding.pop(env.header.sender, None)
        return receipt

    def refuse(self, header: Header, reason: str) -> Receipt:
        """A refusal of an earlier round's task frees its sender for a new one."""
        if header.round != self.number:
            self.mode.outstanding.pop(header.sender, None)
            return Receipt.ACCEPTED
        self.mode.outstanding.pop(header.sender, None)
        return super().refuse(header, reason)

    def outgoing(self, site: str) -> Envelope | None:
        """The current task, unless ``site`` holds one that still counts; a hospital on files
        keeps the task it is handed until its reply comes back."""
        if self.mode.holds_task(site, self.opening.version):
            return None
        message = super().outgoing(site)
        if message is not None and site in self.mode.offline:
            self.mode.outstanding[site] = self.opening.version
        return message

    @property
    def complete(self) -> bool:
        """``buffer`` updates are in, or every participant answered or declined."""
        buffer = self.mode.plan.buffer_for(len(self.participants))
        return len(self.answered()) >= buffer or super().complete

    def close(self, quorum: int) -> Closing:
        """Apply the buffer's updates, each discounted by its staleness (one is enough)."""
        metas = self.opening.store.updates(self.opening.study, self.number)
        if not metas:
            raise FederationError(
                f"round {self.number}: no update yet; an asynchronous round closes with at "
                "least one"
            )
        crash_point("coordinator.after_quorum")
        updates, staleness = buffered_updates(
            metas, version=self.opening.version, plan=self.mode.plan, loader=self.loader
        )
        record = record_of(self.opening, metas, staleness=staleness, shares=update_shares(updates))
        late = sum(1 for tau in staleness.values() if tau > 0)
        return Closing(
            updates,
            record,
            f"round {self.number} closed with {len(metas)} updates ({late} late, staleness up to "
            f"{max(staleness.values())}; {record.num_examples} cases)",
        )
