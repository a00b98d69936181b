"""Trained ranker files: self-describing, versioned, and never pickled.

A model file is one :class:`~alliance.protocol.envelope.Envelope` of kind ``model_snapshot``
written through the protocol codec: the body names the format, the HPO release and the
catalogue settings the model was trained with, and the arrays are its parameters. Loading
rebuilds the public feature space from the installed ontology and refuses a file made with
another release, since the vocabulary and label order would not match.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alliance.core.errors import ModelError, ProtocolError
from alliance.core.files import write_atomically
from alliance.data.ontology import DiseaseSource, Ontology
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import PhenotypeRanker
from alliance.models.training import get_weights, set_weights
from alliance.protocol.codec import decode, encode
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind

__all__ = ["FORMAT", "LoadedModel", "load_model", "save_model"]

FORMAT = "alliance.ranker/1"


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
    body = {
        "format": FORMAT,
        "hpo_version": features.catalogue.hpo_version,
        "sources": [s.value for s in sources],
        "min_phenotypes": min_phenotypes,
        "dim": model.dim,
        "n_terms": features.n_terms,
        "n_diseases": features.n_diseases,
        "metadata": dict(metadata or {}),
    }
    header = Header(MessageKind.MODEL_SNAPSHOT, "local", "model", 0, COORDINATOR, COORDINATOR)
    data = encode(Envelope(header, body, get_weights(model)))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, data)
    return target


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
