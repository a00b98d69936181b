"""The clinician's page without the web: which model, finding terms, the differential.

At a hospital, a clinician looks a patient's findings up by name (in English or in Chinese),
marks each as observed or excluded, and reads the ranked differential of the model the hospital
received at a study's end. This module is that page's logic; :mod:`alliance.web.clinic_app`
serves it over HTTP, and ``alliance site clinic`` starts it.

Which model
-----------
- :func:`load_clinic_model` with ``config=site.toml``: the newest model in the hospital's own
  store, or with ``model=FILE`` a model file (the one ``alliance demo`` writes, or one the
  operator downloaded with its card beside it). Both are found and their cards read by
  :func:`alliance.site.received.model_in_use`, as ``alliance diagnose`` does.

Either way the page shows :data:`RESEARCH_NOTICE` ("research use, not a medical device", in
English and Chinese), and beside it what the model's card says about its intended use.

Search
------
:meth:`Clinic.search`: a text that is an HPO id (``HP:0001250``; an obsolete id is followed to
its current term) gives that term; any other text goes to
:meth:`~alliance.data.suggest.LabelIndex.suggest`, the package's one label index (names, the
release file's synonyms when one is installed, and Chinese labels where the index knows them).
Every match carries the term's official Chinese label (:mod:`alliance.data.chinese`) for display.

Differential
------------
:meth:`Clinic.differential` ranks the catalogue with :func:`~alliance.models.diagnosis.diagnose`
and names each candidate's supporting and contradicting findings in English and Chinese.

Privacy
-------
There is no patient identifier anywhere: a request holds findings only, and nothing of it is
kept or logged (this module logs no query, term or result at any level).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alliance.core.errors import DataError, UnknownCodeError
from alliance.data.chinese import chinese_label
from alliance.data.hpo_release import HpoRelease, find_release
from alliance.data.ontology import Ontology
from alliance.data.suggest import LabelIndex
from alliance.models.diagnosis import diagnose
from alliance.site.config import SiteConfig
from alliance.site.received import RESEARCH_USE, model_in_use
from alliance.store.modelfile import LoadedModel

__all__ = [
    "MAX_FINDINGS",
    "MAX_QUERY",
    "RESEARCH_NOTICE",
    "Clinic",
    "ClinicModel",
    "TermMatch",
    "load_clinic_model",
]

RESEARCH_NOTICE = (
    "Research use only, not a medical device: the differential supports, and never replaces, "
    "a clinician's judgement. 仅供研究使用，不是医疗器械。"
)
#: At most this many findings (observed and excluded together) in one request.
MAX_FINDINGS = 100
#: At most this many characters in one search text.
MAX_QUERY = 200
_HPO_ID = re.compile(r"^\s*(HP:\d{7})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ClinicModel:
    """The model a clinic serves, with what the page says about it.

    Attributes
    ----------
    loaded
        The ranker, its feature space and file metadata.
    source
        Where it came from, for people: ``"study rare-2026 version 12"`` or the file's name.
    study, version
        The study and model version it came from, when known (from the store or its card).
    notices
        The card's own texts on intended use, after :data:`RESEARCH_NOTICE`.
    """

    loaded: LoadedModel
    source: str
    study: str | None = None
    version: int | None = None
    notices: tuple[str, ...] = (RESEARCH_NOTICE,)

    def describe(self) -> dict[str, Any]:
        """What the page shows about the model (no path of the hospital's machine)."""
        return {
            "source": self.source,
            "study": self.study,
            "version": self.version,
            "hpo_version": self.loaded.features.catalogue.hpo_version,
            "diseases": self.loaded.features.n_diseases,
            "notices": list(self.notices),
        }


@dataclass(frozen=True)
class TermMatch:
    """A term found by :meth:`Clinic.search`."""

    hpo_id: str
    name: str
    name_zh: str | None
    matched: str
    score: float


def load_clinic_model(
    *, config: Path | None = None, model: Path | None = None, ontology: Ontology | None = None
) -> ClinicModel:
    """The model to serve: the hospital's newest (``config``) or a file (``model``).

    Raises
    ------
    ConfigError
        Neither or both given, or ``config`` cannot be read.
    ModelError
        The hospital has received no model yet, or the model file cannot be read as a ranker of
        the installed HPO release.
    """
    site = SiteConfig.load(config) if config is not None else None
    used = model_in_use(
        model=model,
        state_dir=None if site is None else site.state_dir,
        ontology=ontology,
        choice=None if site is None else site.clinic_model,
    )
    notices = (RESEARCH_NOTICE,) if used.notice == RESEARCH_USE else (RESEARCH_NOTICE, used.notice)
    stored = used.stored
    if stored is None:
        return ClinicModel(used.loaded, source=used.path.name, notices=notices)
    return ClinicModel(
        used.loaded,
        source=f"study {stored.study} version {stored.version}"
        + (", personalised at this hospital" if used.personalised else ""),
        study=stored.study,
        version=stored.version,
        notices=notices,
    )


class Clinic:
    """Term search and differential diagnosis over one model, keeping nothing between calls.

    Parameters
    ----------
    model
        The model to rank with.
    index
        The label index to search; by default one over the model's ontology, with the synonyms
        of the HPO release file when one is installed.
    """

    def __init__(self, model: ClinicModel, index: LabelIndex | None = None) -> None:
        self.model = model
        self.ontology = model.loaded.features.ontology
        if index is None:
            release_path = find_release()
            release = HpoRelease.read(release_path) if release_path is not None else None
            index = LabelIndex(self.ontology, release)
        self.index = index

    def term(self, term_id: str) -> dict[str, str | None]:
        """A term as the page names it: id, English name, Chinese label (or ``None``)."""
        return {
            "id": term_id,
            "name": self.ontology.name(term_id),
            "name_zh": chinese_label(term_id),
        }

    def search(self, text: str, *, limit: int = 10) -> list[TermMatch]:
        """Terms for a search text (an HPO id, or a name in English or Chinese), best first.

        Raises
        ------
        DataError
            The text is longer than :data:`MAX_QUERY` characters, or names an HPO id that is
            not in the installed release.
        """
        if len(text) > MAX_QUERY:
            raise DataError(
                f"search text of {len(text)} characters; search with at most {MAX_QUERY}"
            )
        by_id = _HPO_ID.match(text)
        if by_id:
            given = by_id[1].upper()
            try:
                current = self.ontology.resolve(given)
            except UnknownCodeError as exc:
                raise DataError(f"{exc}; check the id or search the term by its name") from None
            found = self.term(current)
            return [TermMatch(current, str(found["name"]), found["name_zh"], given, 1.0)]
        return [
            TermMatch(s.hpo_id, s.name, chinese_label(s.hpo_id), s.matched, s.score)
            for s in self.index.suggest(text, limit=limit)
        ]

    def differential(
        self, observed: Sequence[str], excluded: Sequence[str] = (), *, top: int = 10
    ) -> list[dict[str, Any]]:
        """The ranked differential: each candidate with its findings for and against.

        Raises
        ------
        DataError
            No observed finding, too many findings, a term both observed and excluded, or an
            id the installed release does not know (the message names it).
        """
        if len(observed) + len(excluded) > MAX_FINDINGS:
            raise DataError(
                f"{len(observed) + len(excluded)} findings; give at most {MAX_FINDINGS}"
            )
        both = sorted(set(observed) & set(excluded))
        if both:
            raise DataError(
                f"{', '.join(both)} is both observed and excluded; keep it in one of the lists"
            )
        features = self.model.loaded.features
        candidates = diagnose(self.model.loaded.model, features, observed, excluded, top=top)
        return [
            {
                "rank": c.rank,
                "disease_id": c.disease_id,
                "name": c.name,
                "probability": c.probability,
                "supporting": [self.term(t) for t in c.supporting],
                "against": [self.term(t) for t in c.against],
            }
            for c in candidates
        ]
