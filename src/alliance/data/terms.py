"""A clinician's findings as typed: HPO ids and term names, resolved to current HPO ids.

``alliance diagnose --hpo "seizure, microcephaly"`` and the clinician's page both take findings
as a clinician writes them. :class:`TermResolver` turns each into a current HPO term:

- text that starts with ``HP:`` (any case) is an id, resolved by the ontology (an obsolete id
  becomes its replacement; an unknown or malformed id is a
  :class:`~alliance.core.errors.UnknownCodeError` naming it);
- anything else is a name, looked up with :meth:`~alliance.data.suggest.LabelIndex.suggest`
  (the package's one label index: term names, the synonyms of an HPO release file when one is
  found, and whatever languages the index knows). A name resolves only when it equals a term's
  name or synonym once normalised (case, punctuation, plurals: ``Seizures`` is ``Seizure``).
  When it equals a name of one term and a synonym of another, the name wins; when it equals
  synonyms of several terms only, it is ambiguous. A name that matches no term exactly is an
  :class:`~alliance.core.errors.UnknownCodeError` that lists the closest terms with their ids,
  so the clinician can pick one; nothing is guessed.

:func:`split_terms` splits a list separated by commas (``,`` or the full-width ``，``). HPO names
rarely contain a comma (57 of 18,694 English names, 118 Chinese labels do); such a term, like any
term, can always be given by its id, which the errors say.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from alliance.core.errors import UnknownCodeError
from alliance.data.ontology import Ontology
from alliance.data.suggest import LabelIndex, Suggestion, normalise_label

__all__ = ["ResolvedTerm", "TermResolver", "split_terms"]

_CANDIDATES = 3
# A Chinese clinician separates findings with the full-width comma; the enumeration comma 、
# is part of labels (第二、三脚趾并趾) and does not separate.
_SEPARATOR = re.compile(r"[,，]")


@dataclass(frozen=True)
class ResolvedTerm:
    """One finding as given and the current HPO term it stands for.

    Attributes
    ----------
    given
        The text as typed (an id or a name).
    hpo_id
        The current HPO id.
    name
        The term's current name.
    """

    given: str
    hpo_id: str
    name: str


def split_terms(text: str) -> list[str]:
    """The findings of a list separated by commas (``,`` or the full-width ``，``), stripped,
    empty ones left out."""
    return [part.strip() for part in _SEPARATOR.split(text) if part.strip()]


def _is_id(text: str) -> bool:
    return text[:3].upper() == "HP:"


def _show(suggestions: Iterable[Suggestion]) -> str:
    """Candidates by name and id, with the synonym or label that matched when it differs."""
    return ", ".join(
        f"{s.name} ({s.hpo_id})"
        if normalise_label(s.matched) == normalise_label(s.name)
        else f"{s.name} ({s.hpo_id}, as {s.matched!r})"
        for s in suggestions
    )


class TermResolver:
    """Resolves findings typed by a clinician (ids or names) to current HPO terms.

    Parameters
    ----------
    ontology
        The shipped ontology: current ids, obsolete ids' replacements, names.
    index
        The label index to look names up in; built on first use from ``ontology`` and the HPO
        release file :func:`~alliance.data.hpo_release.find_release` finds (for synonyms), so
        that a resolver made for ids only costs nothing.
    """

    def __init__(self, ontology: Ontology, index: LabelIndex | None = None) -> None:
        self.ontology = ontology
        self._index = index

    @property
    def index(self) -> LabelIndex:
        """The label index names are looked up in (built on first use)."""
        if self._index is None:
            from alliance.data.hpo_release import HpoRelease, find_release

            path = find_release()
            release = HpoRelease.read(path) if path is not None else None
            self._index = LabelIndex(self.ontology, release)
        return self._index

    def resolve(self, text: str) -> ResolvedTerm:
        """The current term that ``text`` (an HPO id or a term name) stands for.

        Raises
        ------
        UnknownCodeError
            An unknown or malformed id; a name that matches no term exactly (the message lists
            the closest terms with their ids) or several equally.
        """
        given = text.strip()
        if _is_id(given):
            term = self.ontology.resolve("HP:" + given[3:].strip())
            return ResolvedTerm(given, term, self.ontology.name(term))
        found = self.index.suggest(given, limit=_CANDIDATES)
        exact = [s for s in found if s.score >= 1.0]
        named = [s for s in exact if normalise_label(s.name) == normalise_label(s.matched)]
        chosen = named or exact
        if len(chosen) == 1:
            return ResolvedTerm(given, chosen[0].hpo_id, chosen[0].name)
        if chosen:
            raise UnknownCodeError(
                f"{given!r} names several HPO terms: {_show(chosen)}; give the id of the one meant"
            )
        hint = f"closest: {_show(found)}" if found else "no term reads anything like it"
        raise UnknownCodeError(
            f"{given!r} is not the name of an HPO term ({hint}); give the exact name or the id "
            "(HP:0001250)"
        )

    def resolve_all(self, texts: Iterable[str], *, field: str = "findings") -> list[ResolvedTerm]:
        """Every finding of ``texts`` resolved, in order, repeats (of one term) left out.

        Parameters
        ----------
        texts
            Ids and names, one finding each (see :func:`split_terms`).
        field
            Where they were given (``"--hpo"``), for messages.

        Raises
        ------
        UnknownCodeError
            Naming ``field`` and every finding that did not resolve, with its candidates.
        """
        given = list(texts)
        resolved: dict[str, ResolvedTerm] = {}
        problems: list[str] = []
        for text in given:
            try:
                term = self.resolve(text)
            except UnknownCodeError as exc:
                problems.append(str(exc))
                continue
            resolved.setdefault(term.hpo_id, term)
        if problems:
            comma = (
                ". Findings are separated by commas, so a term whose name has a comma must be "
                "given by its id"
                if len(given) > 1
                else ""
            )
            raise UnknownCodeError(f"{field}: {'; '.join(problems)}{comma}")
        return list(resolved.values())
