"""What a hospital does with each message from the coordinator, whatever carried it.

:class:`Hospital` is the one place where a hospital applies its policy, runs its site and keeps
its audit log; the deployed agent (:mod:`alliance.site.runner`, over HTTPS or files) and the
simulation run the same code. It never fetches or submits: :meth:`Hospital.handle` takes one
verified message and returns an :class:`~alliance.site.outcome.Outcome` (what it did, the
replies for the caller to submit, the privacy charges it made). For a training task:

1. the study must be one the hospital approved (:class:`StudyPolicy`; for a deployed site,
   :class:`ApprovedHashes`: the study file's hash is in ``[policy] approved_studies``, re-read
   from ``site.toml`` before refusing, so a study approved while the agent runs is seen);
2. its cohort, loaded once per study, must hold at least ``min_cohort`` cases;
3. the task's plan, privacy plan and secure aggregation must be the approved study's, and its
   round one of the study's rounds, on a model version below the round's number;
4. then the study's :class:`~alliance.site.agent.Site` answers it (privacy budget, training).

A task refused at any step is answered with a :class:`~alliance.protocol.messages.Refusal`
naming only its category (``"not-approved"``, ``"cohort"``, ``"policy"``, ``"budget"``), so the
coordinator stops waiting for this site at once; the detail goes to the audit log.

A study's end is recorded once, for a study the hospital joined. When it carries the final model
and its signed card (and the hospital has a model store), the model is verified against the
approved study and kept, and the hospital answers with its evaluation of it
(:mod:`alliance.site.homecoming`); a refused model leaves the end unrecorded, so a true copy is
still accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from alliance.core.errors import ProtocolError
from alliance.protocol.codec import SignatureVerifier
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import Refusal, StudyEnd, TrainTask
from alliance.protocol.study import StudySpec, spec_hash
from alliance.site.agent import Site
from alliance.site.homecoming import Homecoming, evaluate_final, receive_model
from alliance.site.model_store import ModelStore
from alliance.site.outcome import Action, Outcome, Refused
from alliance.store.audit import AuditLog

__all__ = ["ApprovedHashes", "Cohort", "Hospital", "StudyPolicy", "plan_mismatch"]

logger = logging.getLogger(__name__)


class StudyPolicy(Protocol):
    """Which studies a hospital approved, and the fewest cases it trains on."""

    @property
    def min_cohort(self) -> int:
        """The fewest local training cases the hospital takes part with."""
        ...

    def approve(self, study_id: str) -> StudySpec | Refused:
        """The approved study ``study_id``, or why it is not approved (category
        ``"not-approved"``)."""
        ...


class ApprovedHashes:
    """A deployed hospital's policy: the hashes of the study files it approved.

    Parameters
    ----------
    approved
        ``sha256:`` hashes of the approved study files.
    min_cohort
        The fewest training cases the hospital takes part with.
    study_text
        The text of a study's file by its id (from the coordinator, or the hospital's folder).
    reread
        Reads the approved hashes again (from ``site.toml``): called before a study is refused,
        so a hash added while the agent runs is seen. ``None``: the list is fixed.
    where
        The file that holds the list, for messages.
    """

    def __init__(
        self,
        approved: Iterable[str],
        *,
        min_cohort: int,
        study_text: Callable[[str], str],
        reread: Callable[[], Iterable[str]] | None = None,
        where: Path | str = "site.toml",
    ) -> None:
        self.approved = frozenset(approved)
        self._min_cohort = min_cohort
        self._study_text = study_text
        self._reread = reread
        self._where = where

    @property
    def min_cohort(self) -> int:
        """The fewest training cases the hospital takes part with."""
        return self._min_cohort

    def approve(self, study_id: str) -> StudySpec | Refused:
        """The study if its file's hash is approved (re-reading the list once if it is not)."""
        text = self._study_text(study_id)
        digest = spec_hash(text)
        if digest not in self.approved and self._reread is not None:
            before, self.approved = self.approved, frozenset(self._reread())
            logger.info(
                "study %s (%s) was not approved: re-read [policy] approved_studies of %s "
                "(%d hashes, %d new)",
                study_id,
                digest,
                self._where,
                len(self.approved),
                len(self.approved - before),
            )
        if digest not in self.approved:
            return Refused(
                "not-approved",
                f"study {study_id!r} ({digest}) is not in [policy] approved_studies of "
                f"{self._where}; add its hash there once the hospital approved it (a running "
                "agent re-reads the list)",
            )
        return StudySpec.parse(text, where=f"study {study_id}")


@dataclass(frozen=True)
class Cohort:
    """The hospital's cases for one study, loaded, and how to build the study's site on them.

    Attributes
    ----------
    count
        Training cases loaded.
    rejected
        Records rejected while loading them.
    location
        Where they were loaded from (for messages).
    build
        Builds the study's :class:`~alliance.site.agent.Site` (called only for a cohort large
        enough for the hospital's policy).
    """

    count: int
    rejected: int
    location: str
    build: Callable[[], Site]


@dataclass
class _Joined:
    spec: StudySpec
    site: Site


class Hospital:
    """A hospital's policy, sites and audit log, answering one message at a time.

    Parameters
    ----------
    site_id
        The hospital's id in the federation.
    federation
        Its consortium; a message of any other is refused.
    policy
        Which studies it approved, and its smallest cohort.
    cohort
        Loads the hospital's cases for an approved study (once per study).
    audit
        The hospital's audit log: every study joined, task, refusal, charge and study end.
    models, coordinator
        Where the hospital keeps the final models it receives, and the check of the
        coordinator's signature on their cards (:mod:`alliance.site.homecoming`); without
        both, a study's end is only recorded.
    """

    def __init__(
        self,
        site_id: str,
        *,
        federation: str,
        policy: StudyPolicy,
        cohort: Callable[[StudySpec], Cohort],
        audit: AuditLog,
        models: ModelStore | None = None,
        coordinator: SignatureVerifier | None = None,
    ) -> None:
        self.id = site_id
        self.models = models
        self.coordinator = coordinator
        self.federation = federation
        self.policy = policy
        self._cohort = cohort
        self.audit = audit
        self._studies: dict[str, _Joined] = {}

    def handle(self, env: Envelope) -> Outcome:
        """Act on one verified message from the coordinator; say what was done and what to send.

        Raises
        ------
        ProtocolError
            The message is not the coordinator's, is for another site or federation, or is a
            secure-aggregation stage of a study this hospital has not joined.
        """
        h = env.header
        if h.federation != self.federation or h.recipient != self.id:
            raise ProtocolError(
                f"refused a message for {h.recipient!r} in federation {h.federation!r}"
            )
        if h.sender != COORDINATOR:
            raise ProtocolError(f"refused a message from {h.sender!r}: only the coordinator")
        if h.kind is MessageKind.STUDY_END:
            return self._end(StudyEnd.from_envelope(env))
        if h.kind is MessageKind.SECAGG:
            joined = self._studies.get(h.study)
            if joined is None:
                raise ProtocolError(f"secure aggregation message for study {h.study!r}, not joined")
            return joined.site.answer(env)
        if h.kind is not MessageKind.TRAIN_TASK:
            raise ProtocolError(f"unexpected {h.kind.value} message from the coordinator")
        return self._task(env, TrainTask.from_envelope(env))

    def _end(self, end: StudyEnd) -> Outcome:
        h = end.header
        ignored = Outcome(Action.IGNORED, h.study, h.round, model_version=end.final_version)
        events = self._events(h.study)
        if "study_joined" not in events:
            return ignored
        replies: tuple[Envelope, ...] = ()
        if end.card and self.models is not None and self.coordinator is not None:
            came = self._receive(end)
            if came.refused is not None:
                return ignored  # nothing kept, the end not recorded: a true copy may follow
            if came.new and came.card is not None and self.id in came.card.hospitals:
                # Only a hospital whose updates made the model is asked how it does.
                site = self._site_for(h.study)
                replies = (evaluate_final(site, end, site_id=self.id, federation=self.federation),)
        if "study_ended" in events:
            return replace(ignored, replies=replies)
        self.audit.append("study_ended", study=h.study, final_version=end.final_version)
        logger.info("study %s ended at model version %d", h.study, end.final_version)
        self._studies.pop(h.study, None)
        return Outcome(Action.ENDED, h.study, h.round, replies, model_version=end.final_version)

    def _receive(self, end: StudyEnd) -> Homecoming:
        """Verify and keep the final model (:func:`receive_model`) against the approved study."""
        assert self.models is not None
        assert self.coordinator is not None
        joined = self._studies.get(end.header.study)
        spec = joined.spec if joined is not None else self.policy.approve(end.header.study)
        if isinstance(spec, Refused):
            reason = f"the study is no longer approved here: {spec.detail}"
            self.audit.append(
                "model_refused", study=end.header.study, version=end.final_version, reason=reason
            )
            return Homecoming(None, refused=reason)
        return receive_model(
            end,
            models=self.models,
            coordinator=self.coordinator,
            study_hash=spec.hash,
            audit=self.audit,
        )

    def _site_for(self, study_id: str) -> Site | None:
        """The study's site, to evaluate its final model (rebuilt after a restart)."""
        joined = self._studies.get(study_id)
        if joined is not None:
            return joined.site
        spec = self.policy.approve(study_id)
        if isinstance(spec, Refused):
            return None
        cohort = self._cohort(spec)
        return cohort.build() if cohort.count >= self.policy.min_cohort else None

    def _events(self, study_id: str) -> set[str]:
        """The audit events of ``study_id``: whether this hospital worked on it (in this run
        or before a restart) and whether it recorded its end (a restarted coordinator tells
        participants again)."""
        return {e.event for e in self.audit.entries() if e.details.get("study") == study_id}

    def _task(self, env: Envelope, task: TrainTask) -> Outcome:
        h = task.header
        joined = self._studies.get(h.study)
        if joined is None:
            found = self._join(h.study)
            if isinstance(found, Refused):
                return self._refuse(task, found)
            joined = found
        mismatch = plan_mismatch(joined.spec, task)
        if mismatch is not None:
            return self._refuse(task, Refused("policy", mismatch))
        self.audit.append(
            "task_received", study=h.study, round=h.round, model_version=task.model_version
        )
        logger.info(
            "study %s round %d: training on model version %d", h.study, h.round, task.model_version
        )
        outcome = joined.site.answer(env)
        for charge in outcome.charges:
            self.audit.append(
                "privacy_charged",
                study=charge.study,
                round=charge.round,
                sample_rate=charge.event.sample_rate,
                noise_multiplier=charge.event.noise_multiplier,
                steps=charge.event.steps,
                epsilon_total=None if charge.total is None else charge.total.epsilon,
            )
        if outcome.refused is not None:
            self.audit.append(
                "round_declined", study=h.study, round=h.round, reason=outcome.refused.detail
            )
        return outcome

    def _join(self, study_id: str) -> _Joined | Refused:
        """The study's site, if the policy approves the study and the cohort is large enough."""
        spec = self.policy.approve(study_id)
        if isinstance(spec, Refused):
            return spec
        cohort = self._cohort(spec)
        if cohort.count < self.policy.min_cohort:
            return Refused(
                "cohort",
                f"only {cohort.count} cases loaded from {cohort.location}; the hospital's "
                f"policy requires at least {self.policy.min_cohort}",
            )
        joined = _Joined(spec, cohort.build())
        self.audit.append(
            "study_joined",
            study=study_id,
            hash=spec.hash,
            train_cases=cohort.count,
            rejected_records=cohort.rejected,
        )
        self._studies[study_id] = joined
        return joined

    def _refuse(self, task: TrainTask, refused: Refused) -> Outcome:
        """Decline ``task``: the detail to the audit log, the category to the coordinator."""
        h = task.header
        logger.error("site %s refused work: %s", self.id, refused.detail)
        self.audit.append(
            "task_refused",
            study=h.study,
            round=h.round,
            category=refused.category,
            reason=refused.detail,
        )
        header = Header(
            MessageKind.REFUSAL, self.federation, h.study, h.round, self.id, COORDINATOR
        )
        reply = Refusal(header, refused.category).to_envelope()
        return Outcome(
            Action.REFUSED,
            h.study,
            h.round,
            (reply,),
            refused=refused,
            model_version=task.model_version,
        )


def plan_mismatch(spec: StudySpec, task: TrainTask) -> str | None:
    """How ``task`` departs from the approved study ``spec``, or ``None`` if it does not."""
    round_, version, rounds = task.header.round, task.model_version, spec.rounds
    if not 1 <= round_ <= rounds or version >= round_:
        return (
            f"round {round_} on model version {version} is outside the approved study "
            f"(rounds 1–{rounds}; round r trains a model version below r)"
        )
    approved = replace(spec.plan, proximal_mu=0.0)
    asked = replace(task.plan, proximal_mu=0.0)
    expected_mu = spec.strategy.proximal_mu
    if approved != asked or task.plan.proximal_mu != expected_mu:
        return (
            f"round {round_}: the coordinator asked for plan {task.plan}, the approved study "
            f"states {spec.plan}"
        )
    if task.privacy != spec.privacy or task.secagg != spec.secagg:
        return (
            f"round {round_}: the coordinator asked for privacy {task.privacy} and secure "
            f"aggregation {task.secagg}, the approved study states {spec.privacy} and "
            f"{spec.secagg}"
        )
    return None
