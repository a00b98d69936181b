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

__all__ = [
    "MAX_DIM",
    "MAX_MIN_PHENOTYPES",
    "MAX_PARAMETERS",
    "MODEL_KINDS",
    "LoadedCases",
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
#: Widest ranker embedding: with the shipped HPO release and every disease source (about 12,500
#: terms and 12,800 diseases) a width of 1024 stays under :data:`MAX_PARAMETERS`.
MAX_DIM = 1024
#: ``min_phenotypes`` above this leaves no disease of the shipped catalogue.
MAX_MIN_PHENOTYPES = 1000


class PhenotypeRankerKind:
    """The rare-disease ranker (``kind = "phenotype-ranker"``), options ``dim`` (1 to
    :data:`MAX_DIM`), ``sources`` (a list among OMIM and ORPHA, default ``["OMIM"]``) and
    ``min_phenotypes`` (1 to :data:`MAX_MIN_PHENOTYPES`): built from the shipped HPO release and
    its disease annotations; at most :data:`MAX_PARAMETERS` learned parameters."""

    kind = "phenotype-ranker"

    def __init__(
        self, *, dim: int = 32, sources: tuple[str, ...] = ("OMIM",), min_phenotypes: int = 3
    ) -> None:
        chosen = self.check(dim=dim, sources=sources, min_phenotypes=min_phenotypes)
        self.dim = dim
        ontology = load_ontology()
        self.features = PhenotypeFeatures(
            ontology, ontology.catalogue(chosen, min_phenotypes=min_phenotypes)
        )
        f = self.features
        parameters = (3 * f.n_terms + f.n_diseases) * dim + f.n_diseases + 2
        if parameters > MAX_PARAMETERS:
            raise ConfigError(
                f"[model] dim = {dim} gives {parameters:,} parameters with this catalogue, more "
                f"than the {MAX_PARAMETERS:,} a study model may have; use a smaller dim"
            )

    @staticmethod
    def check(
        *, dim: Any = 32, sources: Any = ("OMIM",), min_phenotypes: Any = 3
    ) -> tuple[DiseaseSource, ...]:
        """Validate the options without building anything; returns the disease sources.

        Raises
        ------
        ConfigError
            Naming the option and what it accepts.
        """
        for key, value, top in (
            ("dim", dim, MAX_DIM),
            ("min_phenotypes", min_phenotypes, MAX_MIN_PHENOTYPES),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ConfigError(f"[model] {key} must be an integer in [1, {top}], got {value!r}")
        known = ", ".join(s.value for s in DiseaseSource)
        if (
            not isinstance(sources, list | tuple)
            or not sources
            or not all(isinstance(s, str) for s in sources)
        ):
            raise ConfigError(
                f"[model] sources must be a non-empty list among {known}, got {sources!r}"
            )
        try:
            return tuple(DiseaseSource(s) for s in sources)
        except ValueError:
            raise ConfigError(
                f"[model] sources must be among {known}, got {list(sources)}"
            ) from None

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


def check_model_options(options: Mapping[str, Any]) -> None:
    """Validate a study's ``[model]`` table without building the model (fast: no ontology).

    Raises
    ------
    ConfigError
        For an unknown kind or option, or an option out of its bounds.
    """
    opts = dict(options)
    kind = opts.pop("kind", "phenotype-ranker")
    factory = MODEL_KINDS.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise ConfigError(f"[model] kind {kind!r} is unknown; choose one of {sorted(MODEL_KINDS)}")
    check = getattr(factory, "check", None)
    if check is None:
        return
    try:
        check(**opts)
    except TypeError as exc:
        raise ConfigError(f"[model] {kind}: {exc}") from None


def make_study_model(options: Mapping[str, Any]) -> StudyModel:
    """Build the model kind a study's ``[model]`` table names, with its options.

    Raises
    ------
    ConfigError
        For an unknown kind or option, or one out of its bounds (see :func:`check_model_options`).
    """
    check_model_options(options)
    opts = dict(options)
    kind = opts.pop("kind", "phenotype-ranker")
    factory = MODEL_KINDS[kind]
    if "sources" in opts:
        opts["sources"] = tuple(opts["sources"])
    try:
        return factory(**opts)
    except TypeError as exc:
        raise ConfigError(f"[model] {kind}: {exc}") from None
