"""The in-process :class:`~alliance.store.state.CoordinatorStore`: dictionaries under one lock.

The simulation runs its coordinator on a :class:`MemoryStore`; nothing survives the process,
which is what a simulation wants. It follows the same contract as
:class:`~alliance.store.sql.SqlStore` (``tests/contract/test_store.py`` runs both), and to make
"the same" literal it keeps values in the forms the SQL tables hold: arrays as the bytes of
:func:`~alliance.store.arrays.pack_arrays`, participants, metrics and summaries as JSON text.
Callers therefore always get fresh copies, can mutate what they were given without touching
the store, and see the same dtype checks and JSON normalisation as with a database.

Each method reads and changes the state under one lock, the in-memory counterpart of one
transaction (encoding and decoding arrays happen outside it): concurrent callers see every method
as atomic, and ``add_update`` counts an update once however many threads submit it. The rules
themselves, and their error messages, are shared with the SQL store (:mod:`alliance.store.rules`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from alliance.store import rules
from alliance.store.arrays import dump_json, load_json, pack_arrays, unpack_arrays
from alliance.store.state import (
    RoundState,
    RoundStatus,
    StoredEvent,
    StoredRejection,
    StudyRecord,
    StudyStatus,
    UpdateMeta,
    Weights,
)

__all__ = ["MemoryStore"]

logger = logging.getLogger(__name__)

_ENDED = (StudyStatus.FINISHED, StudyStatus.FAILED, StudyStatus.CANCELLED)


@dataclass
class _Round:
    model_version: int
    participants: str
    deadline: float | None
    status: RoundStatus
    summary: str | None = None


@dataclass
class _Update:
    nonce: str
    digest: str
    num_examples: int
    metrics: str
    payload: bytes | None
    received_at: float
    base_version: int | None = None


class MemoryStore:
    """Coordinator state in memory, for simulations and tests.

    Thread-safe; every method is atomic. See :class:`~alliance.store.state.CoordinatorStore`
    for the meaning of each method and the errors it raises.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._studies: dict[str, StudyRecord] = {}
        self._models: dict[str, dict[int, tuple[bytes, bytes]]] = {}
        self._rounds: dict[str, dict[int, _Round]] = {}
        self._updates: dict[tuple[str, int], dict[str, _Update]] = {}
        self._nonces: set[str] = set()
        self._rejections: list[StoredRejection] = []
        self._events: list[tuple[int, StoredEvent]] = []

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_study(self, study_id: str) -> None:
        if study_id not in self._studies:
            raise rules.unknown_study(study_id)

    # --- studies ---------------------------------------------------------------------------
    def add_study(self, record: StudyRecord) -> None:
        """Store a new study (``ConfigError`` if its id exists or holds NUL)."""
        rules.check_key(record.study_id, "study id")
        with self._lock:
            if record.study_id in self._studies:
                raise rules.study_exists(record.study_id)
            self._studies[record.study_id] = record

    def study(self, study_id: str) -> StudyRecord | None:
        """One study, or ``None``."""
        with self._lock:
            return self._studies.get(study_id)

    def studies(self) -> list[StudyRecord]:
        """Every study, oldest first (ties by study id)."""
        with self._lock:
            return sorted(self._studies.values(), key=lambda s: (s.created_at, s.study_id))

    def set_study_status(
        self, study_id: str, status: StudyStatus, *, error: str | None = None
    ) -> None:
        """Move a study to ``status``; ``finished_at`` is stamped for an ended study and
        cleared otherwise, ``error`` replaced by the given one."""
        with self._lock:
            self._require_study(study_id)
            self._studies[study_id] = dataclasses.replace(
                self._studies[study_id],
                status=status,
                finished_at=time.time() if status in _ENDED else None,
                error=error,
            )

    # --- model versions --------------------------------------------------------------------
    def save_initial_model(self, study_id: str, weights: Weights, strategy_state: Weights) -> None:
        """Store model version 0 unless it exists (idempotent, for restarts)."""
        blobs = (
            pack_arrays(weights, what=f"initial weights of study {study_id!r}"),
            pack_arrays(strategy_state, what=f"initial strategy state of study {study_id!r}"),
        )
        with self._lock:
            self._require_study(study_id)
            self._models.setdefault(study_id, {}).setdefault(0, blobs)

    def latest_model(
        self, study_id: str
    ) -> tuple[int, dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]:
        """``(version, weights, strategy_state)`` of the newest model version."""
        with self._lock:
            self._require_study(study_id)
            versions = self._models.get(study_id)
            if not versions:
                raise rules.no_model(study_id)
            version = max(versions)
            weights, state = versions[version]
        what = f"model version {version} of study {study_id!r}"
        return (
            version,
            unpack_arrays(weights, what=what),
            unpack_arrays(state, what=f"strategy state of {what}"),
        )

    def model(self, study_id: str, version: int) -> dict[str, npt.NDArray[Any]]:
        """The weights of one model version (``ConfigError`` if absent)."""
        with self._lock:
            blobs = self._models.get(study_id, {}).get(version)
        if blobs is None:
            raise rules.no_version(study_id, version)
        return unpack_arrays(blobs[0], what=f"model version {version} of study {study_id!r}")

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
        """Open round ``round_``: the next round number (1 first), on a stored model version.

        Raises ``FederationError`` if a round is open, the round exists or is not the next one,
        or ``model_version`` is not stored; ``ConfigError`` for an unknown study.
        """
        names = dump_json(list(participants), what=f"participants of round {round_}")
        with self._lock:
            self._require_study(study_id)
            rounds = self._rounds.setdefault(study_id, {})
            newest = max(rounds, default=0)
            rules.check_can_open(
                study_id,
                round_,
                newest=newest,
                newest_open=bool(rounds) and rounds[newest].status is RoundStatus.OPEN,
                version_exists=model_version in self._models.get(study_id, {}),
                model_version=model_version,
            )
            rounds[round_] = _Round(model_version, names, deadline, RoundStatus.OPEN)

    def current_round(self, study_id: str) -> RoundState | None:
        """The newest round of the study (open or closed), or ``None`` before the first."""
        with self._lock:
            rounds = self._rounds.get(study_id)
            if not rounds:
                return None
            newest = max(rounds)
            return _state(study_id, newest, rounds[newest])

    def rounds(self, study_id: str) -> list[RoundState]:
        """Every round, in order."""
        with self._lock:
            rounds = self._rounds.get(study_id, {})
            return [_state(study_id, r, rounds[r]) for r in sorted(rounds)]

    def set_deadline(self, study_id: str, round_: int, deadline: float | None) -> None:
        """Move the deadline of an open round (``FederationError`` if it is not open)."""
        with self._lock:
            rnd = self._rounds.get(study_id, {}).get(round_)
            if rnd is None or rnd.status is not RoundStatus.OPEN:
                raise rules.deadline_not_open(study_id, round_)
            rnd.deadline = deadline

    def add_update(self, study_id: str, round_: int, meta: UpdateMeta, delta: Weights) -> None:
        """Store an accepted update of an open round (see the protocol for the errors).

        A resubmission of a stored update (same site, same digest) raises ``DuplicateUpdate``
        even after its round closed: the site is answered "already received".
        """
        where = rules.update_where(study_id, round_, meta.site)
        payload = pack_arrays(delta, what=where)
        metrics = dump_json(dict(meta.metrics), what=f"metrics of the {where}")
        with self._lock:
            existing = self._updates.get((study_id, round_), {}).get(meta.site)
            if existing is not None:
                rules.raise_resubmitted(where, existing.digest, meta.digest)
            rnd = self._rounds.get(study_id, {}).get(round_)
            if rnd is None or rnd.status is not RoundStatus.OPEN:
                raise rules.not_open(where, rnd is not None)
            if meta.nonce in self._nonces:
                raise rules.nonce_reused(where, meta.nonce)
            self._updates.setdefault((study_id, round_), {})[meta.site] = _Update(
                meta.nonce,
                meta.digest,
                meta.num_examples,
                metrics,
                payload,
                time.time(),
                meta.base_version,
            )
            self._nonces.add(meta.nonce)

    def updates(self, study_id: str, round_: int) -> list[UpdateMeta]:
        """The accepted updates of a round, in site order."""
        with self._lock:
            rows = dict(self._updates.get((study_id, round_), {}))
        return [
            UpdateMeta(
                site, u.nonce, u.digest, u.num_examples, load_json(u.metrics), u.base_version
            )
            for site, u in sorted(rows.items())
        ]

    def load_delta(self, study_id: str, round_: int, site: str) -> dict[str, npt.NDArray[Any]]:
        """One site's delta (``FederationError`` if absent or its round closed)."""
        with self._lock:
            row = self._updates.get((study_id, round_), {}).get(site)
            payload = None if row is None else row.payload
        where = rules.update_where(study_id, round_, site)
        if row is None:
            raise rules.no_update(where)
        if payload is None:
            raise rules.released(where)
        return unpack_arrays(payload, what=f"the delta of the {where}")

    def nonce_seen(self, nonce: str) -> bool:
        """Whether an accepted message ever carried ``nonce``."""
        with self._lock:
            return nonce in self._nonces

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
        """Atomically store model ``new_version``, close the round with its summary and release
        the round's update payloads (``FederationError`` if the round is not open or
        ``new_version`` is not newer than every stored version)."""
        what = f"model version {new_version} of study {study_id!r}"
        blobs = (
            pack_arrays(weights, what=what),
            pack_arrays(strategy_state, what=f"strategy state of {what}"),
        )
        text = dump_json(dict(summary), what=f"summary of round {round_}")
        with self._lock:
            rnd = self._rounds.get(study_id, {}).get(round_)
            if rnd is None or rnd.status is not RoundStatus.OPEN:
                raise rules.cannot_close(study_id, round_)
            versions = self._models.setdefault(study_id, {})
            rules.check_new_version(study_id, new_version, max(versions, default=None))
            versions[new_version] = blobs
            rnd.status = RoundStatus.CLOSED
            rnd.summary = text
            for update in self._updates.get((study_id, round_), {}).values():
                update.payload = None
        logger.debug("study %s: round %d closed as model version %d", study_id, round_, new_version)

    # --- log -------------------------------------------------------------------------------
    def add_rejection(self, rejection: StoredRejection) -> None:
        """Remember a refused message."""
        with self._lock:
            self._rejections.append(rejection)

    def rejections(self, study_id: str) -> list[StoredRejection]:
        """Refused messages of a study, oldest first."""
        with self._lock:
            return [r for r in self._rejections if r.study_id == study_id]

    def add_event(self, event: StoredEvent) -> None:
        """Append a line to a study's log."""
        with self._lock:
            self._events.append((len(self._events) + 1, event))

    def events(self, study_id: str, *, after: int = 0) -> list[tuple[int, StoredEvent]]:
        """Log lines with their sequence number (increasing, from 1), those after ``after``."""
        with self._lock:
            return [(n, e) for n, e in self._events if n > after and e.study_id == study_id]

    def close(self) -> None:
        """Nothing to release; the state stays readable."""


def _state(study_id: str, round_: int, rnd: _Round) -> RoundState:
    return RoundState(
        study_id=study_id,
        round=round_,
        model_version=rnd.model_version,
        participants=tuple(load_json(rnd.participants)),
        deadline=rnd.deadline,
        status=rnd.status,
        summary={} if rnd.summary is None else load_json(rnd.summary),
    )
