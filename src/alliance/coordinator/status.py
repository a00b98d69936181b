"""What the coordinator tells about a study: its status, its log and what it promises.

A study's status is read from the store (so it is the same after a restart) and, for the round
that is open now, from the running driver: who answered, who refused the task and why (a site
that refused is not waited for, and the operator sees it at once), and what holds the round (a
missing quorum, an aborted secure attempt waiting for reachable sites). Each closed round says
which model version it started from and which it produced: the hospitals' top-k counts in a
round measure the version they received (``evaluated_version``), not the one the round made.
A hospital sees only the consortium's aggregates and its own figures
(:mod:`alliance.coordinator.visibility`).
"""

from __future__ import annotations

from typing import Any

from alliance.coordinator.driver import RoundDriver
from alliance.coordinator.visibility import site_log, site_status
from alliance.core.errors import ConfigError
from alliance.privacy.accountant import SampledGaussian, epsilon
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.protocol.study import StudySpec
from alliance.store.state import CoordinatorStore, RoundStatus, StudyRecord

__all__ = ["describe_privacy", "list_studies", "study_logs", "study_status"]


def list_studies(store: CoordinatorStore) -> list[dict[str, Any]]:
    """Every study's id, status and hash."""
    return [
        {"study": r.study_id, "status": r.status.value, "hash": r.spec_hash}
        for r in store.studies()
    ]


def study_status(
    store: CoordinatorStore,
    record: StudyRecord,
    *,
    live: RoundDriver | None = None,
    site: str | None = None,
) -> dict[str, Any]:
    """Status, rounds and per-round metrics of the study of ``record``.

    Parameters
    ----------
    store
        The coordinator's state.
    record
        The study's record.
    live
        The study's driver when it is running in this process (refusals, what holds the round).
    site
        A hospital asking: it sees only the consortium's aggregates and its own figures.
    """
    study_id = record.study_id
    rounds = store.rounds(study_id)
    try:
        spec: StudySpec | None = StudySpec.parse(record.spec, where=f"study {study_id}")
    except ConfigError:
        # Stored before study files were checked whole: it failed to start, and its record's
        # error says why.
        spec = None
    current = rounds[-1] if rounds and rounds[-1].status is RoundStatus.OPEN else None
    open_round = None
    if current is not None:
        answered = [u.site for u in store.updates(study_id, current.round)]
        running = None if live is None else live.coordinator.current
        refused = {} if running is None else dict(running.refusals)
        open_round = {
            "round": current.round,
            "model_version": current.model_version,
            "participants": list(current.participants),
            "answered": answered,
            "refused": refused,
            "stage": "train" if running is None else running.stage,
            "deadline": current.deadline,
            "holding": None if live is None else live.waiting,
        }
    history = []
    for r in rounds:
        if r.status is RoundStatus.CLOSED:
            entry = dict(r.summary)
            entry["evaluated_version"] = r.model_version
            history.append(entry)
    status = {
        "study": study_id,
        "title": study_id if spec is None else spec.title,
        "status": record.status.value,
        "hash": record.spec_hash,
        "submitted_by": record.submitted_by,
        "error": record.error,
        "rounds_total": 0 if spec is None else spec.rounds,
        "rounds_closed": len(history),
        "open_round": open_round,
        "history": history,
        "rejections": len(store.rejections(study_id)),
        "privacy": None
        if spec is None
        else describe_privacy(spec.privacy, spec.secagg, spec.rounds),
    }
    return status if site is None else site_status(status, site)


def study_logs(
    store: CoordinatorStore, study_id: str, after: int, *, site: str | None = None
) -> list[dict[str, Any]]:
    """Log lines after sequence number ``after``; a ``site`` gets the consortium's lines and
    its own only (:func:`~alliance.coordinator.visibility.site_log`)."""
    lines = [
        {"seq": seq, "at": e.at, "kind": e.kind, "message": e.message}
        for seq, e in store.events(study_id, after=after)
    ]
    return lines if site is None else site_log(lines, site)


def describe_privacy(privacy: PrivacyPlan, secagg: SecAggPlan, rounds: int) -> dict[str, Any]:
    """What a study promises, for its status: the mechanisms and the consortium-level ε.

    Patient-level ε is each hospital's, in its own ledger (it depends on its size). The
    client-level guarantee is the consortium's: every round releases the sum of at least
    ``threshold`` clipped updates with Gaussian noise of std ``σ_c · C_c`` in all, i.e. one
    Gaussian mechanism per round with full participation (q = 1), composed over the rounds.
    """
    out: dict[str, Any] = {
        "patient_level": privacy.mechanism,
        "target_epsilon": privacy.target_epsilon,
        "noise_multiplier": privacy.noise_multiplier,
        "delta": privacy.delta,
        "secure_aggregation": secagg.enabled,
        "client_level_epsilon": None,
    }
    if privacy.client_level:
        assert privacy.client_noise_multiplier is not None
        sigma = privacy.client_noise_multiplier
        # σ = 0 is no guarantee at all: reported as None, never as a number.
        out["client_level_epsilon"] = (
            None
            if sigma == 0
            else epsilon(
                [SampledGaussian(sample_rate=1.0, noise_multiplier=sigma, steps=rounds)],
                delta=privacy.delta,
            ).epsilon
        )
    return out
