"""A hospital's personalised model: built beside the received one, chosen by ``[clinic] model``,
recorded in its audit log, and used by ``model_in_use`` and ``alliance diagnose --config``.

A hospital is a hand-written ``site.toml`` with its training cases as compact JSON lines, and a
model store filled with :meth:`ModelStore.add` as the site agent fills it at a study's end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alliance.cli.app import app
from alliance.core.errors import ConfigError, ModelError
from alliance.data.compact import write_jsonl
from alliance.data.ontology import DiseaseSource, Ontology
from alliance.data.synth import SiteCohort
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import PhenotypeRanker
from alliance.site.config import ClinicChoice, SiteConfig
from alliance.site.model_store import ModelStore
from alliance.site.personalise import personalise_received, record_choice, recorded_choice
from alliance.site.received import model_in_use
from alliance.store.audit import AuditLog
from alliance.store.modelfile import save_model

SITE_TOML = """\
federation = "guardian"
site = "bch"
coordinator = "https://127.0.0.1:8443"

[tls]
certificate = "site.crt"
key = "site.key"
signing_key = "signing.key"
ca = "ca.crt"

[data]
train = "train.jsonl"

[policy]
approved_studies = []

[state]
dir = "state"
"""


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, features: PhenotypeFeatures) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.alliance"
    model = PhenotypeRanker(features, dim=8, seed=5)
    return save_model(path, model, features, sources=(DiseaseSource.OMIM,), min_phenotypes=3)


def hospital(root: Path, model_file: Path, cohort: SiteCohort, clinic: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("site.crt", "site.key", "signing.key", "ca.crt"):
        (root / name).touch()
    write_jsonl(cohort.train, root / "train.jsonl")
    extra = f'\n[clinic]\nmodel = "{clinic}"\n' if clinic is not None else ""
    (root / "site.toml").write_text(SITE_TOML + extra, encoding="utf-8")
    ModelStore(root / "state").add("rare-2026", 4, model_file.read_bytes(), b"{}")
    return root / "site.toml"


def biggest(consortium: tuple[SiteCohort, ...]) -> SiteCohort:
    return max(consortium, key=lambda c: len(c.train))


def test_clinic_model_setting_is_read_and_checked(
    tmp_path: Path, model_file: Path, small_consortium: tuple[SiteCohort, ...]
) -> None:
    cohort = biggest(small_consortium)
    default = SiteConfig.load(hospital(tmp_path / "a", model_file, cohort))
    assert default.clinic_model is ClinicChoice.FEDERATED
    chosen = SiteConfig.load(hospital(tmp_path / "b", model_file, cohort, "personalised"))
    assert chosen.clinic_model is ClinicChoice.PERSONALISED
    with pytest.raises(ConfigError, match=r"\[clinic\] model = 'local'.*\"personalised\""):
        SiteConfig.load(hospital(tmp_path / "c", model_file, cohort, "local"))


def test_personalised_model_is_kept_audited_and_used_when_chosen(
    tmp_path: Path,
    model_file: Path,
    ontology: Ontology,
    small_consortium: tuple[SiteCohort, ...],
) -> None:
    site = SiteConfig.load(hospital(tmp_path, model_file, biggest(small_consortium)))
    stored = ModelStore(site.state_dir).newest()
    assert stored is not None
    audit = AuditLog(site.state_dir / "audit.log", actor=site.site)
    with pytest.raises(ModelError, match="alliance site personalise"):
        model_in_use(
            model=None, state_dir=site.state_dir, ontology=ontology,
            choice=ClinicChoice.PERSONALISED,
        )  # fmt: skip
    built = personalise_received(stored, site.data, ontology=ontology, audit=audit)
    assert built.path == stored.folder / "personal" / "model.alliance"
    assert (built.path.parent / "fit.json").is_file()
    assert stored.model_path.read_bytes() == model_file.read_bytes()  # received file untouched

    used = model_in_use(
        model=None, state_dir=site.state_dir, ontology=ontology, choice=ClinicChoice.PERSONALISED
    )
    assert used.path == built.path
    assert used.personalised
    assert "personalised at this hospital" in used.describe()
    assert used.loaded.metadata["personalised"]["from_version"] == 4
    fed = model_in_use(
        model=None, state_dir=site.state_dir, ontology=ontology, choice=ClinicChoice.FEDERATED
    )
    assert fed.path == stored.model_path
    assert not fed.personalised
    bias = used.loaded.model.disease_bias.detach().numpy()
    assert not np.array_equal(bias, fed.loaded.model.disease_bias.detach().numpy())

    # Without an explicit choice, the one the hospital recorded (federated until it records).
    assert recorded_choice(site.state_dir) is ClinicChoice.FEDERATED
    assert record_choice(site.state_dir, ClinicChoice.PERSONALISED, audit=audit)
    assert not record_choice(site.state_dir, ClinicChoice.PERSONALISED, audit=audit)
    assert model_in_use(model=None, state_dir=site.state_dir, ontology=ontology).personalised
    events = [(e.event, dict(e.details)) for e in audit.entries()]
    assert [name for name, _ in events] == ["model_personalised", "clinic_model_chosen"]
    assert events[0][1]["study"] == "rare-2026"
    assert events[0][1]["method"] == "prior"
    assert events[1][1] == {"model": "personalised"}


def test_site_personalise_command_then_diagnose_uses_the_chosen_model(
    tmp_path: Path, model_file: Path, small_consortium: tuple[SiteCohort, ...]
) -> None:
    config = hospital(tmp_path, model_file, biggest(small_consortium), "personalised")
    runner = CliRunner()
    result = runner.invoke(app, ["diagnose", "--config", str(config), "--hpo", "HP:0001250"])
    assert result.exit_code == 1
    assert "alliance site personalise" in result.stderr
    result = runner.invoke(app, ["site", "personalise", "--config", str(config)])
    assert result.exit_code == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert "personalised model written to" in text
    assert "clinicians use the personalised model" in text
    result = runner.invoke(app, ["diagnose", "--config", str(config), "--hpo", "HP:0001250"])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "personalised at this hospital" in " ".join(result.stdout.split())
