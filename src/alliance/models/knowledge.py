"""The knowledge ranker: Phenomizer-style semantic similarity of a patient to every disease.

For a patient with observed terms ``S`` and excluded terms ``E``, and a disease ``d`` with
annotated terms ``T_d`` (frequencies ``f_dt`` where the annotation file gives them), with
``IC`` the information content and ``A(x)`` the ancestors of ``x`` (itself included)::

    resnik(s, t) = max IC(a) over a in A(s) ∩ A(t)        (the IC of the MICA)
    patient→disease(d) = mean over s in S of   max over t in T_d of resnik(s, t)
    disease→patient(d) = Σ_t f_dt · max_s resnik(s, t)  /  Σ_t f_dt
    score(d) = α · patient→disease + (1 − α) · disease→patient
               −  w_exc · mean over e in E of f_d(e) · IC(e)

At ``α = 1/2`` and without frequencies or exclusions this is the symmetric best-match average of
Köhler et al. (2009), "Clinical diagnostics in human genetics with semantic similarity searches
in ontologies". ``α`` above 1/2 leans toward the patient→disease direction: a patient shows a few
of a disease's many annotated findings, and the symmetric average punishes a well-described
disease for the findings the patient has not (yet) been examined for. Two additions: the
disease→patient direction weighs each annotated finding by how often the disease shows it, and
an excluded term can cost its IC times ``f_d(e)``, the largest frequency of the disease's
annotations at or below ``e`` (0 when ``e`` is not in the disease's propagated profile); that
penalty is off by default, measured harmful on published cases (see ``exclusion_weight``).

Nothing loops over term pairs. Two identities make both directions sparse:

- ``max_t resnik(s, t) = max IC(a) over a in A(s) ∩ P_d``, with ``P_d`` the disease's
  propagated profile: one pass over the profile columns of the patient term's ancestors;
- ``max_s resnik(s, t) = g(t) = max IC(a) over a in A(t) ∩ P_S``, with ``P_S`` the patient's
  propagated terms: ``g`` is filled over the vocabulary from the descendants of ``P_S``, then one
  sparse product with the annotation-weight matrix gives every disease at once.

A query over the whole catalogue takes a few milliseconds (``bench/diagnosis_quality.py``); the
plain double loop of ``bench/phenomizer_reference.py`` computes the same scores (a test checks
it).
Scores are in IC units (nats); :func:`probabilities` turns them into a distribution over the
catalogue (a softmax at a temperature), usable as a prior.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import sparse

from alliance.core.errors import DataError
from alliance.data.cases import Case
from alliance.data.frequencies import AnnotationFrequencies
from alliance.data.ontology import DiseaseCatalogue, Ontology

__all__ = ["KnowledgeRanker", "probabilities"]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

#: Frequencies are floored here so that an annotation marked "excluded" (0 %) cannot empty a
#: disease's weights; it then barely counts.
_MIN_FREQUENCY = 0.01


class KnowledgeRanker:
    """Scores every catalogue disease for a patient from public knowledge alone.

    Parameters
    ----------
    ontology, catalogue
        The HPO release and the candidate diseases.
    frequencies
        Annotation frequencies (:func:`alliance.data.frequencies.find_frequencies`); ``None``
        weighs every annotation alike.
    unknown_frequency
        Weight of an annotation the frequency file says nothing about.
    exclusion_weight
        ``w_exc``: how much an excluded term in a disease's profile costs, per IC unit. Off by
        default: in published cases an excluded term is mostly a feature of the true disease's
        spectrum that this patient lacks (authors list what they looked for), so a penalty
        hurts (on the phenopacket-store cases, top-1 44.3 % without it, 25.0 % at 0.5).
    patient_weight
        ``α``, the weight of the patient→disease direction (1/2: symmetric). The default was
        chosen on textbook patients (public annotations only, no patient data): top-1 82 % at
        1/2, 94 % at 0.7, 95 % at 0.8 and 0.9, 80 % at 1 (``bench/diagnosis_quality.py``).
    """

    def __init__(
        self,
        ontology: Ontology,
        catalogue: DiseaseCatalogue,
        *,
        frequencies: AnnotationFrequencies | None = None,
        unknown_frequency: float = 1.0,
        exclusion_weight: float = 0.0,
        patient_weight: float = 0.8,
    ) -> None:
        if not 0 <= patient_weight <= 1:
            raise ValueError(f"patient_weight must be in [0, 1], not {patient_weight}")
        if not 0 < unknown_frequency <= 1:
            raise ValueError(f"unknown_frequency must be in (0, 1], not {unknown_frequency}")
        if exclusion_weight < 0:
            raise ValueError(f"exclusion_weight must be >= 0, not {exclusion_weight}")
        self.ontology = ontology
        self.catalogue = catalogue
        self.exclusion_weight = exclusion_weight
        self.patient_weight = patient_weight
        self.uses_frequencies = frequencies is not None
        propagated = [ontology.propagate(d.phenotypes) for d in catalogue.diseases]
        self.terms: tuple[str, ...] = tuple(sorted(set().union(*propagated)))
        self.index = {t: i for i, t in enumerate(self.terms)}
        self.ic: Floats = np.array([ontology.information_content(t) for t in self.terms])
        n_d, n_t = len(catalogue), len(self.terms)
        # Ancestor matrix (term, ancestor) over the vocabulary; its CSC columns list descendants.
        anc_rows, anc_cols = _pairs([self._ancestor_idx(t) for t in self.terms], shape_rows=n_t)
        self._descendants = sparse.csc_matrix(
            (np.ones(len(anc_rows)), (anc_rows, anc_cols)), shape=(n_t, n_t)
        )
        prof_rows, prof_cols = _pairs(
            [np.array([self.index[t] for t in p], dtype=np.int64) for p in propagated],
            shape_rows=n_d,
        )
        self._profiles = sparse.csc_matrix(
            (np.ones(len(prof_rows)), (prof_rows, prof_cols)), shape=(n_d, n_t)
        )
        rows, cols, weights = self._annotation_weights(frequencies, unknown_frequency)
        self._weights = sparse.csr_matrix((weights, (rows, cols)), shape=(n_d, n_t))
        self._weight_sums: Floats = np.asarray(self._weights.sum(axis=1)).ravel()
        self._exclusion = self._propagated_frequency(rows, cols, weights)

    @property
    def disease_ids(self) -> tuple[str, ...]:
        """Disease ids in score order (the catalogue's label order)."""
        return self.catalogue.ids

    def scores(self, observed: Sequence[str], excluded: Sequence[str] = ()) -> Floats:
        """Scores of every catalogue disease, shape ``(n_diseases,)``.

        Terms outside the phenotypic-abnormality branch are ignored; a patient with no observed
        phenotypic abnormality scores 0 everywhere (before any exclusion penalty).

        Raises
        ------
        DataError
            If a term is not a current HPO id (see :meth:`Ontology.resolve`).
        """
        obs = self._resolve(observed)
        exc = self._resolve(excluded)
        score = np.zeros(len(self.catalogue))
        if obs:
            alpha = self.patient_weight
            score += alpha * self._patient_to_disease(obs)
            score += (1 - alpha) * self._disease_to_patient(obs)
        return score - self._penalty(exc)

    def score_cases(self, cases: Sequence[Case]) -> Floats:
        """Scores for many cases, shape ``(n_cases, n_diseases)``."""
        out = np.empty((len(cases), len(self.catalogue)))
        for i, case in enumerate(cases):
            out[i] = self.scores(case.observed, case.excluded)
        return out

    # --- the two directions and the penalty --------------------------------------------------

    def _patient_to_disease(self, obs: Sequence[str]) -> Floats:
        total = np.zeros(len(self.catalogue))
        prof = self._profiles
        for term in obs:
            anc = self._ancestor_idx(term)
            best = np.zeros(len(self.catalogue))
            starts, ends = prof.indptr[anc], prof.indptr[anc + 1]
            rows = np.concatenate([prof.indices[s:e] for s, e in zip(starts, ends, strict=True)])
            np.maximum.at(best, rows, np.repeat(self.ic[anc], ends - starts))
            total += best
        return total / len(obs)

    def _disease_to_patient(self, obs: Sequence[str]) -> Floats:
        propagated = np.unique(np.concatenate([self._ancestor_idx(t) for t in obs]))
        desc = self._descendants
        starts, ends = desc.indptr[propagated], desc.indptr[propagated + 1]
        rows = np.concatenate([desc.indices[s:e] for s, e in zip(starts, ends, strict=True)])
        best = np.zeros(len(self.terms))
        np.maximum.at(best, rows, np.repeat(self.ic[propagated], ends - starts))
        out: Floats = np.asarray(self._weights @ best).ravel() / self._weight_sums
        return out

    def _penalty(self, exc: Sequence[str]) -> Floats:
        idx = np.array([self.index[t] for t in exc if t in self.index], dtype=np.int64)
        if not exc or self.exclusion_weight == 0 or len(idx) == 0:
            return np.zeros(len(self.catalogue))
        cost = np.asarray(self._exclusion[:, idx] @ self.ic[idx]).ravel()
        out: Floats = self.exclusion_weight * cost / len(exc)
        return out

    # --- building ------------------------------------------------------------------------------

    def _resolve(self, terms: Sequence[str]) -> list[str]:
        out: dict[str, None] = {}
        for term in terms:
            try:
                tid = self.ontology.resolve(term)
            except DataError as exc:
                raise DataError(f"patient phenotypes: {exc}") from None
            if tid in self.ontology.phenotype_terms:
                out[tid] = None
        return list(out)

    def _ancestor_idx(self, term: str) -> Ints:
        return np.array(
            sorted(self.index[a] for a in self.ontology.ancestors(term) if a in self.index),
            dtype=np.int64,
        )

    def _annotation_weights(
        self, frequencies: AnnotationFrequencies | None, unknown: float
    ) -> tuple[Ints, Ints, Floats]:
        rows: list[int] = []
        cols: list[int] = []
        weights: list[float] = []
        for r, disease in enumerate(self.catalogue.diseases):
            for term in disease.phenotypes:
                known = frequencies.get(disease.id, term) if frequencies is not None else None
                rows.append(r)
                cols.append(self.index[term])
                weights.append(unknown if known is None else max(known, _MIN_FREQUENCY))
        return (
            np.array(rows, dtype=np.int64),
            np.array(cols, dtype=np.int64),
            np.array(weights, dtype=np.float64),
        )

    def _propagated_frequency(self, rows: Ints, cols: Ints, weights: Floats) -> sparse.csc_matrix:
        """``f_d(a)``: the largest frequency of ``d``'s annotations at or below each term ``a``."""
        anc = self._descendants.tocsr()  # row t lists the ancestors of t
        counts = np.diff(anc.indptr)[cols]
        up_rows = np.repeat(rows, counts)
        up_cols = np.concatenate([anc.indices[anc.indptr[c] : anc.indptr[c + 1]] for c in cols])
        up_vals = np.repeat(weights, counts)
        # Keep the largest value of each (disease, term): sort by value, the last one wins.
        order = np.lexsort((up_vals, up_cols, up_rows))
        r, c, v = up_rows[order], up_cols[order], up_vals[order]
        last = np.ones(len(r), dtype=bool)
        last[:-1] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
        shape = (len(self.catalogue), len(self.terms))
        return sparse.csc_matrix((v[last], (r[last], c[last])), shape=shape)


def probabilities(scores: Floats, *, temperature: float = 0.25) -> Floats:
    """A softmax of scores over the catalogue (along the last axis) at ``temperature``.

    Lower temperatures concentrate the mass on the best-scoring diseases; calibrating the
    temperature on held-out cases is the caller's choice.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    z = scores / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: Floats = e / e.sum(axis=-1, keepdims=True)
    return out


def _pairs(groups: Sequence[Ints], *, shape_rows: int) -> tuple[Ints, Ints]:
    """Row and column indices of a sparse matrix whose row ``i`` holds ``groups[i]``."""
    if len(groups) != shape_rows:
        raise ValueError("one group per row expected")
    rows = np.repeat(np.arange(shape_rows, dtype=np.int64), [len(g) for g in groups])
    cols = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    return rows, cols.astype(np.int64)
