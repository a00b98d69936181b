"""The coordinator and its round loop, written once for every transport and strategy.

A round: the coordinator publishes a :class:`~alliance.protocol.messages.TrainTask` (round,
model version, plan, weights) to each invited site; sites fetch it, train and submit a
:class:`~alliance.protocol.messages.ModelUpdate`. Each update is checked before it counts: bound
to this federation, study and round, from an invited site that has not yet answered, with a fresh
nonce, for the current model version, with the model's parameter names, shapes and finite
values. A rejected message changes no state; the reason is kept in :attr:`Coordinator.rejections`.
When every invited site has answered (or, at :meth:`Coordinator.close_round`, at least the
quorum has), the strategy aggregates the updates, in sorted site order, into a new model version.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from alliance.algorithms.strategies import SiteUpdate, Strategy
from alliance.core.errors import AllianceError, ConfigError, FederationError, ProtocolError
from alliance.evaluation.ranking import topk_from_counts
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import (
    ModelUpdate,
    StudyEnd,
    TrainingPlan,
    TrainTask,
    check_same_shapes,
)
from alliance.transport.base import CoordinatorMailbox

__all__ = ["Coordinator", "Rejection", "RoundRecord"]

logger = logging.getLogger(__name__)
Weights = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Rejection:
    """A message the coordinator refused, and why."""

    round: int
    sender: str
    reason: str


@dataclass(frozen=True)
class RoundRecord:
    """What a closed round produced: contributors and the sites' aggregate metrics."""

    round: int
    model_version: int
    sites: tuple[str, ...]
    num_examples: int
    train_loss: float
    site_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def evaluation(self) -> dict[str, float | int | None]:
        """Top-k of the model version the sites received this round, pooled over their test sets."""
        return topk_from_counts([dict(m) for m in self.site_metrics.values()]).as_dict()


class Coordinator:
    """Runs a study's rounds over a mailbox with a strategy.

    Parameters
    ----------
    federation, study
        Names every message is bound to.
    sites
        Invited site ids.
    weights
        Initial global weights (model version 0).
    strategy
        How updates become the next weights.
    plan
        Local training plan sent each round (after the strategy's ``configure``).
    mailbox
        The coordinator's end of the transport.
    quorum
        Fewest updates that may close a round at :meth:`close_round` (default: all sites).
    """

    def __init__(
        self,
        *,
        federation: str,
        study: str,
        sites: Sequence[str],
        weights: Mapping[str, npt.NDArray[np.float32]],
        strategy: Strategy,
        plan: TrainingPlan,
        mailbox: CoordinatorMailbox,
        quorum: int | None = None,
    ) -> None:
        if not sites:
            raise ConfigError("a study needs at least one invited site")
        if len(set(sites)) != len(sites):
            raise ConfigError(f"site ids must be unique, got {sorted(sites)}")
        self.federation = federation
        self.study = study
        self.sites = tuple(sorted(sites))
        self.weights: Weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.strategy = strategy
        self.plan = plan
        self.mailbox = mailbox
        self.quorum = len(self.sites) if quorum is None else quorum
        if not 1 <= self.quorum <= len(self.sites):
            raise ConfigError(f"quorum must be between 1 and {len(self.sites)} sites, got {quorum}")
        self.version = 0
        self.round = 0
        self.history: list[RoundRecord] = []
        self.rejections: list[Rejection] = []
        self._pending: dict[str, ModelUpdate] = {}
        self._seen_nonces: set[str] = set()
        self._open = False

    def _header(self, kind: MessageKind, recipient: str) -> Header:
        return Header(kind, self.federation, self.study, self.round, COORDINATOR, recipient)

    def start_round(self) -> int:
        """Open the next round and publish its task to every invited site; returns the round."""
        if self._open:
            raise FederationError(
                f"round {self.round} is still open; close it before starting another"
            )
        self.round += 1
        self._open = True
        self._pending = {}
        plan = self.strategy.configure(self.plan)
        for site in self.sites:
            task = TrainTask(
                self._header(MessageKind.TRAIN_TASK, site), self.version, plan, self.weights
            )
            self.mailbox.publish(task.to_envelope())
        return self.round

    def receive(self) -> int:
        """Check and file every submitted message; returns how many updates were accepted."""
        accepted = 0
        for env in self.mailbox.collect():
            try:
                update = self._check(env)
            except AllianceError as exc:
                self.rejections.append(Rejection(env.header.round, env.header.sender, str(exc)))
                logger.warning("rejected message from %s: %s", env.header.sender, exc)
                continue
            self._seen_nonces.add(env.header.nonce)
            self._pending[update.header.sender] = update
            accepted += 1
        return accepted

    def _check(self, env: Envelope) -> ModelUpdate:
        h = env.header
        if h.nonce in self._seen_nonces:
            raise ProtocolError(f"replayed message (nonce {h.nonce[:8]}... already seen)")
        if (h.federation, h.study, h.recipient) != (self.federation, self.study, COORDINATOR):
            raise ProtocolError(
                f"message bound to federation {h.federation!r}, study {h.study!r}, recipient "
                f"{h.recipient!r}; this coordinator runs {self.federation!r}/{self.study!r}"
            )
        if h.sender not in self.sites:
            raise ProtocolError(f"sender {h.sender!r} is not invited to study {self.study!r}")
        if not self._open or h.round != self.round:
            open_round = self.round if self._open else "none"
            raise ProtocolError(f"update for round {h.round}, but the open round is {open_round}")
        if h.sender in self._pending:
            raise ProtocolError(
                f"site {h.sender!r} already submitted an update for round {self.round}"
            )
        update = ModelUpdate.from_envelope(env)
        if update.model_version != self.version:
            raise ProtocolError(
                f"update trained on model version {update.model_version}, current is {self.version}"
            )
        check_same_shapes(
            update.delta, self.weights, what=f"update from {h.sender} round {h.round}"
        )
        return update

    @property
    def complete(self) -> bool:
        """Whether every invited site has answered the open round."""
        return self._open and len(self._pending) == len(self.sites)

    def close_round(self) -> RoundRecord:
        """Aggregate the updates received so far into a new model version.

        Raises
        ------
        FederationError
            If fewer than ``quorum`` sites answered; the round stays open and nothing changes.
        """
        if not self._open:
            raise FederationError("no round is open")
        if len(self._pending) < self.quorum:
            raise FederationError(
                f"round {self.round}: {len(self._pending)} of {len(self.sites)} sites answered, "
                f"quorum is {self.quorum}; wait for more sites or lower the quorum"
            )
        updates = [SiteUpdate(s, u.num_examples, u.delta) for s, u in sorted(self._pending.items())]
        self.weights = self.strategy.aggregate(self.weights, updates)
        self.version += 1
        n = sum(u.num_examples for u in updates)
        loss = (
            sum(
                u.num_examples * self._pending[u.site].metrics.get("train_loss", 0.0)
                for u in updates
            )
            / n
        )
        record = RoundRecord(
            round=self.round,
            model_version=self.version,
            sites=tuple(u.site for u in updates),
            num_examples=n,
            train_loss=loss,
            site_metrics={s: dict(u.metrics) for s, u in sorted(self._pending.items())},
        )
        self.history.append(record)
        self._open = False
        self._pending = {}
        return record

    def finish(self) -> None:
        """Tell every site the study is over."""
        for site in self.sites:
            self.mailbox.publish(
                StudyEnd(self._header(MessageKind.STUDY_END, site), self.version).to_envelope()
            )
