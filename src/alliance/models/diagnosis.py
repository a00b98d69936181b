"""A ranked differential diagnosis for one patient, with the phenotypes behind each candidate.

Scores are the ranker's softmax probabilities over the whole catalogue. A candidate's
*supporting* phenotypes are the patient's observed terms that lie in the disease's public
profile (the term or a more specific one is annotated to the disease), most informative first;
its *against* list holds observed terms outside the profile and excluded terms inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from alliance.core.errors import DataError
from alliance.data.cases import Case
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import CaseDataset, PhenotypeRanker

__all__ = ["Candidate", "diagnose"]


@dataclass(frozen=True)
class Candidate:
    """One entry of a differential diagnosis."""

    rank: int
    disease_id: str
    name: str
    probability: float
    supporting: tuple[str, ...]
    against: tuple[str, ...]


def diagnose(
    model: PhenotypeRanker,
    features: PhenotypeFeatures,
    observed: Sequence[str],
    excluded: Sequence[str] = (),
    *,
    top: int = 10,
) -> list[Candidate]:
    """Rank every catalogue disease for one patient.

    Parameters
    ----------
    model, features
        A trained ranker and its feature space.
    observed, excluded
        HPO ids (resolved to current terms; unknown ids raise :class:`DataError`).
    top
        How many candidates to return.
    """
    onto = features.ontology
    try:
        obs = tuple(dict.fromkeys(onto.resolve(t) for t in observed))
        exc = tuple(dict.fromkeys(onto.resolve(t) for t in excluded))
    except DataError as exc_:
        raise DataError(f"patient phenotypes: {exc_}") from None
    if not obs:
        raise DataError("patient phenotypes: give at least one observed HPO term")
    dataset = CaseDataset(
        features.encode([Case(id="patient", observed=obs, excluded=exc)], labelled=False)
    )
    (x_obs, x_exc), _ = features.collate([dataset[0]])
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(x_obs, x_exc), dim=1)[0].numpy()
    order = np.argsort(-probs, kind="stable")[:top]
    ic = {t: onto.information_content(t) for t in (*obs, *exc)}
    out: list[Candidate] = []
    for rank, d in enumerate(order, start=1):
        disease = features.catalogue.diseases[int(d)]
        profile = onto.propagate(disease.phenotypes)
        support = sorted((t for t in obs if t in profile), key=lambda t: -ic[t])
        against = [t for t in obs if t not in profile] + [t for t in exc if t in profile]
        out.append(
            Candidate(
                rank, disease.id, disease.name, float(probs[d]), tuple(support), tuple(against)
            )
        )
    return out
