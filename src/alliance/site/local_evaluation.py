"""How well a model diagnoses a hospital's own patients, read as the hospital's agent reads them.

``alliance evaluate --config site.toml`` reads the cases named by ``[data]`` through the very
path the site agent trains on (:func:`~alliance.data.loading.read_source`: the hospital's
adapters, its ``[data.table]`` layout and encoding, its mapping table and HPO release file), so a
hospital's CSV with local or Chinese codes is read here exactly as in a study.

Which cases (:class:`CaseChoice`):

``held-out`` (the default)
    the ``[data] test`` cases, on which the hospital evaluates each round's model and the final
    model of a study. The model was trained on the hospital's training cases, so only the
    held-out ones say how it would do on the next patient, and the figures match the card's.
``all``
    training and held-out cases together; the training cases flatter a model the hospital
    helped train, which the output says.

Cases the model cannot be judged on are refused by the admission rules of
:mod:`~alliance.data.admission` (no diagnosis, a diagnosis outside the model's catalogue, no
usable phenotype, a malformed record); :class:`LocalEvaluation` counts them by reason.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Any

from alliance.core.errors import ConfigError
from alliance.data.cases import Case
from alliance.data.loading import DataConfig, DataSource, LoadIssue, read_source
from alliance.evaluation.metrics import TopK, top_k
from alliance.evaluation.ranking import rank_dataset
from alliance.models.ranker import CaseDataset
from alliance.store.modelfile import LoadedModel

__all__ = ["CaseChoice", "LocalEvaluation", "evaluate_local"]


class CaseChoice(enum.Enum):
    """Which of the hospital's configured cases a model is evaluated on."""

    HELD_OUT = "held-out"
    ALL = "all"


@dataclass(frozen=True)
class LocalEvaluation:
    """Top-k accuracy on a hospital's own cases, and the cases that could not be used.

    Attributes
    ----------
    choice
        Which cases were used.
    sources
        Where they were read from.
    scores
        Top-1/3/10 accuracy and the number of cases ranked.
    refused
        Records not used, by reason (the issue kind: ``"no diagnosis"``, ``"unmapped
        diagnosis"`` ...).
    issues
        Every issue met while reading, refusing or not, in file order.
    """

    choice: CaseChoice
    sources: tuple[str, ...]
    scores: TopK
    refused: dict[str, int]
    issues: tuple[LoadIssue, ...]

    @property
    def flattering(self) -> bool:
        """Whether the cases include training cases (figures above what a new patient gets)."""
        return self.choice is CaseChoice.ALL

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: cases used, sources, top-k, refusals by reason and every issue."""
        return {
            "cases": self.choice.value,
            "sources": list(self.sources),
            **self.scores.as_dict(),
            "rejected": sum(self.refused.values()),
            "rejected_by_reason": dict(self.refused),
            "issues": [str(issue) for issue in self.issues],
        }


def evaluate_local(
    data: DataConfig,
    loaded: LoadedModel,
    *,
    cases: CaseChoice = CaseChoice.HELD_OUT,
    where: str = "site.toml",
) -> LocalEvaluation:
    """Rank every usable case of the hospital's ``[data]`` with ``loaded`` and score the ranks.

    Parameters
    ----------
    data
        The hospital's ``[data]`` table.
    loaded
        The model; its catalogue decides which diagnoses can be judged.
    cases
        Held-out cases (``[data] test``) or all of them.
    where
        The config file ``data`` was read from, for messages.

    Raises
    ------
    ConfigError
        Held-out cases were asked for and ``[data] test`` names none.
    DataError
        A source cannot be read or none of its records can be used (as for the site agent).
    """
    if cases is CaseChoice.HELD_OUT and data.test is None:
        raise ConfigError(
            f"{where}: [data] test names no held-out cases; set it to the hospital's held-out "
            "cases, or pass --on all to evaluate on every case, including those the model "
            "was trained on"
        )
    chosen: list[DataSource] = [
        s
        for s in ((data.train, data.test) if cases is CaseChoice.ALL else (data.test,))
        if s is not None
    ]
    features = loaded.features
    ranked: list[Case] = []
    issues: list[LoadIssue] = []
    for source in chosen:
        result = read_source(source, ontology=features.ontology, catalogue=features.catalogue)
        ranked.extend(result.cases)
        issues.extend(result.issues)
    dataset = CaseDataset(features.encode(ranked))
    scores = top_k(rank_dataset(loaded.model, dataset, collate_fn=features.collate))
    refused = Counter(issue.kind.value for issue in issues if issue.rejected)
    return LocalEvaluation(
        cases,
        tuple(s.location for s in chosen),
        scores,
        dict(refused.most_common()),
        tuple(issues),
    )
