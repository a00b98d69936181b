"""A plain Phenomizer ranking: best-match-average Resnik similarity, one term pair at a time.

This is the obviously correct version of :mod:`alliance.models.knowledge`, written to be read,
not to be fast: explicit ancestor sets, a loop over every (patient term, disease term) pair,
the MICA as the largest IC among common ancestors (Köhler et al. 2009, "Clinical diagnostics in
human genetics with semantic similarity searches in ontologies", Am J Hum Genet 85:457-464).
``tests/unit/test_knowledge.py`` checks that the sparse ranker gives the same scores, and
``bench/diagnosis_quality.py`` ranks real cases with it (the "Phenomizer" row: symmetric, no
frequencies, no exclusion penalty).

A query over the 7,192-disease catalogue takes seconds, against milliseconds for the sparse ranker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from alliance.data.ontology import Disease, Ontology

__all__ = ["PhenomizerReference"]


class PhenomizerReference:
    """Symmetric (or weighted) BMA-Resnik scores of a patient against given diseases.

    Parameters
    ----------
    ontology
        The HPO release (ancestor sets and information content).
    frequency
        ``frequency(disease, term)``: the weight of an annotated term in the disease→patient
        direction; ``None`` weighs every annotation 1.
    patient_weight
        Weight of the patient→disease direction (1/2: Köhler's symmetric average).
    exclusion_weight
        Cost per IC unit of an excluded term that lies in the disease's propagated profile,
        times the largest frequency of the disease's annotations at or below it.
    """

    def __init__(
        self,
        ontology: Ontology,
        *,
        frequency: Callable[[Disease, str], float] | None = None,
        patient_weight: float = 0.5,
        exclusion_weight: float = 0.0,
    ) -> None:
        self.ontology = ontology
        self.frequency = frequency or (lambda disease, term: 1.0)
        self.patient_weight = patient_weight
        self.exclusion_weight = exclusion_weight
        self._resnik: dict[tuple[str, str], float] = {}

    def resnik(self, a: str, b: str) -> float:
        """IC of the most informative common ancestor of two terms (remembered per pair)."""
        key = (a, b)
        if key not in self._resnik:
            common = self.ontology.ancestors(a) & self.ontology.ancestors(b)
            self._resnik[key] = max(self.ontology.information_content(t) for t in common)
        return self._resnik[key]

    def score(self, observed: Sequence[str], excluded: Sequence[str], disease: Disease) -> float:
        """The score of one disease for a patient (terms already resolved, phenotypes only)."""
        annotated = disease.phenotypes
        total = 0.0
        if observed:
            patient_to_disease = sum(
                max(self.resnik(s, t) for t in annotated) for s in observed
            ) / len(observed)
            weights = [self.frequency(disease, t) for t in annotated]
            disease_to_patient = sum(
                w * max(self.resnik(s, t) for s in observed)
                for w, t in zip(weights, annotated, strict=True)
            ) / sum(weights)
            alpha = self.patient_weight
            total = alpha * patient_to_disease + (1 - alpha) * disease_to_patient
        if excluded and self.exclusion_weight:
            cost = 0.0
            for e in excluded:
                below = [
                    self.frequency(disease, t) for t in annotated if e in self.ontology.ancestors(t)
                ]
                if below:
                    cost += max(below) * self.ontology.information_content(e)
            total -= self.exclusion_weight * cost / len(excluded)
        return total

    def scores(
        self, observed: Sequence[str], excluded: Sequence[str], diseases: Sequence[Disease]
    ) -> list[float]:
        """:meth:`score` for each disease, in order."""
        return [self.score(observed, excluded, d) for d in diseases]
