"""Candidate HPO terms for a hospital's local label, found by label similarity.

``alliance data map`` lists the local codes a hospital has not mapped yet, each with the HPO
terms whose name or synonym reads most like the code's label (``Krampfanfälle`` will not work,
``Seizures`` and ``microcefaly`` will). A person still chooses: a suggestion is a hint, never a
mapping.

:class:`LabelIndex` indexes every current phenotypic-abnormality term of the ontology by its
name and, when an :class:`~alliance.data.hpo_release.HpoRelease` is given, its synonyms.

Method
------
1. *Normalise* a text (:func:`normalise_label`): Unicode NFKC, case-folded, every run of
   punctuation, symbols or spaces turned into one space, and English plurals reduced token by
   token (``seizures`` → ``seizure``, ``abnormalities`` → ``abnormality``, ``masses`` →
   ``mass``, ``reflexes`` → ``reflex``; ``-ss``, ``-us`` and ``-is`` words are left alone).
2. *Character trigrams* of each token padded with one space (`` sh``, ``sho`` ... ``re ``),
   weighted by inverse document frequency ``log(1 + N / df)`` over the N indexed texts, compared
   by cosine. An inverted index from trigram to texts means a query only touches texts that
   share a trigram with it. Trigrams catch misspellings and spelling variants.
3. *Tokens*: the IDF-weighted Jaccard index of the two token sets, so that rare words
   (``hypotonia``) count more than common ones (``abnormality``, ``of``).
4. ``score = 0.6 · trigram cosine + 0.4 · token Jaccard``, capped at 0.99; an exact match of the
   normalised texts scores 1.0. A term is listed once, with its best-matching text; equal
   scores go to the term with the higher information content (the more specific), then the
   lower id.

A label with nothing but punctuation, or in a script the ontology does not use (Chinese, for
instance), shares no trigram with any text and gets no suggestion.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from alliance.data.hpo_release import HpoRelease
from alliance.data.ontology import Ontology

__all__ = ["LabelIndex", "Suggestion", "normalise_label"]

_NON_WORD = re.compile(r"[\W_]+")
_GRAM_WEIGHT = 0.6
_TOKEN_WEIGHT = 0.4
_BEST_INEXACT = 0.99
# Texts scored in full per query: the best by trigram cosine, at least this many.
_POOL = 200


@dataclass(frozen=True)
class Suggestion:
    """A candidate HPO term for a label.

    Attributes
    ----------
    hpo_id
        The current term id.
    name
        The term's current name.
    matched
        The name or synonym that matched best.
    score
        Similarity in [0, 1]; 1.0 only when the normalised texts are equal.
    """

    hpo_id: str
    name: str
    matched: str
    score: float


def normalise_label(label: str) -> str:
    """The text as compared: NFKC, case-folded, punctuation to spaces, plurals reduced."""
    text = unicodedata.normalize("NFKC", label).casefold()
    return " ".join(_singular(token) for token in _NON_WORD.sub(" ", text).split())


def _singular(token: str) -> str:
    if len(token) <= 3 or not token.isascii() or not token.isalpha():
        return token
    if token.endswith("ies") and len(token) > 4:
        return token[:-3] + "y"
    if token.endswith(("sses", "xes")):
        return token[:-2]
    if token.endswith(("ss", "us", "is")) or not token.endswith("s"):
        return token
    return token[:-1]


def _trigrams(tokens: Iterable[str]) -> set[str]:
    grams: set[str] = set()
    for token in tokens:
        padded = f" {token} "
        grams.update(padded[i : i + 3] for i in range(len(padded) - 2))
    return grams


class LabelIndex:
    """Current phenotype terms indexed by name (and synonyms) for :meth:`suggest`.

    Parameters
    ----------
    ontology
        The shipped ontology: which terms are current, their names and information content.
    release
        An HPO release file whose synonyms are indexed too, for terms the ontology knows as
        current phenotypic abnormalities.
    """

    def __init__(self, ontology: Ontology, release: HpoRelease | None = None) -> None:
        self._ids: list[str] = sorted(ontology.phenotype_terms)
        self._names = [ontology.name(tid) for tid in self._ids]
        self._ic = np.array([ontology.information_content(t) for t in self._ids], dtype=float)
        texts: list[str] = []
        owners: list[int] = []
        normal: list[str] = []
        for number, tid in enumerate(self._ids):
            candidates = [self._names[number]]
            if release is not None:
                candidates.extend(release.synonyms(tid))
            seen: set[str] = set()
            for text in candidates:
                key = normalise_label(text)
                if key and key not in seen:
                    seen.add(key)
                    texts.append(text)
                    owners.append(number)
                    normal.append(key)
        self._texts = texts
        self._owner = owners
        self._exact: dict[str, list[int]] = {}
        for doc, key in enumerate(normal):
            self._exact.setdefault(key, []).append(doc)
        self._tokens = [frozenset(key.split()) for key in normal]
        self._build_tokens()
        self._build_trigrams()

    def __len__(self) -> int:
        """The number of indexed texts (names and distinct synonyms)."""
        return len(self._texts)

    def _build_tokens(self) -> None:
        frequency: dict[str, int] = {}
        for tokens in self._tokens:
            for token in tokens:
                frequency[token] = frequency.get(token, 0) + 1
        n = len(self._tokens)
        self._token_idf = {t: math.log(1.0 + n / df) for t, df in frequency.items()}
        self._unseen_token_idf = math.log(1.0 + n)
        self._token_mass = [sum(self._token_idf[t] for t in tokens) for tokens in self._tokens]

    def _build_trigrams(self) -> None:
        gram_ids: dict[str, int] = {}
        flat_grams: list[int] = []
        flat_docs: list[int] = []
        for doc, tokens in enumerate(self._tokens):
            for gram in _trigrams(tokens):
                flat_grams.append(gram_ids.setdefault(gram, len(gram_ids)))
                flat_docs.append(doc)
        grams = np.array(flat_grams, dtype=np.int64)
        docs = np.array(flat_docs, dtype=np.int64)
        n = len(self._texts)
        df = np.bincount(grams, minlength=len(gram_ids))
        idf = np.log1p(n / np.maximum(df, 1))
        self._gram_ids = gram_ids
        self._gram_weight = idf**2
        self._unseen_gram_weight = math.log1p(n) ** 2
        order = np.argsort(grams, kind="stable")
        self._postings = docs[order]
        self._ends = np.cumsum(df)
        self._starts = self._ends - df
        self._doc_norm = np.sqrt(np.bincount(docs, weights=self._gram_weight[grams], minlength=n))

    def suggest(self, label: str, *, limit: int = 5) -> list[Suggestion]:
        """The terms whose name or synonym reads most like ``label``, best first.

        Parameters
        ----------
        label
            A hospital's label for a local code, in any case and punctuation.
        limit
            At most this many suggestions, one per term.

        Returns
        -------
        list[Suggestion]
            Empty when the label has no letters or digits, or shares nothing with any term.
        """
        key = normalise_label(label)
        if not key or limit < 1:
            return []
        tokens = frozenset(key.split())
        docs, cosine = self._by_trigrams(tokens)
        best: dict[int, tuple[float, int]] = {}
        exact = set(self._exact.get(key, ()))
        weights = {t: self._token_idf.get(t, self._unseen_token_idf) for t in tokens}
        mass = sum(weights.values())
        for doc, gram_score in zip(docs.tolist(), cosine.tolist(), strict=True):
            if doc in exact:
                score = 1.0
            else:
                shared = sum(weights[t] for t in tokens & self._tokens[doc])
                jaccard = shared / (mass + self._token_mass[doc] - shared)
                score = min(_BEST_INEXACT, _GRAM_WEIGHT * gram_score + _TOKEN_WEIGHT * jaccard)
            score = round(score, 6)
            term = self._owner[doc]
            known = best.get(term)
            if known is None or (score, -doc) > (known[0], -known[1]):
                best[term] = (score, doc)
        ranked = sorted(
            (t for t, (score, _) in best.items() if score > 0.0),
            key=lambda t: (-best[t][0], -self._ic[t], self._ids[t]),
        )
        return [
            Suggestion(self._ids[t], self._names[t], self._texts[best[t][1]], best[t][0])
            for t in ranked[:limit]
        ]

    def _by_trigrams(
        self, tokens: frozenset[str]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Texts sharing a trigram with the tokens, with their cosine; the best few hundred."""
        grams = sorted(_trigrams(tokens))
        known = [self._gram_ids[g] for g in grams if g in self._gram_ids]
        empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        if not known:
            return empty
        ids = np.array(known, dtype=np.int64)
        query_norm = math.sqrt(
            float(self._gram_weight[ids].sum())
            + (len(grams) - len(known)) * self._unseen_gram_weight
        )
        starts, ends = self._starts[ids], self._ends[ids]
        postings = np.concatenate([self._postings[s:e] for s, e in zip(starts, ends, strict=True)])
        weights = np.repeat(self._gram_weight[ids], ends - starts)
        dots = np.bincount(postings, weights=weights, minlength=len(self._texts))
        docs = np.flatnonzero(dots)
        cosine = dots[docs] / (query_norm * self._doc_norm[docs])
        if len(docs) > _POOL:
            top = np.argpartition(-cosine, _POOL)[:_POOL]
            docs, cosine = docs[top], cosine[top]
        return docs.astype(np.int64), np.clip(cosine, 0.0, 1.0)
