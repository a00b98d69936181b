"""Study models by name: what the coordinator and every site build from a study's ``[model]``.

A deployed study names its model (``kind = "phenotype-ranker"``) and options. The coordinator
builds it once for the initial weights; each site builds the same architecture to train, and
reads its own cases into the model's dataset. Both sides seed torch with the study's seed before
building, so every copy starts identical, as in the simulation.

Kinds register in :data:`MODEL_KINDS` (``register`` a factory to add one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
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

__all__ = ["MODEL_KINDS", "LoadedCases", "PhenotypeRankerKind", "StudyModel", "make_study_model"]

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


class PhenotypeRankerKind:
    """The rare-disease ranker (``kind = "phenotype-ranker"``), options ``dim``, ``sources``,
    ``min_phenotypes``: built from the shipped HPO release and its disease annotations."""

    kind = "phenotype-ranker"

    def __init__(
        self, *, dim: int = 32, sources: tuple[str, ...] = ("OMIM",), min_phenotypes: int = 3
    ) -> None:
        try:
            chosen = tuple(DiseaseSource(s) for s in sources)
        except ValueError:
            known = ", ".join(s.value for s in DiseaseSource)
            raise ConfigError(f"[model] sources must be among {known}, got {sources}") from None
        if dim < 1 or min_phenotypes < 1:
            raise ConfigError("[model] dim and min_phenotypes must be >= 1")
        self.dim = dim
        ontology = load_ontology()
        self.features = PhenotypeFeatures(
            ontology, ontology.catalogue(chosen, min_phenotypes=min_phenotypes)
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

    def collate(self, items: list[Any]) -> Any:
        """Sparse batches of encoded cases."""
        return self.features.collate(items)


MODEL_KINDS: dict[str, Callable[..., StudyModel]] = {"phenotype-ranker": PhenotypeRankerKind}


def make_study_model(options: Mapping[str, Any]) -> StudyModel:
    """Build the model kind a study's ``[model]`` table names, with its options.

    Raises
    ------
    ConfigError
        For an unknown kind or option.
    """
    opts = dict(options)
    kind = opts.pop("kind", "phenotype-ranker")
    factory = MODEL_KINDS.get(kind)
    if factory is None:
        raise ConfigError(f"[model] kind {kind!r} is unknown; choose one of {sorted(MODEL_KINDS)}")
    if "sources" in opts:
        opts["sources"] = tuple(opts["sources"])
    try:
        return factory(**opts)
    except TypeError as exc:
        raise ConfigError(f"[model] {kind}: {exc}") from None
