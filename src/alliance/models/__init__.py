"""Models and the one local training loop.

- :mod:`~alliance.models.features`: phenotype features from public knowledge;
- :mod:`~alliance.models.ranker`: the rare-disease ranker (knowledge prior + learned parameters);
- :mod:`~alliance.models.knowledge`: the knowledge ranker (Phenomizer-style BMA-Resnik, sparse);
- :mod:`~alliance.models.diagnosis`: a ranked differential diagnosis for one patient;
- :mod:`~alliance.models.training`: local training for any PyTorch module;
- :mod:`~alliance.models.steps`: the sites' training and evaluation hooks.
"""

from alliance.models.diagnosis import Candidate, diagnose
from alliance.models.features import EncodedCases, PhenotypeFeatures
from alliance.models.knowledge import KnowledgeRanker
from alliance.models.ranker import CaseDataset, PhenotypeRanker
from alliance.models.steps import ClassifierStep, EvalStep, LossStep, StepSettings, TrainStep
from alliance.models.training import (
    LocalResult,
    Optimiser,
    get_weights,
    set_weights,
    train_locally,
)

__all__ = [
    "Candidate",
    "CaseDataset",
    "ClassifierStep",
    "EncodedCases",
    "EvalStep",
    "KnowledgeRanker",
    "LocalResult",
    "LossStep",
    "Optimiser",
    "PhenotypeFeatures",
    "PhenotypeRanker",
    "StepSettings",
    "TrainStep",
    "diagnose",
    "get_weights",
    "set_weights",
    "train_locally",
]
