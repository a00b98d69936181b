"""The model a hospital diagnoses with: the newest one it received, or a file it was given.

``alliance diagnose``/``evaluate --config site.toml`` and the clinician's page use the newest
model in the hospital's :class:`~alliance.site.model_store.ModelStore` (the ``[state] dir`` of
``site.toml``); ``--model FILE`` uses a model file instead (``alliance demo``'s, or one the
operator downloaded with ``alliance study model``, whose card ``<name>.card.json`` beside it
gives the notice). :func:`model_in_use` takes exactly one of the two.

Every answer given with a model carries its *notice*: what the model is for and not for. A
received model's card says it (the card is verified by the hospital before it keeps the model,
so it is not verified again here); only the fields needed are read, defensively (``notice``, or
``intended_use`` and ``not_intended_use``, at the top of the card or inside its ``card`` object),
and :data:`RESEARCH_USE` stands in when the card says nothing readable.

From the store, the hospital's ``[clinic] model`` setting decides between the federated model
as received and the hospital's personalised one (:mod:`alliance.site.personalise`); callers
that read ``site.toml`` pass it as ``choice``, others get the choice the hospital recorded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alliance.core.errors import ConfigError, ModelError
from alliance.data.ontology import Ontology, load_ontology
from alliance.site.config import ClinicChoice
from alliance.site.model_store import ModelStore, StoredModel
from alliance.site.personalise import personal_model_path, recorded_choice
from alliance.store.modelfile import LoadedModel, load_model

__all__ = ["RESEARCH_USE", "ModelInUse", "card_notice", "model_in_use", "received_model"]

logger = logging.getLogger(__name__)

#: The notice shown with every differential when the model's card gives none.
RESEARCH_USE = (
    "Research use only, not a medical device: the differential supports a clinician, who decides."
)


@dataclass(frozen=True)
class ModelInUse:
    """A loaded model and where it came from.

    Attributes
    ----------
    loaded
        The ranker, its feature space and its metadata.
    path
        The model file.
    notice
        What the model is for and not for (from its card, else :data:`RESEARCH_USE`).
    stored
        The hospital's record of it when it came from its model store, else ``None``.
    revision
        The card's revision number, when the card gives one.
    """

    loaded: LoadedModel
    path: Path
    notice: str
    stored: StoredModel | None = None
    revision: int | None = None
    personalised: bool = False

    def describe(self) -> str:
        """One line naming the model: study and version, or the file."""
        card = f", card revision {self.revision}" if self.revision is not None else ""
        if self.stored is None:
            return f"model file {self.path}{card}"
        received = self.stored.received_at.strftime("%Y-%m-%d %H:%M UTC")
        own = ", personalised at this hospital" if self.personalised else ""
        return (
            f"study {self.stored.study}, version {self.stored.version}{card}{own} "
            f"(received {received})"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form of :meth:`describe` and the notice."""
        stored = self.stored
        return {
            "file": str(self.path),
            "study": stored.study if stored else None,
            "version": stored.version if stored else None,
            "received": stored.received_at.isoformat() if stored else None,
            "card_revision": self.revision,
            "personalised": self.personalised,
            "notice": self.notice,
        }


def model_in_use(
    *,
    model: Path | None,
    state_dir: Path | None,
    ontology: Ontology | None = None,
    choice: ClinicChoice | None = None,
) -> ModelInUse:
    """The model file ``model``, or the newest model received into ``state_dir``; exactly one.

    With ``state_dir``, ``choice`` (the hospital's ``[clinic] model``; the choice recorded in
    ``state_dir`` when ``None``) picks the federated model or the hospital's personalised one.

    Raises
    ------
    ConfigError
        Both or neither given.
    ModelError
        The hospital has received no model yet, or the model file is unusable.
    """
    if (model is None) == (state_dir is None):
        raise ConfigError(
            "give exactly one of --model FILE (a model file) and --config site.toml (the newest "
            "model the hospital received)" + ("; both were given" if model is not None else "")
        )
    onto = ontology or load_ontology()
    if model is not None:
        # `alliance study model --out m.alliance` writes the verified card beside it.
        card = model.with_name(model.stem + ".card.json")
        notice, revision = card_notice(card) if card.is_file() else (RESEARCH_USE, None)
        return ModelInUse(load_model(model, onto), model, notice, None, revision)
    assert state_dir is not None
    return received_model(state_dir, onto, choice=choice or recorded_choice(state_dir))


def received_model(
    state_dir: Path, ontology: Ontology, *, choice: ClinicChoice = ClinicChoice.FEDERATED
) -> ModelInUse:
    """The newest model in the hospital's store under ``state_dir``, loaded (its personalised
    model with ``choice`` personalised).

    Raises
    ------
    ModelError
        No model was received yet (the message says how one arrives), the personalised model
        was chosen but not built yet, or the model cannot be loaded.
    """
    stored = ModelStore(state_dir).newest()
    if stored is None:
        raise ModelError(
            f"this hospital has received no model yet: {state_dir / 'models'} holds none. A "
            "model arrives when a study the hospital took part in finishes (the running "
            "`alliance site run` keeps it; a hospital on files gets it after `alliance site "
            "import` of the coordinator's bundles and `alliance site run --until-idle`); or "
            "pass --model FILE instead of --config"
        )
    path = stored.model_path
    if choice is ClinicChoice.PERSONALISED:
        path = personal_model_path(stored)
        if not path.is_file():
            raise ModelError(
                f'[clinic] model = "personalised" but study {stored.study} version '
                f"{stored.version} has no personalised model yet ({path} is missing); run "
                "`alliance site personalise --config site.toml`, or set [clinic] model = "
                '"federated"'
            )
    loaded = load_model(path, ontology)
    notice, revision = card_notice(stored.card_path)
    personalised = choice is ClinicChoice.PERSONALISED
    return ModelInUse(loaded, path, notice, stored, revision, personalised)


def card_notice(card_path: Path) -> tuple[str, int | None]:
    """The notice and revision number a model card gives (:data:`RESEARCH_USE` and ``None``
    where it gives none, or the card cannot be read)."""
    try:
        document = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        logger.warning("model card %s unreadable (%s); showing the standard notice", card_path, exc)
        return RESEARCH_USE, None
    fields = _card_fields(document)
    revision = fields.get("revision")
    number = revision if isinstance(revision, int) and not isinstance(revision, bool) else None
    notice = _text(fields.get("notice"))
    if not notice:
        parts = (_text(fields.get("intended_use")), _text(fields.get("not_intended_use")))
        notice = " ".join(f"{part}." for part in parts if part)
    return (notice or RESEARCH_USE), number


def _card_fields(document: Any) -> Mapping[str, Any]:
    """The card's own fields: the top object, with those of a nested ``card`` object over it."""
    if not isinstance(document, dict):
        return {}
    nested = document.get("card")
    return {**document, **nested} if isinstance(nested, dict) else document


def _text(value: Any) -> str:
    """A card field as one sentence: a string, or a list of strings joined."""
    if isinstance(value, str):
        return value.strip().rstrip(".")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "; ".join(v.strip().rstrip(".") for v in value if v.strip())
    return ""
