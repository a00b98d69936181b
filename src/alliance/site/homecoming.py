"""The model comes home: what a hospital does with a finished study's model and card.

A :class:`~alliance.protocol.messages.StudyEnd` of a finished study carries the final model
file and its signed model card. :func:`receive_model` checks them before anything is kept
(:func:`~alliance.protocol.model_card.verify_card`): the coordinator's signature through the
hospital's trust store, the model's SHA-256 against the card, the card's study hash against the
study the hospital approved, its study and version against the message. A refused model or card
changes nothing: nothing is kept, the reason goes to the audit log (``model_refused``) and the
hospital's log. A verified model is kept in the hospital's
:class:`~alliance.site.model_store.ModelStore` (``model_received``: study, version, model
SHA-256, card revision); a model already kept is not kept twice, but a newer revision of its card
(the same model, with the hospitals' evaluation on it) replaces the card (``model_card_updated``).

When it first keeps a model, the hospital evaluates it on its held-out cases with the same
evaluation step its rounds use (:class:`~alliance.models.steps.EvalStep`) and answers with a
signed :class:`~alliance.protocol.messages.FinalEvaluation`: the top-k counts, and for a private
study the ε and δ its own ledger spent on the study. Evaluating costs no privacy budget: the
counts are the same kind of aggregate each round already reports, uncharged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from alliance.core.errors import AllianceError, IntegrityError
from alliance.models.training import set_weights
from alliance.protocol.codec import SignatureVerifier, decode
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import FinalEvaluation, StudyEnd
from alliance.protocol.model_card import ModelCard, read_card, verify_card
from alliance.site.agent import Site
from alliance.site.model_store import ModelStore
from alliance.store.audit import AuditLog

__all__ = ["Homecoming", "evaluate_final"]

logger = logging.getLogger(__name__)
_COUNTS = ("eval_n", "eval_top1", "eval_top3", "eval_top10")


@dataclass(frozen=True)
class Homecoming:
    """What became of a model that came home.

    Attributes
    ----------
    card
        The verified card (``None`` if refused).
    new
        The model was kept now (not before): the hospital evaluates it.
    refused
        Why the model or card was refused (``None`` if verified).
    """

    card: ModelCard | None
    new: bool = False
    refused: str | None = None


def receive_model(
    end: StudyEnd,
    *,
    models: ModelStore,
    coordinator: SignatureVerifier,
    study_hash: str,
    audit: AuditLog,
) -> Homecoming:
    """Verify the model and card ``end`` carries and keep them (see the module docstring)."""
    h = end.header
    try:
        card = verify_card(
            end.card,
            end.model,
            coordinator,
            study_hash,
            study=h.study,
            version=end.final_version,
        )
    except IntegrityError as exc:
        logger.error("study %s: the final model was refused: %s", h.study, exc)
        audit.append("model_refused", study=h.study, version=end.final_version, reason=str(exc))
        return Homecoming(None, refused=str(exc))
    kept = models.get(h.study, end.final_version)
    if kept is None:
        models.add(h.study, end.final_version, end.model, end.card)
        audit.append(
            "model_received",
            study=h.study,
            version=end.final_version,
            model_sha256=card.model_sha256,
            card_revision=card.revision,
        )
        logger.info(
            "study %s: kept the final model version %d (%s)",
            h.study,
            end.final_version,
            card.model_sha256[:19],
        )
        return Homecoming(card, new=True)
    held, _ = read_card(kept.card_path.read_bytes())
    if held.model_sha256 == card.model_sha256 and card.revision > held.revision:
        models.replace_card(h.study, end.final_version, end.card)
        audit.append(
            "model_card_updated",
            study=h.study,
            version=end.final_version,
            card_revision=card.revision,
        )
    return Homecoming(card)


def evaluate_final(site: Site | None, end: StudyEnd, *, site_id: str, federation: str) -> Envelope:
    """The hospital's :class:`FinalEvaluation` of the model ``end`` carries, on its held-out
    cases (no counts if it holds none or the evaluation step cannot score this model)."""
    h = end.header
    metrics: dict[str, float] = {}
    if site is not None and site.test is not None and len(site.test) > 0:  # type: ignore[arg-type]
        try:
            set_weights(site.model, decode(end.model).arrays)
            found = site.eval_step.evaluate(site.model, site.test, collate_fn=site.collate_fn)
            if all(k in found for k in _COUNTS):
                metrics = {k: float(found[k]) for k in _COUNTS}
        except (AllianceError, KeyError, RuntimeError, ValueError) as exc:
            logger.error("study %s: the final model could not be evaluated: %s", h.study, exc)
    epsilon = delta = None
    if site is not None and site.ledger is not None:
        for spend in site.ledger.by_study():
            if spend.study == h.study:
                epsilon, delta = spend.epsilon.epsilon, site.ledger.delta
    header = Header(MessageKind.FINAL_EVALUATION, federation, h.study, 0, site_id, COORDINATOR)
    return FinalEvaluation(header, end.final_version, metrics, epsilon, delta).to_envelope()
