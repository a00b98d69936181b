"""The coordinator's durable state: studies, model versions, rounds, updates, rejections.

The round loop (:class:`~alliance.coordinator.Coordinator`) keeps nothing that matters only in
memory: every state change goes through a :class:`CoordinatorStore` in one transaction, so a
coordinator killed at any instant restarts from the last committed state and finishes the study
with the same final model. Three rules make that hold:

- **an update counts once**: ``(study, round, site)`` and every message nonce are unique; storing
  the same update again is recognised by its digest and reported as a duplicate, not counted
  (an asynchronous round files a late update under the round open when it arrives, with the
  model version it was trained on, so that its staleness survives a restart);
- **a round closes atomically**: the new model version, the strategy's state, the round summary
  and the release of the round's update payloads are one transaction;
- **payloads are read one at a time**: :meth:`CoordinatorStore.load_delta` returns one site's
  delta, so aggregation needs memory for the model, not for sites × model.

Two implementations share one contract test suite (``tests/contract/test_store.py``):
:class:`~alliance.store.memory.MemoryStore` (the simulation's) and
:class:`~alliance.store.sql.SqlStore` (SQLAlchemy: SQLite by default, PostgreSQL by URL).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "CoordinatorStore",
    "DuplicateUpdate",
    "RoundState",
    "RoundStatus",
    "StoredEvent",
    "StoredRejection",
    "StudyRecord",
    "StudyStatus",
    "UpdateMeta",
]

Weights = Mapping[str, npt.NDArray[Any]]


class StudyStatus(enum.Enum):
    """Where a study stands."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"  # by an operator (`alliance study cancel`)


class RoundStatus(enum.Enum):
    """Whether a round still takes updates."""

    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class StudyRecord:
    """A submitted study: its spec (TOML text) exactly as approved, by its sha256."""

    study_id: str
    spec: str
    spec_hash: str
    submitted_by: str
    status: StudyStatus
    created_at: float
    finished_at: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class RoundState:
    """One round of a study.

    ``summary`` is filled when the round closes: contributors, example count, training loss
    and the sites' aggregate metrics (JSON-ready).
    """

    study_id: str
    round: int
    model_version: int
    participants: tuple[str, ...]
    deadline: float | None
    status: RoundStatus
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UpdateMeta:
    """An accepted update without its payload.

    ``base_version`` is the model version the site trained on. In a synchronous round it is
    the round's own version; in an asynchronous one it may be older, and the round's version
    minus it is the update's staleness. ``None`` for updates stored before the store kept it
    (SQL schema version 1).
    """

    site: str
    nonce: str
    digest: str
    num_examples: int
    metrics: Mapping[str, float]
    base_version: int | None = None


@dataclass(frozen=True)
class StoredRejection:
    """A message the coordinator refused."""

    study_id: str
    round: int
    sender: str
    reason: str
    at: float


@dataclass(frozen=True)
class StoredEvent:
    """A line of a study's log (what ``alliance study logs`` prints)."""

    study_id: str
    at: float
    kind: str
    message: str


class DuplicateUpdate(Exception):  # noqa: N818 - a signal, not an error
    """Raised by :meth:`CoordinatorStore.add_update` for an update already stored byte for byte.

    The caller answers the site "already received" and counts nothing.
    """


@runtime_checkable
class CoordinatorStore(Protocol):
    """Durable coordinator state; every method is one transaction."""

    # --- studies ---------------------------------------------------------------------------
    def add_study(self, record: StudyRecord) -> None:
        """Store a new study (``ConfigError`` if its id exists)."""
        ...

    def study(self, study_id: str) -> StudyRecord | None:
        """One study, or ``None``."""
        ...

    def studies(self) -> list[StudyRecord]:
        """Every study, oldest first."""
        ...

    def set_study_status(
        self, study_id: str, status: StudyStatus, *, error: str | None = None
    ) -> None:
        """Move a study to ``status`` (stamps ``finished_at`` for FINISHED and FAILED)."""
        ...

    # --- model versions --------------------------------------------------------------------
    def save_initial_model(self, study_id: str, weights: Weights, strategy_state: Weights) -> None:
        """Store model version 0 unless it exists (idempotent, for restarts)."""
        ...

    def latest_model(
        self, study_id: str
    ) -> tuple[int, dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]:
        """``(version, weights, strategy_state)`` of the newest model version."""
        ...

    def model(self, study_id: str, version: int) -> dict[str, npt.NDArray[Any]]:
        """The weights of one model version (``ConfigError`` if absent)."""
        ...

    # --- rounds ----------------------------------------------------------------------------
    def open_round(
        self,
        study_id: str,
        round_: int,
        *,
        model_version: int,
        participants: Sequence[str],
        deadline: float | None,
    ) -> None:
        """Open round ``round_`` (``FederationError`` if a round is open or it exists)."""
        ...

    def current_round(self, study_id: str) -> RoundState | None:
        """The newest round of the study (open or closed), or ``None`` before the first."""
        ...

    def rounds(self, study_id: str) -> list[RoundState]:
        """Every round, in order."""
        ...

    def set_deadline(self, study_id: str, round_: int, deadline: float | None) -> None:
        """Move the deadline of an open round."""
        ...

    def add_update(self, study_id: str, round_: int, meta: UpdateMeta, delta: Weights) -> None:
        """Store an accepted update of an open round.

        Raises
        ------
        DuplicateUpdate
            The same site already has an update with the same digest in this round.
        alliance.core.errors.ProtocolError
            The site already has a different update in this round, the nonce was used before,
            or the round is not open. Nothing is stored.
        """
        ...

    def updates(self, study_id: str, round_: int) -> list[UpdateMeta]:
        """The accepted updates of a round, in site order."""
        ...

    def load_delta(self, study_id: str, round_: int, site: str) -> dict[str, npt.NDArray[Any]]:
        """One site's delta (open rounds only; payloads are released when a round closes)."""
        ...

    def nonce_seen(self, nonce: str) -> bool:
        """Whether an accepted message ever carried ``nonce``."""
        ...

    def close_round(
        self,
        study_id: str,
        round_: int,
        *,
        new_version: int,
        weights: Weights,
        strategy_state: Weights,
        summary: Mapping[str, Any],
    ) -> None:
        """Atomically: store model ``new_version``, close the round with its summary, release
        the round's update payloads (their metadata and nonces stay)."""
        ...

    # --- log -------------------------------------------------------------------------------
    def add_rejection(self, rejection: StoredRejection) -> None:
        """Remember a refused message."""
        ...

    def rejections(self, study_id: str) -> list[StoredRejection]:
        """Refused messages of a study, oldest first."""
        ...

    def add_event(self, event: StoredEvent) -> None:
        """Append a line to a study's log."""
        ...

    def events(self, study_id: str, *, after: int = 0) -> list[tuple[int, StoredEvent]]:
        """Log lines with their sequence number, those after ``after`` only."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def as_float32(weights: Weights) -> dict[str, npt.NDArray[np.float32]]:
    """Copy of ``weights`` as float32 arrays."""
    return {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
