"""A round of a study, whatever its mode: the one interface the coordinator and the driver use.

A round is opened by the :class:`~alliance.coordinator.rounds.Coordinator` with an
:class:`Opening` (who takes part, on which model version, how a site's task is built) and then
only answers questions and files messages; it never calls back into the coordinator::

    accept(env)      a site's update or secure-aggregation answer (binding already checked)
    refuse(h, why)   a site declined its task: it is not waited for
    outgoing(site)   what the site should receive now (its task, a stage message) or None
    advance(now)     move stages on (secure rounds); False when nothing changed
    complete         every site still expected has answered (or the mode's own rule)
    close(quorum)    the updates to aggregate and the record of the round

One implementation per mode: :class:`~alliance.coordinator.plain.PlainRound` (synchronous
plaintext updates), :class:`~alliance.coordinator.buffered.BufferedRound` (FedBuff, late updates
discounted by staleness) and :class:`~alliance.coordinator.secure_round.SecureAggregationRound`
(masked vectors, only the sum revealed). What a mode keeps from one round to the next (tasks on
the road for hospitals on files, secure-aggregation key batches) lives in its :class:`RoundMode`,
the factory the coordinator asks for each new round.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from alliance.algorithms.strategies import SiteUpdate
from alliance.evaluation.ranking import topk_from_counts
from alliance.protocol.envelope import Envelope, Header
from alliance.protocol.messages import TrainTask
from alliance.secagg import RoundContext
from alliance.store.state import CoordinatorStore

__all__ = [
    "Closing",
    "Opening",
    "Receipt",
    "Round",
    "RoundMode",
    "RoundRecord",
    "TaskFactory",
    "Weights",
]

Weights = dict[str, npt.NDArray[np.float32]]
#: ``task(site, cohort, attempt, key_slot)``: the open round's training task for ``site``.
TaskFactory = Callable[[str, tuple[str, ...], int, RoundContext | None], TrainTask]


class Receipt(enum.Enum):
    """What became of a message the coordinator accepted."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class RoundRecord:
    """What a closed round produced: contributors and the sites' aggregate metrics.

    ``model_version`` is the version the round produced; the sites' metrics (top-k on their
    held-out cases) were measured on the version they received, ``model_version - 1``. In
    asynchronous rounds ``staleness`` gives each contributor's staleness (model versions
    between the one it trained on and the one this round improved) and ``shares`` its
    normalised weight in the aggregate; both are empty for synchronous rounds.
    """

    round: int
    model_version: int
    sites: tuple[str, ...]
    num_examples: int
    train_loss: float
    site_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    staleness: Mapping[str, int] = field(default_factory=dict)
    shares: Mapping[str, float] = field(default_factory=dict)

    @property
    def evaluated_version(self) -> int:
        """The model version the sites' metrics were measured on (the one they received)."""
        return self.model_version - 1

    def evaluation(self) -> dict[str, float | int | None]:
        """Top-k of the model version the sites received this round, pooled over their test sets."""
        return topk_from_counts([dict(m) for m in self.site_metrics.values()]).as_dict()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (the round summary kept in the store)."""
        return {
            "round": self.round,
            "model_version": self.model_version,
            "sites": list(self.sites),
            "num_examples": self.num_examples,
            "train_loss": self.train_loss,
            "site_metrics": {s: dict(m) for s, m in self.site_metrics.items()},
            # Only asynchronous rounds have these; synchronous summaries stay as they were.
            **({"staleness": dict(self.staleness)} if self.staleness else {}),
            **({"shares": dict(self.shares)} if self.shares else {}),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RoundRecord:
        """Inverse of :meth:`to_json`."""
        return cls(
            round=int(raw["round"]),
            model_version=int(raw["model_version"]),
            sites=tuple(raw["sites"]),
            num_examples=int(raw["num_examples"]),
            train_loss=float(raw["train_loss"]),
            site_metrics={s: dict(m) for s, m in raw["site_metrics"].items()},
            staleness={s: int(t) for s, t in raw.get("staleness", {}).items()},
            shares={s: float(w) for s, w in raw.get("shares", {}).items()},
        )


@dataclass(frozen=True)
class Opening:
    """Everything a round needs from the coordinator, handed over when it opens.

    Parameters
    ----------
    study
        The study's id (the store's key).
    number
        The round's number (1-based).
    version
        The model version the round hands out.
    weights
        That version's weights (shapes to check updates against; the masked vector's layout).
    participants
        The sites asked to take part.
    store
        The study's durable state (updates are stored there as they arrive).
    task
        Builds a participant's training task.
    deadline
        When the round (its training stage) gives up on silent sites; ``None``: only when the
        driver says so.
    """

    study: str
    number: int
    version: int
    weights: Weights
    participants: tuple[str, ...]
    store: CoordinatorStore
    task: TaskFactory
    deadline: float | None = None


@dataclass(frozen=True)
class Closing:
    """What a round hands the strategy when it closes: the updates, its record and a log line."""

    updates: list[SiteUpdate]
    record: RoundRecord
    message: str


class Round(ABC):
    """One open round of one mode (see the module docstring)."""

    def __init__(self, opening: Opening) -> None:
        self.opening = opening
        #: Sites that declined this round (``site → reason``); they are not waited for.
        self.refusals: dict[str, str] = {}

    @property
    def number(self) -> int:
        """The round's number."""
        return self.opening.number

    @property
    def participants(self) -> tuple[str, ...]:
        """The sites asked to take part."""
        return self.opening.participants

    @property
    def stage(self) -> str:
        """The round's stage, for status pages (plaintext rounds have one: ``"train"``)."""
        return "train"

    @property
    def aborted(self) -> str | None:
        """Why the round's current attempt failed and needs a retry (secure rounds only)."""
        return None

    @property
    def stage_deadline(self) -> float | None:
        """When the current stage gives up on silent sites, for rounds whose stages keep their
        own deadlines (secure rounds); ``None``: the round's deadline decides."""
        return None

    @abstractmethod
    def check_round(self, header: Header) -> None:
        """Raise :class:`~alliance.core.errors.ProtocolError` unless a message naming round
        ``header.round`` from ``header.sender`` may count in this round."""

    @abstractmethod
    def accept(self, env: Envelope) -> Receipt:
        """File a site's answer; raises :class:`~alliance.core.errors.ProtocolError` (nothing
        changed) when it is refused."""

    def refuse(self, header: Header, reason: str) -> Receipt:
        """``header.sender`` declined its task for round ``header.round``."""
        if header.sender in self.refusals:
            return Receipt.DUPLICATE
        self.refusals[header.sender] = reason
        return Receipt.ACCEPTED

    @abstractmethod
    def outgoing(self, site: str) -> Envelope | None:
        """What ``site`` should receive now, or ``None``."""

    @abstractmethod
    def answered(self) -> set[str]:
        """Sites whose answer to the current stage is in."""

    def waiting(self) -> set[str]:
        """Participants still expected to answer (neither answered nor refused)."""
        return set(self.participants) - self.answered() - set(self.refusals)

    @property
    def complete(self) -> bool:
        """Whether every participant has answered or declined."""
        return not self.waiting()

    def advance(self, *, now: float, stage_timeout_s: float, force: bool = False) -> bool:
        """Move to the next stage when the current one is over; whether anything changed."""
        return False

    def stage_event(self) -> tuple[str, str]:
        """``(event kind, message)`` for the log after :meth:`advance` changed something."""
        return "round_stage", f"round {self.number}: {self.stage}"

    def retry(self, participants: tuple[str, ...], deadline: float | None) -> None:
        """Start a new attempt after :attr:`aborted` (secure rounds only)."""
        raise NotImplementedError(f"{type(self).__name__} has no attempts to retry")

    @abstractmethod
    def close(self, quorum: int) -> Closing:
        """The updates to aggregate; raises :class:`~alliance.core.errors.FederationError`
        (the round stays open, nothing changed) when it cannot close yet."""


class RoundMode(ABC):
    """Opens the rounds of one mode and keeps what the mode carries from round to round."""

    @abstractmethod
    def open(self, opening: Opening) -> Round:
        """A new round (or, after a restart, the open round again)."""

    def holds_task(self, site: str, version: int) -> bool:
        """Whether ``site`` still holds a task whose answer could count (no new one then)."""
        return False

    def restore_issued(
        self, store: CoordinatorStore, study: str, issued: Mapping[str, int]
    ) -> None:
        """After a restart: the tasks last written to hospitals on files (asynchronous rounds)."""
        return None
