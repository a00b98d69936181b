"""Rows of :mod:`alliance.store.sqlschema`'s tables to and from the store's records.

:class:`~alliance.store.sql.SqlStore` builds the rows it inserts with :func:`model_row`,
:func:`round_row` and :func:`update_row` (arrays packed with
:func:`~alliance.store.arrays.pack_arrays` beside their SHA-256, participants and metrics as
JSON text), and turns what it reads back into model arrays (:func:`model_arrays`, digests
checked) and records (:func:`study_record`,
:func:`round_state`, :func:`rejection`, :func:`stored_event`). Kept apart from the table
definitions and from the store's transactions, so that each reads as one thing: what the tables
are, how a row maps to a record, what a store method does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy.typing as npt
from sqlalchemy import Row

from alliance.store.arrays import dump_json, load_json, pack_arrays, unpack_arrays
from alliance.store.integrity import blob_digest, checked
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

__all__ = [
    "model_arrays",
    "model_row",
    "rejection",
    "round_row",
    "round_state",
    "stored_event",
    "study_record",
    "update_row",
]


def model_row(
    study_id: str,
    version: int,
    weights: Weights,
    strategy_state: Weights,
    *,
    what: str,
    state_what: str | None = None,
) -> dict[str, Any]:
    """A row of ``alliance_models`` with the digest of each blob; ``what`` names the weights in
    errors, ``state_what`` the strategy state (default: ``strategy state of <what>``)."""
    packed = pack_arrays(weights, what=what)
    state = pack_arrays(
        strategy_state, what=f"strategy state of {what}" if state_what is None else state_what
    )
    return {
        "study_id": study_id,
        "version": version,
        "weights": packed,
        "strategy_state": state,
        "weights_sha256": blob_digest(packed),
        "state_sha256": blob_digest(state),
    }


def round_row(
    study_id: str,
    round_: int,
    model_version: int,
    participants: Sequence[str],
    deadline: float | None,
) -> dict[str, Any]:
    """A row of ``alliance_rounds`` for a round being opened."""
    return {
        "study_id": study_id,
        "round": round_,
        "model_version": model_version,
        "participants": dump_json(list(participants), what=f"participants of round {round_}"),
        "deadline": deadline,
        "status": RoundStatus.OPEN.value,
        "summary": None,
    }


def update_row(
    study_id: str, round_: int, meta: UpdateMeta, delta: Weights, *, where: str
) -> dict[str, Any]:
    """A row of ``alliance_updates``, received now; ``where`` names the update in errors."""
    payload = pack_arrays(delta, what=where)
    return {
        "study_id": study_id,
        "round": round_,
        "site": meta.site,
        "nonce": meta.nonce,
        "digest": meta.digest,
        "num_examples": meta.num_examples,
        "metrics": dump_json(dict(meta.metrics), what=f"metrics of the {where}"),
        "payload": payload,
        "received_at": time.time(),
        "base_version": meta.base_version,
        "payload_sha256": blob_digest(payload),
    }


def study_record(row: Row[Any]) -> StudyRecord:
    """A study as read from ``alliance_studies``."""
    return StudyRecord(
        study_id=row.study_id,
        spec=row.spec,
        spec_hash=row.spec_hash,
        submitted_by=row.submitted_by,
        status=StudyStatus(row.status),
        created_at=row.created_at,
        finished_at=row.finished_at,
        error=row.error,
    )


def model_arrays(
    study_id: str, row: Row[Any], *, store: str
) -> tuple[int, dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]:
    """``(version, weights, strategy_state)`` of an ``alliance_models`` row, both blobs checked
    against their digests (``StoreDamaged`` naming the study and version if not)."""
    what = f"model version {row.version} of study {study_id!r}"
    state_what = f"strategy state of {what}"
    weights = checked(row.weights, row.weights_sha256, what=what, where=store)
    state = checked(row.strategy_state, row.state_sha256, what=state_what, where=store)
    return (
        row.version,
        unpack_arrays(weights, what=what),
        unpack_arrays(state, what=state_what),
    )


def round_state(row: Row[Any]) -> RoundState:
    """A round as read from ``alliance_rounds``."""
    where = f"round {row.round} of study {row.study_id!r}"
    return RoundState(
        study_id=row.study_id,
        round=row.round,
        model_version=row.model_version,
        participants=tuple(load_json(row.participants, what=f"participants of {where}")),
        deadline=row.deadline,
        status=RoundStatus(row.status),
        summary={} if row.summary is None else load_json(row.summary, what=f"summary of {where}"),
    )


def rejection(row: Row[Any]) -> StoredRejection:
    """A refused message as read from ``alliance_rejections``."""
    return StoredRejection(row.study_id, row.round, row.sender, row.reason, row.at)


def stored_event(row: Row[Any]) -> tuple[int, StoredEvent]:
    """A log line with its sequence number, as read from ``alliance_events``."""
    return row.id, StoredEvent(row.study_id, row.at, row.kind, row.message)
