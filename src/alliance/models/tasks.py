"""Study models by name: what the coordinator and every site build from a study's ``[model]``.

A deployed study names its model (``kind = "phenotype-ranker"``) and options. The coordinator
builds it once for the initial weights; each site builds the same architecture to train, and
reads its own cases into the model's dataset. Both sides seed torch with the study's seed before
building, so every copy starts identical, as in the simulation.

Kinds register in :data:`MODEL_KINDS` (``register`` a factory to add one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from alliance.core.errors import ConfigError
from alliance.data.loading import DataSource, LoadIssue, read_source
from alliance.data.ontology import DiseaseSource, load_ontology
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import CaseDataset, PhenotypeRanker

__all__ = [
    "MAX_PARAMETERS",
    "MODEL_KINDS",
    "LoadedCases",
    "ModelTable",
    "PhenotypeRankerKind",
    "StudyModel",
    "check_model_options",
    "make_study_model",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedCases:
    """A site's cases as the model's dataset, with every issue met while reading them."""

    dataset: Dataset[Any]
    count: int
    issues: tuple[LoadIssue, ...]


class StudyModel(Protocol):
    """What a study's model kind provides."""

    kind: str

    def build(self, seed: int) -> nn.Module:
        """A fresh model; the same seed gives the same weights in every process."""
        ...

    def load(self, source: DataSource | Path) -> LoadedCases:
        """Read a site's cases (a file, a folder or a configured source) into the dataset."""
        ...

    def collate(self, items: list[Any]) -> Any:
        """The batch builder of the model's datasets."""
        ...


#: Most learned parameters a study's model may have: 64 Mi float32 values, 256 MiB, so that the
#: coordinator, every site and every stored update hold it comfortably in memory.
MAX_PARAMETERS = 2**26


class PhenotypeRankerKind:
    """The rare-disease ranker (``kind = "phenotype-ranker"``), built from the shipped HPO release
    and its disease annotations: at most :data:`MAX_PARAMETERS` learned parameters.

    Its options (``dim``, ``sources``, ``min_phenotypes``) are those of
    :class:`alliance.protocol.model_spec.RankerOptions`, which bounds them when the study is
    read; only the parameter count, which needs the catalogue, is checked here.
    """

    kind = "phenotype-ranker"

    def __init__(
        self,
        *,
        dim: int = 32,
        sources: Sequence[str | DiseaseSource] = ("OMIM",),
        min_phenotypes: int = 3,
    ) -> None:
        self.dim = dim
        ontology = load_ontology()
        chosen = tuple(DiseaseSource(s) for s in sources)
        self.features = PhenotypeFeatures(
            ontology, ontology.catalogue(chosen, min_phenotypes=min_phenotypes)
        )
        f = self.features
        #: Batches of encoded cases, also gathered by index in training (the study's collate).
        self.collate = f.collate
        parameters = (3 * f.n_terms + f.n_diseases) * dim + f.n_diseases + 2
        if parameters > MAX_PARAMETERS:
            raise ConfigError(
                f"[model] dim = {dim} gives {parameters:,} parameters with this catalogue, more "
                f"than the {MAX_PARAMETERS:,} a study model may have; use a smaller dim"
            )

    def build(self, seed: int) -> nn.Module:
        """A ranker whose learned parameters are drawn from ``seed``."""
        torch.manual_seed(seed)
        return PhenotypeRanker(self.features, dim=self.dim, seed=seed)

    def load(self, source: DataSource | Path) -> LoadedCases:
        """Any supported format, codes mapped and checked against the study's catalogue."""
        if isinstance(source, Path):
            source = DataSource(str(source))
        result = read_source(
            source, ontology=self.features.ontology, catalogue=self.features.catalogue
        )
        data = CaseDataset(self.features.encode(result.cases))
        return LoadedCases(data, len(result.cases), result.issues)


MODEL_KINDS: dict[str, Callable[..., StudyModel]] = {"phenotype-ranker": PhenotypeRankerKind}


class ModelTable(Protocol):
    """A study's validated model (:class:`alliance.protocol.model_spec.ModelSpec`)."""

    @property
    def kind(self) -> str:
        """The kind's registered name."""
        ...

    def to_table(self) -> dict[str, Any]:
        """``kind`` and the options, as the ``[model]`` table writes them."""
        ...


def check_model_options(options: Mapping[str, Any]) -> None:
    """Check that this registry builds the kind a study's ``[model]`` table names.

    The options themselves are checked when the study is read
    (:class:`alliance.protocol.model_spec.ModelSpec`).

    Raises
    ------
    ConfigError
        For a kind :data:`MODEL_KINDS` cannot build.
    """
    kind = options.get("kind", "phenotype-ranker")
    if not isinstance(kind, str) or kind not in MODEL_KINDS:
        raise ConfigError(f"[model] kind {kind!r} is unknown; choose one of {sorted(MODEL_KINDS)}")


def make_study_model(model: ModelTable | Mapping[str, Any]) -> StudyModel:
    """Build the model kind a study names, with its options.

    Parameters
    ----------
    model
        The study's :class:`~alliance.protocol.model_spec.ModelSpec` (its options checked when
        the study was read), or its ``[model]`` table.

    Raises
    ------
    ConfigError
        For a kind this registry cannot build or an option it does not take, or a model larger
        than :data:`MAX_PARAMETERS`.
    """
    opts = dict(model) if isinstance(model, Mapping) else model.to_table()
    check_model_options(opts)
    kind = opts.pop("kind", "phenotype-ranker")
    try:
        return MODEL_KINDS[kind](**opts)
    except TypeError as exc:
        raise ConfigError(f"[model] {kind}: {exc}") from None
