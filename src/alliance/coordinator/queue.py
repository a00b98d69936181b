"""The coordinator's study queue: studies submitted, started one at a time, failed with a reason.

An operator submits a study file; it is checked whole (:func:`~alliance.coordinator.study_check.
load_study`) and queued under its ``[study] id``, which must be new. The service runs one study
at a time: the one already running (after a restart), else the oldest queued one
(:func:`next_study`). A study that cannot start (options that do not fit its model or strategy, a
model too large for memory) fails with that reason and the queue moves on (:func:`fail_study`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from alliance.coordinator.study_check import load_study
from alliance.core.errors import AllianceError, ConfigError
from alliance.store.audit import AuditLog
from alliance.store.state import CoordinatorStore, StudyRecord, StudyStatus

__all__ = ["fail_study", "last_ended", "next_study", "queue_study"]

logger = logging.getLogger(__name__)


def queue_study(
    store: CoordinatorStore,
    audit: AuditLog,
    *,
    operator: str,
    text: str,
    model_check: Callable[[Mapping[str, Any]], None],
    now: float,
) -> str:
    """Check the study file ``text`` and queue it; its id.

    Raises
    ------
    ConfigError
        The file is not a valid study, or a study with its id exists.
    """
    parsed = load_study(text, model_check=model_check)
    if store.study(parsed.study_id) is not None:
        raise ConfigError(
            f"study {parsed.study_id!r} exists; give the new study another [study] id"
        )
    store.add_study(
        StudyRecord(parsed.study_id, text, parsed.hash, operator, StudyStatus.QUEUED, now)
    )
    audit.append("study_submitted", study=parsed.study_id, hash=parsed.hash, by=operator)
    return parsed.study_id


def next_study(store: CoordinatorStore) -> StudyRecord | None:
    """The study to run: the one running (a restart), else the oldest queued one."""
    records = store.studies()
    running = [r for r in records if r.status is StudyStatus.RUNNING]
    queued = [r for r in records if r.status is StudyStatus.QUEUED]
    candidates = running or queued
    return candidates[0] if candidates else None


def last_ended(store: CoordinatorStore) -> str | None:
    """The study that finished or was cancelled last (its participants are told it ended)."""
    done = [
        r
        for r in store.studies()
        if r.status in (StudyStatus.FINISHED, StudyStatus.CANCELLED) and r.finished_at
    ]
    done.sort(key=lambda r: r.finished_at or 0.0)
    return done[-1].study_id if done else None


def fail_study(
    store: CoordinatorStore, audit: AuditLog, record: StudyRecord, exc: BaseException
) -> None:
    """Mark a study that cannot start as failed, with the reason."""
    error = str(exc)
    if not isinstance(exc, AllianceError):
        # TypeError, ValueError: [model] or [strategy] options of the wrong type, which only
        # building the model or strategy meets; RuntimeError, MemoryError: a model that does
        # not fit in memory.
        error = f"its [model] or [strategy] options do not fit: {exc}"
    store.set_study_status(record.study_id, StudyStatus.FAILED, error=error)
    audit.append("study_failed", study=record.study_id, error=error)
    logger.error("study %s cannot run: %s", record.study_id, error)
