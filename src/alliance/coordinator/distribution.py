"""A finished study's model on its way home: publishing it, the hospitals' evaluations, downloads.

:class:`Homecoming` is what the service (:mod:`alliance.coordinator.service`) holds of the last
finished study: its published model, and which participant was sent which card revision with
the study's end (once, and again once every hospital's evaluation is on the card). The service
calls it with its lock held; :mod:`alliance.coordinator.registry` keeps the files.

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

import logging
from collections.abc import Callable
from typing import Any

from alliance.coordinator.registry import ModelRegistry, PublishedModel
from alliance.coordinator.round import Receipt
from alliance.core.errors import AllianceError, FederationError, IntegrityError
from alliance.models.tasks import StudyModel
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import FinalEvaluation, StudyEnd
from alliance.protocol.study import StudySpec
from alliance.store.audit import AuditLog
from alliance.store.state import CoordinatorStore, StudyStatus
from alliance.transport.http import NotFoundError, PermissionDenied

__all__ = ["Homecoming", "checked_evaluation", "find_published", "publish_final"]

logger = logging.getLogger(__name__)


class Homecoming:
    """The last finished study's model on its way to the participants.

    Parameters
    ----------
    registry
        Where models are published; ``None``: the study's end carries no model.
    store, federation, model_kind, audit, clock
        The coordinator's store, federation id, model builder, audit log and clock.
    """

    def __init__(
        self,
        registry: ModelRegistry | None,
        store: CoordinatorStore,
        *,
        federation: str,
        model_kind: Callable[[dict[str, Any]], StudyModel],
        audit: AuditLog,
        clock: Callable[[], float],
    ) -> None:
        self.registry, self.store, self.federation = registry, store, federation
        self.model_kind, self.audit, self.clock = model_kind, audit, clock
        #: The last finished study: id, final version, participants.
        self.ended: tuple[str, int, frozenset[str]] | None = None
        #: Its published model with the newest card, as sent home.
        self.published: PublishedModel | None = None
        #: Sites told of its end, and the card revision they were sent (0: none).
        self._sent: dict[str, int] = {}

    def finish(self, study_id: str) -> None:
        """``study_id`` ended: remember its final version and participants, publish its model
        (a failure is logged and audited, never fatal: the end is still told)."""
        rounds = self.store.rounds(study_id)
        # A cancelled study may end with its round open: its summary is still empty.
        last = rounds[-1] if rounds else None
        version = 0 if last is None else int(last.summary.get("model_version", last.model_version))
        self.ended = (study_id, version, frozenset(s for r in rounds for s in r.participants))
        self._sent = {}
        self.published = None
        if self.registry is None:
            return
        try:
            self.published = publish_final(
                self.registry,
                self.store,
                study_id,
                version,
                federation=self.federation,
                model_kind=self.model_kind,
                now=self.clock(),
            )
        except (AllianceError, OSError, ValueError) as exc:
            logger.error("study %s: the final model could not be published: %s", study_id, exc)
            self.audit.append("model_publish_failed", study=study_id, reason=str(exc))

    def study_end_for(self, site: str) -> Envelope | None:
        """The study's end for ``site`` (a participant), with the model and card, if not sent
        yet, or sent with a card that has since become complete; else ``None``."""
        if self.ended is None or site not in self.ended[2]:
            return None
        study_id, version, _ = self.ended
        published = self.published
        revision = 0 if published is None else published.card.revision
        sent = self._sent.get(site)
        complete = published is not None and not published.card.evaluation.get("pending")
        if sent is not None and not (complete and sent < revision):
            return None
        self._sent[site] = revision
        header = Header(MessageKind.STUDY_END, self.federation, study_id, 0, COORDINATOR, site)
        if published is None:
            return StudyEnd(header, version).to_envelope()
        return StudyEnd(header, version, published.model, published.card_bytes).to_envelope()

    def record_evaluation(self, site: str, envelope: Envelope, size: int) -> str:
        """Record a participant's verified evaluation of a finished study's model (once) and
        re-issue its card; ``"duplicate"`` for a repeat.

        Raises
        ------
        ProtocolError, IntegrityError, FederationError, NotFoundError
            Malformed, misaddressed, from a site that did not take part, for an unknown study,
            one that has not finished, or a version never published.
        """
        try:
            evaluation = checked_evaluation(
                envelope, site=site, federation=self.federation, store=self.store
            )
            if self.registry is None:
                raise FederationError("this coordinator publishes no models")
            revised = self.registry.record_evaluation(site, evaluation, now=self.clock())
        except AllianceError as exc:
            self.audit.append("final_evaluation_rejected", site=site, bytes=size, reason=str(exc))
            raise
        if revised is None:
            return Receipt.DUPLICATE.value
        self.audit.append(
            "final_evaluation_received",
            study=evaluation.header.study,
            site=site,
            version=evaluation.model_version,
            bytes=size,
        )
        current = self.published
        if current is not None and (current.study, current.version) == (
            revised.study,
            revised.version,
        ):
            self.published = revised
        return Receipt.ACCEPTED.value

    def find(self, study_id: str, version: int | None, *, site: str | None) -> PublishedModel:
        """What the model routes serve (:func:`find_published`)."""
        return find_published(self.registry, self.store, study_id, version, site=site)


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
    cases: dict[str, int | None] = {}
    total: int | None = None
    if spec.secagg.enabled:
        # Each hospital's count is inside the masked sum; the sum is the round's total.
        cases = {s: None for r in rounds for s in r.participants}
        total = max((int(r.summary.get("num_examples", 0)) for r in rounds), default=0)
    for r in rounds if total is None else ():
        for meta in store.updates(study_id, r.round):
            cases[meta.site] = max(cases.get(meta.site) or 0, meta.num_examples)
    for r in rounds if not cases else ():
        cases.update({s: 0 for s in r.participants})
    return registry.publish(
        spec,
        federation=federation,
        version=version,
        weights=store.model(study_id, version),
        kind=model_kind(spec.model.to_table()),
        cases=cases,
        total_cases=total,
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
