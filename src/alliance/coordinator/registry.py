"""The coordinator's model registry: every finished study's final model, with its signed card.

When a study finishes, the service publishes its final model version here
(:meth:`ModelRegistry.publish`): the model file (for the phenotype ranker, the very file
:func:`alliance.store.modelfile.load_model` reads, so ``alliance diagnose --model`` works on a
download; other kinds, :func:`~alliance.store.modelfile.study_model_file`), and its model card
(:mod:`alliance.protocol.model_card`), signed with the coordinator's message-signing key.

The final model is evaluated by the hospitals, not here: each participant evaluates the model it
received on its own held-out cases and sends a signed
:class:`~alliance.protocol.messages.FinalEvaluation` (counts only; its ε and δ spent when the
study is private). :meth:`ModelRegistry.record_evaluation` keeps the raw counts (once per site)
and re-issues the card as the next revision, signed again, with small counts suppressed. Every
revision is kept; readers get the newest.

Layout, in the coordinator's state folder (``[registry] dir``, by default ``models`` beside the
audit log)::

    <dir>/<study>/v<version>/model.alliance       the model file
    <dir>/<study>/v<version>/card-r<revision>.json  every signed revision of its card
    <dir>/<study>/v<version>/evaluations.json     the hospitals' raw reports (never served)

Every file is written atomically (a temporary file, then a rename). A read is verified: the
newest card's signature against the coordinator's own certificate and the model file's SHA-256
against the card; a mismatch raises :class:`~alliance.core.errors.StoreDamaged` naming the file.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from alliance.core.errors import IntegrityError, StoreDamaged
from alliance.core.files import write_atomically
from alliance.crypto.pki import signing_public_key
from alliance.data.ontology import DiseaseSource
from alliance.models.tasks import PhenotypeRankerKind, StudyModel
from alliance.protocol.codec import MessageSigner
from alliance.protocol.messages import FinalEvaluation
from alliance.protocol.model_card import (
    EvaluationCounts,
    ModelCard,
    canonical_json,
    case_counts,
    evaluation_summary,
    model_sha256,
    sign_card,
    verify_card,
)
from alliance.protocol.study import StudySpec
from alliance.store.audit import AuditLog
from alliance.store.modelfile import ranker_file, study_model_file

__all__ = ["ModelRegistry", "PublishedModel"]

MODEL_FILE = "model.alliance"
EVALUATIONS_FILE = "evaluations.json"
_CARD = re.compile(r"^card-r(\d+)\.json$")
_VERSION = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class PublishedModel:
    """A published model version: its file's bytes and its newest signed card."""

    study: str
    version: int
    model: bytes
    card: ModelCard
    card_bytes: bytes


class _OwnCards:
    """Checks a card signed by this coordinator: the same certificate, its key's signature."""

    def __init__(self, certificate_der: bytes) -> None:
        self.der = certificate_der
        self.key = signing_public_key(x509.load_der_x509_certificate(certificate_der))

    def __call__(self, signer: str, certificate_der: bytes, data: bytes, signature: bytes) -> None:
        if certificate_der != self.der or self.key is None:
            raise IntegrityError("the card was signed with another certificate than this one")
        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            raise IntegrityError("the card's signature does not verify") from None


class ModelRegistry:
    """Published models under ``root`` (see the module docstring).

    Parameters
    ----------
    root
        The registry's folder.
    signer
        The coordinator's signing identity (it signs every card).
    audit
        The coordinator's audit log (``model_published``, ``model_card_revised``).
    """

    def __init__(self, root: Path, *, signer: MessageSigner, audit: AuditLog) -> None:
        self.root = Path(root)
        self.signer = signer
        self.audit = audit
        self._verify = _OwnCards(signer.certificate_der)

    # --- publishing -------------------------------------------------------------------------
    def publish(
        self,
        spec: StudySpec,
        *,
        federation: str,
        version: int,
        weights: Mapping[str, npt.NDArray[Any]],
        kind: StudyModel,
        cases: Mapping[str, int | None],
        now: float,
        total_cases: int | None = None,
    ) -> PublishedModel:
        """Publish ``spec``'s model version ``version`` (a version already published is
        returned as it is); ``cases`` gives each hospital's training cases (``None`` where
        secure aggregation hid them, ``total_cases`` then giving their sum)."""
        found = self.get(spec.study_id, version)
        if found is not None:
            return found
        table = spec.model.to_table()
        metadata = {"study": spec.study_id, "version": version, "study_hash": spec.hash}
        hpo_version: str | None = None
        catalogue: dict[str, Any] = {}
        if isinstance(kind, PhenotypeRankerKind):
            features = kind.features
            sources = tuple(DiseaseSource(str(s)) for s in table.get("sources", ("OMIM",)))
            hpo_version = features.catalogue.hpo_version
            catalogue = {
                "sources": [s.value for s in sources],
                "min_phenotypes": table.get("min_phenotypes"),
                "n_terms": features.n_terms,
                "n_diseases": features.n_diseases,
            }
            model = ranker_file(
                features,
                weights,
                dim=kind.dim,
                sources=sources,
                min_phenotypes=int(table.get("min_phenotypes", 3)),
                metadata=metadata,
            )
        else:
            model = study_model_file(kind.kind, table, weights, metadata=metadata)
        hospitals = tuple(sorted(cases))
        card = ModelCard(
            study=spec.study_id,
            study_hash=spec.hash,
            federation=federation,
            version=version,
            revision=1,
            issued_at=_iso(now),
            model_kind=spec.model.kind,
            model=table,
            hpo_version=hpo_version,
            catalogue=catalogue,
            strategy=spec.strategy.to_table(),
            rounds=spec.rounds,
            hospitals=hospitals,
            cases=case_counts(cases, total=total_cases),
            evaluation=evaluation_summary(hospitals, {}),
            privacy={},
            model_sha256=model_sha256(model),
            model_bytes=len(model),
        )
        folder = self._folder(spec.study_id, version)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(folder / MODEL_FILE, model)
        write_atomically(folder / EVALUATIONS_FILE, canonical_json({}))
        card_bytes = sign_card(card, self.signer)
        write_atomically(folder / "card-r1.json", card_bytes)
        self.audit.append(
            "model_published",
            study=spec.study_id,
            version=version,
            model_sha256=card.model_sha256,
            bytes=len(model),
            card_revision=1,
        )
        return PublishedModel(spec.study_id, version, model, card, card_bytes)

    def record_evaluation(
        self, site: str, evaluation: FinalEvaluation, *, now: float
    ) -> PublishedModel | None:
        """Keep ``site``'s evaluation of the published model and issue the card's next
        revision; ``None`` if the site had already reported (a repeat changes nothing).

        Raises
        ------
        IntegrityError
            No such published version, or ``site`` is not one of its hospitals.
        """
        h = evaluation.header
        published = self.get(h.study, evaluation.model_version)
        if published is None:
            raise IntegrityError(
                f"final evaluation from {site!r} for study {h.study!r} version "
                f"{evaluation.model_version}, which was never published"
            )
        card = published.card
        if site not in card.hospitals:
            raise IntegrityError(
                f"final evaluation from {site!r}, which did not take part in study {h.study!r}"
            )
        folder = self._folder(h.study, evaluation.model_version)
        reports = self._reports(folder)
        if site in reports:
            return None
        reports[site] = {
            "metrics": dict(evaluation.metrics),
            "epsilon": evaluation.epsilon,
            "delta": evaluation.delta,
        }
        write_atomically(folder / EVALUATIONS_FILE, canonical_json(reports))
        counts = {
            s: EvaluationCounts.from_metrics(r["metrics"])
            for s, r in reports.items()
            if r["metrics"]
        }
        privacy = {
            s: {"epsilon": r["epsilon"], "delta": r["delta"]}
            for s, r in sorted(reports.items())
            if r["epsilon"] is not None
        }
        summary = evaluation_summary(card.hospitals, counts)
        summary["pending"] = [s for s in card.hospitals if s not in reports]
        revised = card.revised(evaluation=summary, privacy=privacy, issued_at=_iso(now))
        card_bytes = sign_card(revised, self.signer)
        write_atomically(folder / f"card-r{revised.revision}.json", card_bytes)
        self.audit.append(
            "model_card_revised",
            study=h.study,
            version=evaluation.model_version,
            card_revision=revised.revision,
            evaluated_by=site,
        )
        return PublishedModel(h.study, revised.version, published.model, revised, card_bytes)

    # --- reading -------------------------------------------------------------------------
    def versions(self, study: str) -> list[int]:
        """The published versions of ``study``, oldest first."""
        folder = self.root / study
        if not folder.is_dir():
            return []
        found = (_VERSION.match(p.name) for p in folder.iterdir())
        return sorted(int(m[1]) for m in found if m and (folder / m[0] / MODEL_FILE).is_file())

    def get(self, study: str, version: int | None = None) -> PublishedModel | None:
        """``study``'s published model (the newest version if ``version`` is ``None``) with its
        newest card, verified; ``None`` if not published.

        Raises
        ------
        StoreDamaged
            The model file or the card no longer matches (altered on disk).
        """
        if version is None:
            versions = self.versions(study)
            if not versions:
                return None
            version = versions[-1]
        folder = self._folder(study, version)
        cards = sorted(
            (int(m[1]), p) for p in folder.glob("card-r*.json") if (m := _CARD.match(p.name))
        )
        if not (folder / MODEL_FILE).is_file() or not cards:
            return None
        path = cards[-1][1]
        model, card_bytes = (folder / MODEL_FILE).read_bytes(), path.read_bytes()
        try:
            card = verify_card(card_bytes, model, self._verify, _study_hash(card_bytes))
        except IntegrityError as exc:
            raise StoreDamaged(
                f"the published model in {folder} does not match its card {path.name}: {exc}; "
                "restore the folder from a backup"
            ) from None
        if card.study != study or card.version != version:
            raise StoreDamaged(f"{path} is the card of another study or version")
        return PublishedModel(study, version, model, card, card_bytes)

    def _folder(self, study: str, version: int) -> Path:
        return self.root / study / f"v{version}"

    @staticmethod
    def _reports(folder: Path) -> dict[str, Any]:
        try:
            raw = json.loads((folder / EVALUATIONS_FILE).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreDamaged(f"{folder / EVALUATIONS_FILE} is unreadable: {exc}") from None
        if not isinstance(raw, dict):
            raise StoreDamaged(f"{folder / EVALUATIONS_FILE} is not a JSON object")
        return raw


def _study_hash(card_bytes: bytes) -> str:
    """The card's own study hash (the registry checks signature and model, not approval)."""
    try:
        raw = json.loads(card_bytes)
        return str(raw["card"]["study_hash"])
    except (ValueError, KeyError, TypeError):
        return ""


def _iso(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds")
