"""A hospital's site: fetches tasks, trains on its own cases, sends back an update and counts.

The site always initiates: it polls its :class:`~alliance.transport.base.SiteLink` for the next
message. For a :class:`~alliance.protocol.messages.TrainTask` addressed to it within its
federation it (1) loads the global weights, (2) evaluates them on its held-out cases with its
evaluation step and keeps only aggregate counts (top-k by default), (3) trains locally with its
training step (:mod:`alliance.models.steps`; cross-entropy and the plan's optimiser, Adam by
default), the task's plan and the study's privacy plan (:mod:`alliance.site.privatize`:
DP-SGD charged to the hospital's ledger, client-level clipping and noise), and (4) submits the
parameter delta, its number of training examples and those counts — or, under secure
aggregation, takes part in the masking stages (:mod:`alliance.site.secure`) so that the
coordinator only ever sees the sum. A task that would take the hospital past its privacy budget
is declined with a
:class:`~alliance.protocol.messages.Refusal` that says only "budget". Nothing else leaves the
site.

A coordinator may lie, replay or repeat, so a study round trained with DP-SGD is released once:
a task outside the study's privacy plan (a round beyond its ``rounds``, a model version that
round cannot have) is declined with the reason "policy"; the reply of a round is recorded in the
privacy ledger before it is returned (:mod:`alliance.privacy.releases`), and a task for a round
already answered gets that very reply again (under secure aggregation: the same update, masked
afresh for the new attempt), never a second training; a task for it on another model version is
declined.

:meth:`Site.answer` says what the site did with a message as an
:class:`~alliance.site.outcome.Outcome` (trained, resent, refused and why, the privacy charges
it made); :meth:`Site.handle` returns only the replies.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from alliance.core.errors import (
    BudgetExceeded,
    ConfigError,
    FederationError,
    PrivacyError,
    ProtocolError,
)
from alliance.evaluation.ranking import TopKEvaluation
from alliance.models.steps import ClassifierStep, EvalStep, TrainStep
from alliance.models.training import get_weights, set_weights
from alliance.privacy.ledger import PrivacyLedger
from alliance.privacy.noise import SecureGaussian
from alliance.protocol.codec import MessageSigner, SignatureVerifier, decode, encode
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import (
    ModelUpdate,
    Refusal,
    StudyEnd,
    TrainTask,
    check_same_shapes,
)
from alliance.protocol.secagg_messages import SecAggMessage
from alliance.protocol.secure_update import COUNT_METRICS
from alliance.site.outcome import Action, Outcome, Refused
from alliance.site.privatize import LocalUpdate, train_under_plan
from alliance.site.secure import SecureRounds
from alliance.transport.base import SiteLink

__all__ = ["Site", "site_seed"]

logger = logging.getLogger(__name__)


class Site:
    """One hospital in a federation.

    Parameters
    ----------
    site_id
        The hospital's id in the federation.
    federation
        The federation the site belongs to; tasks for any other are refused.
    model
        A module of the study's architecture (its weights are replaced by each task's).
    train, test
        The hospital's training cases and held-out cases (``test`` may be ``None``).
    link
        The site's end of the transport, for :meth:`step`; ``None`` when a runner fetches and
        submits itself and calls :meth:`train_round`.
    collate_fn
        Batch builder for both datasets.
    ledger
        The hospital's privacy ledger (required for studies with DP-SGD).
    signer, peers
        The site's signing identity and the check of other sites' signatures (required for
        studies with secure aggregation: key advertisements are signed and verified).
    noise
        Source of privacy noise (default: a fresh CSPRNG; a fixed key only in tests).
    train_step
        How a round trains (default :class:`~alliance.models.steps.ClassifierStep`:
        cross-entropy and the plan's optimiser, which refuses a model that is not a
        classifier). Under DP-SGD
        only its loss is used (:meth:`~alliance.models.steps.TrainStep.private_loss`).
    eval_step
        What the site reports on ``test`` (default
        :class:`~alliance.evaluation.ranking.TopKEvaluation`: top-k counts). Under secure
        aggregation only the top-k counts travel.
    """

    def __init__(
        self,
        site_id: str,
        *,
        federation: str,
        model: nn.Module,
        train: Dataset[Any],
        test: Dataset[Any] | None,
        link: SiteLink | None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        ledger: PrivacyLedger | None = None,
        signer: MessageSigner | None = None,
        peers: SignatureVerifier | None = None,
        noise: SecureGaussian | None = None,
        train_step: TrainStep | None = None,
        eval_step: EvalStep | None = None,
    ) -> None:
        if len(train) == 0:  # type: ignore[arg-type]
            raise FederationError(
                f"site {site_id!r} has no training cases; load its data before joining"
            )
        self.id = site_id
        self.federation = federation
        self.model = model
        self.train = train
        self.test = test
        self.link = link
        self.collate_fn = collate_fn
        self.finished = False
        self.final_version: int | None = None
        self.ledger = ledger
        self.noise = noise or SecureGaussian()
        self.train_step: TrainStep = train_step or ClassifierStep()
        self.eval_step: EvalStep = eval_step or TopKEvaluation()
        self.secure = SecureRounds(site_id, signer=signer, peers=peers)

    def step(self) -> Outcome | None:
        """Handle at most one pending message and submit the replies; what the site did with
        it, or ``None`` if there was none."""
        if self.link is None:
            raise FederationError(f"site {self.id!r} has no link to fetch messages from")
        env = self.link.fetch(self.id)
        if env is None:
            return None
        outcome = self.answer(env)
        for reply in outcome.replies:
            self.link.submit(reply)
        return outcome

    def handle(self, env: Envelope) -> list[Envelope]:
        """Act on one message from the coordinator; return the replies to send (see
        :meth:`answer`, which says what the site did as well)."""
        return list(self.answer(env).replies)

    def answer(self, env: Envelope) -> Outcome:
        """Act on one message from the coordinator; say what the site did and what to send.

        A message addressed to another site or federation is ignored (logged, no reply). A task
        the site declines (privacy budget, outside the study's privacy plan) is answered with a
        :class:`~alliance.protocol.messages.Refusal` that says only its category.
        """
        h = env.header
        if h.recipient != self.id or h.federation != self.federation:
            logger.warning(
                "site %s refused a %s message addressed to %s in federation %s",
                self.id,
                h.kind.value,
                h.recipient,
                h.federation,
            )
            return Outcome(Action.IGNORED, h.study, h.round)
        if h.kind is MessageKind.STUDY_END:
            self.final_version = StudyEnd.from_envelope(env).final_version
            self.finished = True
            return Outcome(Action.ENDED, h.study, h.round, model_version=self.final_version)
        if h.kind is MessageKind.SECAGG:
            answers = self.secure.handle(SecAggMessage.from_envelope(env))
            return Outcome(Action.SECAGG, h.study, h.round, tuple(m.to_envelope() for m in answers))
        if h.kind is not MessageKind.TRAIN_TASK:
            raise ProtocolError(
                f"site {self.id}: unexpected {h.kind.value} message from the coordinator"
            )
        return self._answer_task(TrainTask.from_envelope(env))

    def _answer_task(self, task: TrainTask) -> Outcome:
        h = task.header
        trained: list[LocalUpdate] = []  # what this call trained afresh (none: a reply resent)
        try:
            if task.secagg.enabled:
                self._released(task)  # refuses a task out of plan before any key leaves
                answers = self.secure.begin(task, lambda: self._train(task, trained))
                replies = tuple(m.to_envelope() for m in answers)
            else:
                replies = (self._update(task, trained).to_envelope(),)
        except PrivacyError as exc:
            logger.warning("site %s declined round %d: %s", self.id, h.round, exc)
            category = "budget" if isinstance(exc, BudgetExceeded) else "policy"
            refusal = Refusal(self._reply_header(task, MessageKind.REFUSAL), category)
            return Outcome(
                Action.REFUSED,
                h.study,
                h.round,
                (refusal.to_envelope(),),
                refused=Refused(category, str(exc)),
                model_version=task.model_version,
            )
        charges = tuple(u.charge for u in trained if u.charge is not None and u.charge.new)
        if not replies and not trained:
            action = Action.IGNORED  # a secure round this site cannot take part in
        else:
            action = Action.TRAINED if trained else Action.RESENT
        return Outcome(action, h.study, h.round, replies, charges, None, task.model_version)

    def _reply_header(self, task: TrainTask, kind: MessageKind) -> Header:
        return Header(
            kind=kind,
            federation=self.federation,
            study=task.header.study,
            round=task.header.round,
            sender=self.id,
            recipient=COORDINATOR,
        )

    def train_round(self, task: TrainTask) -> ModelUpdate:
        """Evaluate the task's model on the held-out cases, train, and return the update.

        A round of a DP study that this site already answered returns the recorded update
        unchanged (same header and nonce) instead of training again.

        Raises
        ------
        BudgetExceeded
            The round would take the hospital past its privacy budget (nothing was trained).
        PrivacyError
            The task is outside the study's privacy plan, or re-asks an answered round on
            another model version (nothing was trained).
        """
        return self._update(task, [])

    def _update(self, task: TrainTask, trained: list[LocalUpdate]) -> ModelUpdate:
        """:meth:`train_round`, appending to ``trained`` what it trained afresh."""
        released = self._released(task)
        if released is not None:
            return released
        local, metrics = self._train_afresh(task)
        trained.append(local)
        return self._release(task, local, metrics)

    def _released(self, task: TrainTask) -> ModelUpdate | None:
        """The update this charged round already released, or ``None`` if it released none.

        Raises
        ------
        PrivacyError
            The task is outside the study's privacy plan, or asks for a round this site
            answered on another model version.
        """
        if self.ledger is None or not task.privacy.patient_level:
            return None
        study, round_, version = task.header.study, task.header.round, task.model_version
        if not 1 <= round_ <= task.privacy.rounds or version > round_ - 1:
            raise PrivacyError(
                f"study {study!r} round {round_} on model version {version} is outside the "
                f"study's privacy plan (rounds 1–{task.privacy.rounds}, round r trains a model "
                "version below r); declined, nothing was trained or charged"
            )
        release = self.ledger.release(study=study, round=round_)
        if release is None:
            return None
        if release.model_version != version:
            raise PrivacyError(
                f"study {study!r} round {round_} was already answered on model version "
                f"{release.model_version} ({release.released_at}); a task for it on version "
                f"{version} is declined, since each round's data is released once"
            )
        logger.info(
            "site %s: round %d of %s answered before; same reply again", self.id, round_, study
        )
        return ModelUpdate.from_envelope(decode(release.reply))

    def _release(
        self, task: TrainTask, local: LocalUpdate, metrics: dict[str, float]
    ) -> ModelUpdate:
        """The round's update, recorded in the ledger first when the round was charged."""
        header = self._reply_header(task, MessageKind.MODEL_UPDATE)
        update = ModelUpdate(header, task.model_version, local.num_examples, local.delta, metrics)
        if local.event is not None and self.ledger is not None:
            self.ledger.record_release(
                study=task.header.study,
                round=task.header.round,
                model_version=task.model_version,
                reply=encode(update.to_envelope()),
            )
        return update

    def _train(
        self, task: TrainTask, trained: list[LocalUpdate]
    ) -> tuple[LocalUpdate, dict[str, float]]:
        """The round's update for secure aggregation: the one already released, else trained
        now (appended to ``trained``, and recorded before any masked form of it leaves)."""
        released = self._released(task)
        if released is None:
            local, metrics = self._train_afresh(task)
            trained.append(local)
            self._release(task, local, metrics)
            lost = sorted(set(metrics) - {*COUNT_METRICS, "train_loss"})
            if lost:
                logger.warning(
                    "site %s: under secure aggregation only top-k counts and the training loss "
                    "are summed; metrics %s stay at the site",
                    self.id,
                    lost,
                )
            return local, metrics
        # Charged and recorded when it was trained: no event to charge now (event=None).
        metrics = dict(released.metrics)
        loss = metrics.get("train_loss", 0.0)
        return LocalUpdate(dict(released.delta), released.num_examples, loss, None), metrics

    def _train_afresh(self, task: TrainTask) -> tuple[LocalUpdate, dict[str, float]]:
        """Evaluate, then train one round under the task's privacy plan.

        Raises
        ------
        ConfigError
            The evaluation or training step cannot handle this model or these cases (nothing
            was charged); the message names the site and round.
        """
        reference = get_weights(self.model)
        check_same_shapes(
            task.weights, reference, what=f"task for site {self.id} round {task.header.round}"
        )
        set_weights(self.model, task.weights)
        try:
            return self._evaluate_and_train(task)
        except ConfigError as exc:
            raise ConfigError(
                f"site {self.id!r}, round {task.header.round} of study {task.header.study!r}: {exc}"
            ) from exc

    def _evaluate_and_train(self, task: TrainTask) -> tuple[LocalUpdate, dict[str, float]]:
        metrics: dict[str, float] = {}
        if self.test is not None and len(self.test) > 0:  # type: ignore[arg-type]
            metrics.update(
                self.eval_step.evaluate(self.model, self.test, collate_fn=self.collate_fn)
            )
        secure = task.secagg.enabled
        local = train_under_plan(
            self.model,
            self.train,
            plan=task.plan,
            privacy=task.privacy,
            start=task.weights,
            seed=site_seed(task.plan.seed, task.header.round, self.id),
            study=task.header.study,
            round_=task.header.round,
            ledger=self.ledger,
            secure_threshold=task.secagg.threshold_for(len(task.cohort)) if secure else None,
            collate_fn=self.collate_fn,
            noise=self.noise,
            step=self.train_step,
        )
        metrics["train_loss"] = local.train_loss
        return local, metrics


def site_seed(seed: int, round_: int, site: str) -> int:
    """The shuffling seed of ``site`` in round ``round_`` of a study seeded with ``seed``."""
    digest = hashlib.sha256(f"{seed}/{round_}/{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
