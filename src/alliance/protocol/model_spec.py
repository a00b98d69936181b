"""A study's ``[model]`` table as a typed record: the model kind and its bounded options.

::

    [model]
    kind = "phenotype-ranker"   # the rare-disease ranker (default)
    dim = 32                    # embedding width, 1 to MAX_DIM
    sources = ["OMIM"]          # disease annotations among OMIM and ORPHA
    min_phenotypes = 3          # diseases with fewer annotated terms are left out

Each model kind registers the record of its options in :data:`MODEL_OPTIONS` (a parser from
the table's options to the record, which refuses unknown options and checks bounds);
:class:`ModelSpec` holds the kind's name and that record. So a study naming an unknown kind, an
option the kind does not take or a value out of bounds is refused when the file is read, before
any hash is printed. What can only be checked by building the model (its parameter count against
the shipped catalogue) is checked by the builder, :func:`alliance.models.tasks.make_study_model`.
A kind outside this package (a test's model, a plug-in) registers its options with
:func:`register_model_options`; :class:`NoOptions` serves a kind that takes none.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from alliance.core.errors import ConfigError
from alliance.data.ontology import DiseaseSource

__all__ = [
    "MAX_DIM",
    "MAX_MIN_PHENOTYPES",
    "MODEL_OPTIONS",
    "ModelKind",
    "ModelOptions",
    "ModelSpec",
    "NoOptions",
    "RankerOptions",
    "register_model_options",
]

#: Widest ranker embedding: with the shipped HPO release and every disease source (about 12,500
#: terms and 12,800 diseases) a width of 1024 stays under the model size limit
#: (:data:`alliance.models.tasks.MAX_PARAMETERS`).
MAX_DIM = 1024
#: ``min_phenotypes`` above this leaves no disease of the shipped catalogue.
MAX_MIN_PHENOTYPES = 1000


class ModelKind(enum.Enum):
    """The model kinds this package ships."""

    PHENOTYPE_RANKER = "phenotype-ranker"


class ModelOptions(Protocol):
    """What a kind's options record provides."""

    def to_table(self) -> dict[str, Any]:
        """The options as the ``[model]`` table writes them (without ``kind``)."""
        ...


@dataclass(frozen=True)
class RankerOptions:
    """Options of the rare-disease ranker (``kind = "phenotype-ranker"``).

    Parameters
    ----------
    dim
        Embedding width, 1 to :data:`MAX_DIM`.
    sources
        Disease annotations to rank among (OMIM, ORPHA), at least one.
    min_phenotypes
        Fewest annotated terms a disease needs to be ranked, 1 to :data:`MAX_MIN_PHENOTYPES`.

    Raises
    ------
    ConfigError
        ``[model] key ...``, naming the option and what it accepts.
    """

    dim: int = 32
    sources: tuple[DiseaseSource, ...] = (DiseaseSource.OMIM,)
    min_phenotypes: int = 3

    def __post_init__(self) -> None:
        for key, top in (("dim", MAX_DIM), ("min_phenotypes", MAX_MIN_PHENOTYPES)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ConfigError(f"[model] {key} must be an integer in [1, {top}], got {value!r}")
        object.__setattr__(self, "sources", _sources(self.sources))

    def to_table(self) -> dict[str, Any]:
        """``dim``, ``sources`` (their names) and ``min_phenotypes``."""
        return {
            "dim": self.dim,
            "sources": [s.value for s in self.sources],
            "min_phenotypes": self.min_phenotypes,
        }

    @classmethod
    def from_table(cls, options: Mapping[str, Any]) -> RankerOptions:
        """Build from the ``[model]`` table's options (``kind`` removed).

        Raises
        ------
        ConfigError
            For an option the ranker does not take, or one out of its bounds.
        """
        return cls(**_known(options, cls, "phenotype-ranker"))


def _sources(value: object) -> tuple[DiseaseSource, ...]:
    known = ", ".join(s.value for s in DiseaseSource)
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(s, str | DiseaseSource) for s in value)
    ):
        raise ConfigError(f"[model] sources must be a non-empty list among {known}, got {value!r}")
    try:
        return tuple(DiseaseSource(s) for s in value)
    except ValueError:
        raise ConfigError(f"[model] sources must be among {known}, got {list(value)}") from None


@dataclass(frozen=True)
class NoOptions:
    """The options of a kind that takes none."""

    def to_table(self) -> dict[str, Any]:
        """An empty table."""
        return {}

    @classmethod
    def from_table(cls, options: Mapping[str, Any]) -> NoOptions:
        """Refuse any option.

        Raises
        ------
        ConfigError
            Naming the options given.
        """
        if options:
            raise ConfigError(f"[model] this kind takes no options, got {sorted(options)}")
        return cls()


def _known(options: Mapping[str, Any], record: Any, kind: str) -> dict[str, Any]:
    taken = [f.name for f in fields(record)]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise ConfigError(
            f"[model] {unknown[0]}: {kind} takes no option {unknown[0]!r}; it takes "
            f"{', '.join(taken)}"
        )
    return dict(options)


#: Each model kind's options parser, by kind name.
MODEL_OPTIONS: dict[str, Callable[[Mapping[str, Any]], ModelOptions]] = {
    ModelKind.PHENOTYPE_RANKER.value: RankerOptions.from_table,
}


def register_model_options(kind: str, parser: Callable[[Mapping[str, Any]], ModelOptions]) -> None:
    """Let study files name ``kind``, with options read by ``parser`` (e.g.
    ``NoOptions.from_table``). Registering a shipped kind again is an error.

    Raises
    ------
    ConfigError
        If ``kind`` is a shipped kind or not a non-empty string.
    """
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"a model kind is a non-empty string, got {kind!r}")
    if kind in {k.value for k in ModelKind}:
        raise ConfigError(f"model kind {kind!r} ships with alliance; register another name")
    MODEL_OPTIONS[kind] = parser


@dataclass(frozen=True)
class ModelSpec:
    """A study's model: the kind's name and its options record.

    Parameters
    ----------
    kind
        A registered kind (:data:`MODEL_OPTIONS`); :class:`ModelKind` lists the shipped ones.
    options
        The kind's options record (default: the ranker's defaults).

    Raises
    ------
    ConfigError
        For an unknown kind.
    """

    kind: str = ModelKind.PHENOTYPE_RANKER.value
    options: ModelOptions = field(default_factory=RankerOptions)

    def __post_init__(self) -> None:
        if isinstance(self.kind, ModelKind):
            object.__setattr__(self, "kind", self.kind.value)
        if not isinstance(self.kind, str) or self.kind not in MODEL_OPTIONS:
            raise ConfigError(
                f"[model] kind {self.kind!r} is unknown; choose one of {sorted(MODEL_OPTIONS)}"
            )

    def to_table(self) -> dict[str, Any]:
        """The ``[model]`` table: ``kind`` and the options."""
        return {"kind": self.kind, **self.options.to_table()}

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> ModelSpec:
        """Build from the study file's ``[model]`` table (``None``: the default ranker).

        Raises
        ------
        ConfigError
            ``[model] key ...`` for an unknown kind or option, or one out of its bounds.
        """
        raw = dict(table or {})
        kind = raw.pop("kind", ModelKind.PHENOTYPE_RANKER.value)
        parser = MODEL_OPTIONS.get(kind) if isinstance(kind, str) else None
        if parser is None:
            raise ConfigError(
                f"[model] kind {kind!r} is unknown; choose one of {sorted(MODEL_OPTIONS)}"
            )
        return cls(kind, parser(raw))
