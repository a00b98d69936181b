"""Trained ranker files: self-describing, versioned, and never pickled.

A model file is one :class:`~alliance.protocol.envelope.Envelope` of kind ``model_snapshot``
written through the protocol codec: the body names the format, the HPO release and the
catalogue settings the model was trained with, and the arrays are its parameters. Loading
rebuilds the public feature space from the installed ontology and refuses a file made with
another release, since the vocabulary and label order would not match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy.typing as npt

from alliance.core.errors import ModelError, ProtocolError
from alliance.core.files import write_atomically
from alliance.data.ontology import DiseaseSource, Ontology
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import PhenotypeRanker
from alliance.models.training import get_weights, set_weights
from alliance.protocol.codec import decode, encode
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind

__all__ = [
    "FORMAT",
    "GENERIC_FORMAT",
    "LoadedModel",
    "load_model",
    "ranker_file",
    "save_model",
    "study_model_file",
]

FORMAT = "alliance.ranker/1"
#: Model files of study model kinds other than the ranker.
GENERIC_FORMAT = "alliance.model/1"


@dataclass(frozen=True)
class LoadedModel:
    """A ranker ready to use, with its feature space and the metadata it was saved with."""

    model: PhenotypeRanker
    features: PhenotypeFeatures
    metadata: Mapping[str, Any]


def save_model(
    path: str | Path,
    model: PhenotypeRanker,
    features: PhenotypeFeatures,
    *,
    sources: tuple[DiseaseSource, ...],
    min_phenotypes: int,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` atomically to ``path`` (a temporary file, then a rename)."""
    target = Path(path)
    data = ranker_file(
        features,
        get_weights(model),
        dim=model.dim,
        sources=sources,
        min_phenotypes=min_phenotypes,
        metadata=metadata,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, data)
    return target


def ranker_file(
    features: PhenotypeFeatures,
    weights: Mapping[str, npt.NDArray[Any]],
    *,
    dim: int,
    sources: tuple[DiseaseSource, ...],
    min_phenotypes: int,
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """The bytes of a ranker model file holding ``weights`` (what :func:`load_model` reads).

    The same arguments give the same bytes (the header's nonce is derived from the content),
    so a model published twice has one hash.
    """
    body = {
        "format": FORMAT,
        "hpo_version": features.catalogue.hpo_version,
        "sources": [s.value for s in sources],
        "min_phenotypes": min_phenotypes,
        "dim": dim,
        "n_terms": features.n_terms,
        "n_diseases": features.n_diseases,
        "metadata": dict(metadata or {}),
    }
    return _file(body, weights)


def study_model_file(
    kind: str,
    table: Mapping[str, Any],
    weights: Mapping[str, npt.NDArray[Any]],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """The bytes of a model file for any study model kind (format :data:`GENERIC_FORMAT`): the
    kind, its ``[model]`` table and the weights, through the same never-pickled codec."""
    body = {
        "format": GENERIC_FORMAT,
        "kind": kind,
        "model": dict(table),
        "metadata": dict(metadata or {}),
    }
    return _file(body, weights)


def _file(body: Mapping[str, Any], weights: Mapping[str, npt.NDArray[Any]]) -> bytes:
    header = Header(MessageKind.MODEL_SNAPSHOT, "local", "model", 0, COORDINATOR, COORDINATOR)
    unsigned = encode(Envelope(header, body, dict(weights)))
    nonce = hashlib.sha256(unsigned).hexdigest()[:32]
    return encode(Envelope(replace(header, nonce=nonce), body, dict(weights)))


def load_model(path: str | Path, ontology: Ontology) -> LoadedModel:
    """Read a model file written by :func:`save_model`.

    Raises
    ------
    ModelError
        If the file is missing, not a model file, or made with another HPO release or format.
    """
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {source}: {exc.strerror}") from None
    try:
        env = decode(data)
    except ProtocolError as exc:
        raise ModelError(f"{source} is not a Guardian Alliance model file: {exc}") from None
    body = env.body
    if env.header.kind is not MessageKind.MODEL_SNAPSHOT or body.get("format") != FORMAT:
        raise ModelError(
            f"{source} is not a ranker model file "
            f"(format {body.get('format')!r}, expected {FORMAT})"
        )
    if body["hpo_version"] != ontology.version:
        raise ModelError(
            f"{source} was trained with HPO {body['hpo_version']}, this installation ships HPO "
            f"{ontology.version}; use the same release or retrain"
        )
    try:
        sources = tuple(DiseaseSource(s) for s in body["sources"])
    except (ValueError, TypeError):
        raise ModelError(f"{source}: unknown disease sources {body.get('sources')!r}") from None
    features = PhenotypeFeatures(
        ontology, ontology.catalogue(sources, min_phenotypes=int(body["min_phenotypes"]))
    )
    if (features.n_terms, features.n_diseases) != (body["n_terms"], body["n_diseases"]):
        raise ModelError(
            f"{source}: feature space does not match the installed ontology; retrain the model"
        )
    model = PhenotypeRanker(features, dim=int(body["dim"]))
    expected = get_weights(model)
    for name, ref in expected.items():
        arr = env.arrays.get(name)
        if arr is None or arr.shape != ref.shape:
            raise ModelError(f"{source}: parameter {name!r} is missing or has the wrong shape")
    set_weights(model, env.arrays)
    return LoadedModel(model, features, dict(body["metadata"]))
