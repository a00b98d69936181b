"""Candidate HPO terms for a hospital's local label, found by label similarity.

``alliance data map`` lists the local codes a hospital has not mapped yet, each with the HPO
terms whose name, synonym or official Chinese label reads most like the code's label
(``Krampfanfälle`` will not work; ``Seizures``, ``microcefaly`` and ``肌张力低下`` will). A
person still chooses: a suggestion is a hint, never a mapping.

:class:`LabelIndex` indexes every current phenotypic-abnormality term of the ontology by its
name, by its synonyms when an :class:`~alliance.data.hpo_release.HpoRelease` is given, and by
its official Chinese label (:func:`~alliance.data.chinese.chinese_labels`, shipped).

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

A label with Chinese characters is compared with the Chinese labels instead (its Latin words,
if any, with the English texts as above, each term keeping its better score): Chinese has no
spaces to find words by, so a text is read as its *characters and character pairs*, weighted by
IDF as the trigrams are and compared by cosine, after :func:`~alliance.data.polarity.chinese_key`
has written every word for "decreased" (低下, 减退, 降低 ...) as one mark and every word for
"increased" as another: 肌张力低下, as hospitals write it, then reads exactly as the official
肌张力减退 (HP:0001252, hypotonia) and scores 0.99; an exact match of the normalised texts scores
1.0.

A term whose label differs from the query by an antonym (increased/decreased, hyper/hypo,
增高/降低 ...: :func:`~alliance.data.polarity.opposite`) keeps only a quarter of its score: it
is never a strong candidate ("Decreased body weight" does not propose "Increased body weight").

A label with nothing but punctuation, or in a script the index does not hold (Cyrillic, for
instance), shares no gram with any text and gets no suggestion.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from alliance.data.chinese import chinese_labels, normalise_chinese
from alliance.data.hpo_release import HpoRelease
from alliance.data.ontology import Ontology
from alliance.data.polarity import chinese_key, has_han, opposite

__all__ = ["LabelIndex", "Suggestion", "normalise_label"]

_NON_WORD = re.compile(r"[\W_]+")
_HAN_OR_MARK = re.compile(r"[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff↑↓0-9]")
_GRAM_WEIGHT = 0.6
_TOKEN_WEIGHT = 0.4
_BEST_INEXACT = 0.99
# What a term whose label says the opposite of the query keeps of its score.
_OPPOSITE_FACTOR = 0.25
# Texts scored in full per query: the best by gram cosine, at least this many.
_POOL = 200

# The best score of each term so far: term number -> (score, order of the text, text).
_Best = dict[int, tuple[float, int, str]]


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


def _han_grams(key: str) -> set[str]:
    """Characters and pairs of neighbouring characters of a :func:`chinese_key` text."""
    return set(key) | {key[i : i + 2] for i in range(len(key) - 1)}


class _Grams:
    """Texts as sets of grams weighted by IDF², searched by cosine through an inverted index."""

    def __init__(self, texts: list[set[str]]) -> None:
        gram_ids: dict[str, int] = {}
        flat_grams: list[int] = []
        flat_docs: list[int] = []
        for doc, grams in enumerate(texts):
            for gram in sorted(grams):
                flat_grams.append(gram_ids.setdefault(gram, len(gram_ids)))
                flat_docs.append(doc)
        grams_array = np.array(flat_grams, dtype=np.int64)
        docs = np.array(flat_docs, dtype=np.int64)
        n = len(texts)
        df = np.bincount(grams_array, minlength=len(gram_ids))
        idf = np.log1p(n / np.maximum(df, 1))
        self._n = n
        self._ids = gram_ids
        self._weight = idf**2
        self._unseen_weight = math.log1p(n) ** 2
        order = np.argsort(grams_array, kind="stable")
        self._postings = docs[order]
        self._ends = np.cumsum(df)
        self._starts = self._ends - df
        weights = self._weight[grams_array]
        self._norm = np.sqrt(np.bincount(docs, weights=weights, minlength=n))

    def search(self, grams: set[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Texts sharing a gram with ``grams``, with their cosine; the best few hundred."""
        known = [self._ids[g] for g in sorted(grams) if g in self._ids]
        if not known:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        ids = np.array(known, dtype=np.int64)
        query_norm = math.sqrt(
            float(self._weight[ids].sum()) + (len(grams) - len(known)) * self._unseen_weight
        )
        starts, ends = self._starts[ids], self._ends[ids]
        postings = np.concatenate([self._postings[s:e] for s, e in zip(starts, ends, strict=True)])
        weights = np.repeat(self._weight[ids], ends - starts)
        dots = np.bincount(postings, weights=weights, minlength=self._n)
        docs = np.flatnonzero(dots)
        cosine = dots[docs] / (query_norm * self._norm[docs])
        if len(docs) > _POOL:
            top = np.argpartition(-cosine, _POOL)[:_POOL]
            docs, cosine = docs[top], cosine[top]
        return docs.astype(np.int64), np.clip(cosine, 0.0, 1.0)


class LabelIndex:
    """Current phenotype terms indexed by name, synonyms and Chinese label for :meth:`suggest`.

    Parameters
    ----------
    ontology
        The shipped ontology: which terms are current, their names and information content.
    release
        An HPO release file whose synonyms are indexed too, for terms the ontology knows as
        current phenotypic abnormalities.
    chinese
        Chinese labels by HPO id; by default the official ones shipped with the package
        (:func:`~alliance.data.chinese.chinese_labels`). ``{}`` indexes none.
    """

    def __init__(
        self,
        ontology: Ontology,
        release: HpoRelease | None = None,
        *,
        chinese: Mapping[str, str] | None = None,
    ) -> None:
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
        self._grams = _Grams([_trigrams(tokens) for tokens in self._tokens])
        self._build_chinese(chinese_labels() if chinese is None else chinese)

    def __len__(self) -> int:
        """The number of indexed texts (names, distinct synonyms and Chinese labels)."""
        return len(self._texts) + len(self._zh_texts)

    def _build_tokens(self) -> None:
        frequency: dict[str, int] = {}
        for tokens in self._tokens:
            for token in tokens:
                frequency[token] = frequency.get(token, 0) + 1
        n = len(self._tokens)
        self._token_idf = {t: math.log(1.0 + n / df) for t, df in frequency.items()}
        self._unseen_token_idf = math.log(1.0 + n)
        self._token_mass = [sum(self._token_idf[t] for t in tokens) for tokens in self._tokens]

    def _build_chinese(self, labels: Mapping[str, str]) -> None:
        self._zh_texts: list[str] = []
        self._zh_owner: list[int] = []
        self._zh_keys: list[str] = []
        self._zh_exact: dict[str, list[int]] = {}
        for number, tid in enumerate(self._ids):
            label = labels.get(tid, "")
            key = _HAN_OR_MARK.sub("", chinese_key(label))
            if not key:
                continue
            self._zh_exact.setdefault(normalise_chinese(label), []).append(len(self._zh_texts))
            self._zh_texts.append(label)
            self._zh_owner.append(number)
            self._zh_keys.append(key)
        self._zh_grams = _Grams([_han_grams(key) for key in self._zh_keys])

    def suggest(self, label: str, *, limit: int = 5) -> list[Suggestion]:
        """The terms whose name, synonym or Chinese label reads most like ``label``, best first.

        Parameters
        ----------
        label
            A hospital's label for a local code, in any case and punctuation, in English,
            Chinese or both.
        limit
            At most this many suggestions, one per term.

        Returns
        -------
        list[Suggestion]
            Empty when the label has no letters or digits, or shares nothing with any term.
        """
        if limit < 1:
            return []
        best: _Best = {}
        if has_han(label):
            self._chinese(label, best)
            label = "".join(" " if has_han(ch) else ch for ch in label)  # its Latin words
        self._english(normalise_label(label), best)
        ranked = sorted(
            (t for t, (score, _, _) in best.items() if score > 0.0),
            key=lambda t: (-best[t][0], -self._ic[t], self._ids[t]),
        )
        return [
            Suggestion(self._ids[t], self._names[t], best[t][2], best[t][0]) for t in ranked[:limit]
        ]

    def _english(self, key: str, best: _Best) -> None:
        if not key:
            return
        tokens = frozenset(key.split())
        docs, cosine = self._grams.search(_trigrams(tokens))
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
                if opposite(tokens, self._tokens[doc]):
                    score *= _OPPOSITE_FACTOR
            _keep(best, self._owner[doc], round(score, 6), doc, self._texts[doc])

    def _chinese(self, label: str, best: _Best) -> None:
        key = _HAN_OR_MARK.sub("", chinese_key(label))
        if not key:
            return
        docs, cosine = self._zh_grams.search(_han_grams(key))
        exact = set(self._zh_exact.get(normalise_chinese(label), ()))
        for doc, gram_score in zip(docs.tolist(), cosine.tolist(), strict=True):
            if doc in exact:
                score = 1.0
            else:
                score = min(_BEST_INEXACT, gram_score)
                if opposite(key, self._zh_keys[doc]):
                    score *= _OPPOSITE_FACTOR
            order = len(self._texts) + doc  # after every English text, in a tie
            _keep(best, self._zh_owner[doc], round(score, 6), order, self._zh_texts[doc])


def _keep(best: _Best, term: int, score: float, order: int, text: str) -> None:
    """Keep ``text`` as the term's match if it scores higher (the lower ``order`` in a tie)."""
    known = best.get(term)
    if known is None or (score, -order) > (known[0], -known[1]):
        best[term] = (score, order, text)
