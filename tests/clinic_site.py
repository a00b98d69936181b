"""A hospital that received a model, for the clinician's page tests.

The hospital is provisioned with ``alliance consortium init`` (its real ``site.toml``); its model
is a real ranker written by :func:`~alliance.store.modelfile.save_model` and kept in its store
with a JSON card, as the site agent keeps one at a study's end.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from alliance.cli.consortium import app as consortium_app
from alliance.data.ontology import DiseaseSource
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import PhenotypeRanker
from alliance.site.config import SiteConfig
from alliance.site.model_store import ModelStore
from alliance.store.modelfile import save_model

__all__ = ["CARD", "hospital_site_toml", "write_model"]

CARD = {
    "study": "rare-2026",
    "version": 3,
    "intended_use": "Ranking candidate rare diseases from HPO findings, for research.",
    "not_intended_use": "Diagnosis or treatment decisions without a clinician.",
}


def write_model(path: Path, features: PhenotypeFeatures) -> Path:
    """A small ranker of the shipped catalogue (at its public prior), saved as a model file."""
    model = PhenotypeRanker(features, dim=8, seed=5)
    return save_model(
        path, model, features, sources=(DiseaseSource.OMIM,), min_phenotypes=3, metadata={}
    )


def hospital_site_toml(root: Path, *, with_model: PhenotypeFeatures | None) -> Path:
    """A hospital's ``site.toml`` under ``root``; its store holds a model when ``with_model``."""
    sites = root / "sites.toml"
    sites.write_text(
        '[coordinator]\nhost = "127.0.0.1"\nport = 8443\n\n[[site]]\nid = "bch"\nname = "BCH"\n',
        encoding="utf-8",
    )
    out = root / "consortium"
    result = CliRunner().invoke(
        consortium_app, ["init", "guardian", "--sites", str(sites), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    site = out / "sites" / "bch"
    for name in ("cases.train.jsonl", "cases.test.jsonl"):
        (site / name).write_text("", encoding="utf-8")
    toml = site / "site.toml"
    toml.write_text(toml.read_text().replace('test = ""', 'test = "cases.test.jsonl"'))
    if with_model is not None:
        model = write_model(root / "final.alliance", with_model)
        store = ModelStore(SiteConfig.load(toml).state_dir)
        store.add("rare-2025", 1, b"not read: an older study's model", b"{}")
        store.add("rare-2026", 3, model.read_bytes(), json.dumps(CARD).encode())
    return toml
