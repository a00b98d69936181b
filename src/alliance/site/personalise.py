"""The hospital's personalised model, built beside the federated one it received.

When a study's final model is kept in the hospital's :class:`~alliance.site.model_store.ModelStore`,
``alliance site personalise --config site.toml`` derives the hospital's personalised model from
it on the hospital's own training cases (``[data] train``), with nothing exchanged
(:mod:`alliance.models.personal`: the federated model with its disease prior corrected for the
hospital's case mix, the strength chosen on a validation split of the training cases). It is a
whole model file in the same never-pickled format, kept beside the federated one::

    <state>/models/<study>/v<version>/personal/model.alliance   the personalised model
    <state>/models/<study>/v<version>/personal/fit.json         what was chosen, on what counts

Which model clinicians use is the hospital's setting, ``[clinic] model = "federated" |
"personalised"`` in ``site.toml`` (:class:`~alliance.site.config.ClinicChoice`). Every command
that reads ``site.toml`` passes it to :func:`~alliance.site.received.model_in_use`;
``alliance site personalise`` also records it in ``<state>/models/clinic-model`` (for a reader
that has only the state folder, such as the clinic page) and writes ``clinic_model_chosen`` to
the audit log when it changes; building a personalised model writes ``model_personalised``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alliance.core.errors import DataError, ModelError
from alliance.core.files import write_atomically
from alliance.data.loading import DataConfig, read_source
from alliance.data.ontology import DiseaseSource, Ontology
from alliance.models.personal import PersonalFit, Personalisation, personalise
from alliance.models.ranker import CaseDataset
from alliance.models.training import get_weights
from alliance.protocol.codec import decode
from alliance.site.config import ClinicChoice
from alliance.site.model_store import StoredModel
from alliance.store.audit import AuditLog
from alliance.store.modelfile import load_model, ranker_file

__all__ = [
    "PersonalModel",
    "personal_model_path",
    "personalise_received",
    "record_choice",
    "recorded_choice",
]

logger = logging.getLogger(__name__)

PERSONAL_DIR = "personal"
CHOICE_FILE = "clinic-model"


@dataclass(frozen=True)
class PersonalModel:
    """A personalised model the hospital built: where it is and what was chosen."""

    stored: StoredModel
    path: Path
    fit: PersonalFit


def personal_model_path(stored: StoredModel) -> Path:
    """Where the personalised model of the received model ``stored`` lives."""
    return stored.folder / PERSONAL_DIR / "model.alliance"


def personalise_received(
    stored: StoredModel,
    data: DataConfig,
    *,
    ontology: Ontology,
    audit: AuditLog,
    seed: int = 0,
    method: Personalisation = Personalisation.PRIOR,
) -> PersonalModel:
    """Build (or rebuild) the personalised model of ``stored`` on ``data``'s training cases.

    Raises
    ------
    ModelError
        The received model file cannot be read.
    DataError
        ``[data] train`` cannot be read or holds no usable case.
    """
    loaded = load_model(stored.model_path, ontology)
    body = decode(stored.model_path.read_bytes()).body
    features = loaded.features
    read = read_source(data.train, ontology=ontology, catalogue=features.catalogue)
    if not read.cases:
        raise DataError(
            f"{data.train.location}: no usable training case to personalise the model with; "
            "`alliance data check` says why"
        )
    dataset = CaseDataset(features.encode(read.cases))
    model, fit = personalise(
        loaded.model, dataset, method=method, collate_fn=features.collate, seed=seed
    )
    try:
        sources = tuple(DiseaseSource(s) for s in body["sources"])
        min_phenotypes = int(body["min_phenotypes"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{stored.model_path}: no disease sources in the model file") from None
    about: dict[str, Any] = {
        **fit.as_dict(),
        "from_study": stored.study,
        "from_version": stored.version,
    }
    path = personal_model_path(stored)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    raw = ranker_file(
        features,
        get_weights(model),
        dim=model.dim,
        sources=sources,
        min_phenotypes=min_phenotypes,
        metadata={**dict(loaded.metadata), "personalised": about},
    )
    write_atomically(path, raw)
    write_atomically(path.with_name("fit.json"), json.dumps(about, indent=2).encode())
    audit.append(
        "model_personalised",
        study=stored.study,
        version=stored.version,
        method=fit.method.value,
        setting=fit.setting,
        changed=fit.personalised,
        n_train=fit.n_train,
        n_validation=fit.n_validation,
    )
    logger.info("study %s v%d: personalised model built", stored.study, stored.version)
    return PersonalModel(stored, path, fit)


def record_choice(state_dir: Path, choice: ClinicChoice, *, audit: AuditLog) -> bool:
    """Record ``choice`` as the model clinicians use; audit it when it changes (returns
    whether it changed)."""
    if recorded_choice(state_dir) is choice and _choice_file(state_dir).is_file():
        return False
    target = _choice_file(state_dir)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(target, (choice.value + "\n").encode())
    audit.append("clinic_model_chosen", model=choice.value)
    return True


def recorded_choice(state_dir: Path) -> ClinicChoice:
    """The choice recorded in ``state_dir`` (federated when none or unreadable)."""
    try:
        text = _choice_file(state_dir).read_text(encoding="utf-8").strip()
        return ClinicChoice(text)
    except (OSError, UnicodeDecodeError, ValueError):
        return ClinicChoice.FEDERATED


def _choice_file(state_dir: Path) -> Path:
    return Path(state_dir) / "models" / CHOICE_FILE
