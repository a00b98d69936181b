"""A finished study's model on its way home: publishing it, the hospitals' evaluations, downloads.

The service (:mod:`alliance.coordinator.service`) calls these with its lock held and writes the
audit lines; :mod:`alliance.coordinator.registry` keeps the files.

- :func:`publish_final` publishes a finished study's final version from the store, with the
  participants' training cases (the most each reported in a round);
- :func:`checked_evaluation` reads a hospital's :class:`FinalEvaluation`, refusing one that is
  misaddressed or for a study that has not finished (the registry then refuses a site that did
  not take part, and counts a repeat once);
- :func:`find_published` is what the model routes serve: operators get any published model,
  a hospital only that of a study it took part in (as :mod:`alliance.coordinator.visibility`
  lets a hospital read only what concerns it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alliance.coordinator.registry import ModelRegistry, PublishedModel
from alliance.core.errors import FederationError, IntegrityError
from alliance.models.tasks import StudyModel
from alliance.protocol.envelope import COORDINATOR, Envelope
from alliance.protocol.messages import FinalEvaluation
from alliance.protocol.study import StudySpec
from alliance.store.state import CoordinatorStore, StudyStatus
from alliance.transport.http import NotFoundError, PermissionDenied

__all__ = ["checked_evaluation", "find_published", "publish_final"]


def publish_final(
    registry: ModelRegistry,
    store: CoordinatorStore,
    study_id: str,
    version: int,
    *,
    federation: str,
    model_kind: Callable[[dict[str, Any]], StudyModel],
    now: float,
) -> PublishedModel | None:
    """Publish a finished study's final version from the store; ``None`` if it has no model
    to publish (not finished, or no round ever closed)."""
    record = store.study(study_id)
    if record is None or record.status is not StudyStatus.FINISHED or version < 1:
        return None
    spec = StudySpec.parse(record.spec, where=f"study {study_id}")
    rounds = store.rounds(study_id)
    cases: dict[str, int] = {}
    for r in rounds:
        for meta in store.updates(study_id, r.round):
            cases[meta.site] = max(cases.get(meta.site, 0), meta.num_examples)
    for r in rounds if not cases else ():
        cases.update({s: 0 for s in r.participants})
    return registry.publish(
        spec,
        federation=federation,
        version=version,
        weights=store.model(study_id, version),
        kind=model_kind(spec.model.to_table()),
        cases=cases,
        now=now,
    )


def checked_evaluation(
    envelope: Envelope, *, site: str, federation: str, store: CoordinatorStore
) -> FinalEvaluation:
    """``site``'s evaluation, if addressed from it to this coordinator for a finished study.

    Raises
    ------
    ProtocolError, IntegrityError, FederationError, NotFoundError
        Malformed, misaddressed, for an unknown study or one that has not finished.
    """
    evaluation = FinalEvaluation.from_envelope(envelope)
    h = evaluation.header
    if (h.federation, h.sender, h.recipient) != (federation, site, COORDINATOR):
        raise IntegrityError(
            f"final evaluation addressed from {h.sender!r} to {h.recipient!r} in "
            f"{h.federation!r} arrived from {site!r}"
        )
    record = store.study(h.study)
    if record is None:
        raise NotFoundError(f"final evaluation for study {h.study!r}, which does not exist")
    if record.status is not StudyStatus.FINISHED:
        raise FederationError(
            f"final evaluation for study {h.study!r}, which is {record.status.value}: only a "
            "finished study's model is evaluated"
        )
    return evaluation


def find_published(
    registry: ModelRegistry | None,
    store: CoordinatorStore,
    study_id: str,
    version: int | None,
    *,
    site: str | None,
) -> PublishedModel:
    """A study's published model (newest version if ``version`` is ``None``) with its newest
    card; a ``site`` gets it only for a study it took part in.

    Raises
    ------
    NotFoundError
        No such study, or no model published for it (or that version).
    PermissionDenied
        ``site`` is not one of the study's hospitals.
    """
    if store.study(study_id) is None:
        raise NotFoundError(f"no study {study_id!r}; `alliance study status` lists them")
    found = None if registry is None else registry.get(study_id, version)
    if found is None:
        which = "" if version is None else f" version {version}"
        raise NotFoundError(
            f"study {study_id!r} has no published model{which}; a study's model is "
            "published when it finishes (`alliance study status` shows it)"
        )
    if site is not None and site not in found.card.hospitals:
        raise PermissionDenied(
            f"site {site!r} did not take part in study {study_id!r}; only its hospitals "
            "and the operators may download its model"
        )
    return found
