"""The model goes home: a deployed study finishes and every participant holds its final model.

Real processes: ``alliance coordinator serve``, two hospitals online over mutual TLS
(``alliance site run``) and one on files (the courier: ``alliance coordinator export``,
``alliance site import``, ``alliance site run --until-idle``, ``alliance site export``,
``alliance coordinator import``). After a two-round study:

- every participating hospital keeps the final model, bit-identical to the one the operator
  downloads with ``alliance study model`` (which verifies the card before writing), with a card
  that verifies under the consortium CA; ``alliance diagnose --model`` reads the downloaded file;
- each hospital evaluated the model on its held-out cases and the coordinator re-issued the card
  with every hospital's evaluation; the hospitals get that card too (the agents online while they
  run, the hospital on files by the courier's next trip);
- ``alliance site models`` lists the model; the audit logs say ``model_received``;
- a hospital diagnoses a patient with the model it received (``alliance diagnose --config``) and
  gets the very differential of the operator's downloaded file;
- a tampered study-end bundle imported at the hospital on files is refused with its reason and
  changes nothing.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.e2e.deployment import Deployment, approve, provision, study_text
from tests.e2e.test_offline_deployment import OFFLINE, cli, events, put_on_files
from typer.testing import CliRunner

from alliance.cli.app import app
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.verifier import MessageVerifier
from alliance.data.ontology import load_ontology
from alliance.protocol.model_card import ModelCard, verify_card
from alliance.protocol.study import spec_hash
from alliance.store.modelfile import load_model

pytestmark = pytest.mark.slow

ONLINE = ("bch", "pumch")
SITES = (*ONLINE, OFFLINE)
STUDY = "home"
ROUNDS = 2


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = provision(tmp_path_factory.mktemp("home"))
    yield d
    d.stop()


class Courier:
    """One hospital on files and the two USB keys between it and the coordinator."""

    def __init__(self, d: Deployment) -> None:
        self.coordinator = str(d.coordinator_dir / "coordinator.toml")
        self.site = str(d.site_dir(OFFLINE) / "site.toml")
        self.to_site, self.to_coordinator = d.root / "usb-to-site", d.root / "usb-to-coordinator"

    def trip(self) -> bool:
        """One round trip; whether the coordinator had anything for the hospital."""
        out = cli(
            "coordinator",
            "export",
            "--site",
            OFFLINE,
            "--to",
            str(self.to_site),
            "-c",
            self.coordinator,
        )
        if "nothing to export" in out:
            return False
        cli("site", "import", str(self.to_site), "-c", self.site)
        cli("site", "run", "--until-idle", "-c", self.site)
        cli("site", "export", "--to", str(self.to_coordinator), "-c", self.site)
        cli("coordinator", "import", str(self.to_coordinator), "-c", self.coordinator)
        for file in self.to_coordinator.glob("*.gabn"):
            file.unlink()
        return True


def kept(d: Deployment, site: str) -> tuple[bytes, bytes]:
    folder = d.site_dir(site) / "state" / "models" / STUDY / f"v{ROUNDS}"
    return (folder / "model.alliance").read_bytes(), (folder / "card.json").read_bytes()


def diagnosis(*args: str) -> Any:
    """``alliance diagnose ... --json``: the candidates it prints (its notice goes to stderr)."""
    result = CliRunner().invoke(app, ["diagnose", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def wait_for(what: str, check: Any, d: Deployment, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}\n{d.log('coordinator.out')}"
        time.sleep(0.3)


def test_every_hospital_holds_the_final_model_the_operator_downloads(
    deployment: Deployment,
) -> None:
    d = deployment
    text = study_text(STUDY, SITES, rounds=ROUNDS, quorum=len(SITES), timeout_s=600)
    approve(d, text)
    put_on_files(d, text, STUDY)
    d.start_coordinator()
    d.submit(text)
    d.site_procs = {}
    for site in ONLINE:
        d.start_site(site)
    courier = Courier(d)
    deadline = time.monotonic() + 600
    while d.status(STUDY)["status"] != "finished":
        assert time.monotonic() < deadline, d.log("coordinator.out")
        if not courier.trip():
            time.sleep(0.5)
    d.wait_sites(300)  # the online agents received the model, evaluated it and exited
    wait_for("the study's end for the hospital on files", courier.trip, d)

    # Every hospital's evaluation is on the card, and the hospitals get that card.
    operator = d.operator()
    try:

        def complete() -> bool:
            card = json.loads(operator.model_card(STUDY))["card"]
            return not card["evaluation"]["pending"]

        wait_for("every hospital's evaluation on the card", complete, d)
    finally:
        operator.close()
    for site in ONLINE:
        d.start_site(site)
    wait_for("the complete card at the file hospital", courier.trip, d)
    trust = TrustStore.load(d.root / "consortium" / "ca" / "ca.crt")
    coordinator = MessageVerifier(trust, role=Role.COORDINATOR)

    def has_full_card(site: str) -> bool:
        card = ModelCard.from_json(json.loads(kept(d, site)[1])["card"])
        return not card.evaluation["pending"]

    for site in SITES:
        wait_for(f"the complete card at {site}", functools.partial(has_full_card, site), d)
    d.stop()

    out = d.root / "download" / "model.alliance"
    operator_toml = str(d.root / "consortium" / "operator" / "operator.toml")
    d.start_coordinator()
    printed = cli("study", "model", STUDY, "--out", str(out), "-c", operator_toml)
    assert "verified" in printed
    assert "top-1" in printed
    cli("study", "model", STUDY, "--out", str(out), "-c", operator_toml, code=2)  # no overwrite
    downloaded = out.read_bytes()
    card_path = out.with_name("model.card.json")
    for site in SITES:
        model, card_bytes = kept(d, site)
        assert model == downloaded, f"{site} holds another model"
        card = verify_card(card_bytes, model, coordinator, spec_hash(text), study=STUDY)
        assert card.version == ROUNDS
        assert set(card.evaluation["per_hospital"]) == set(SITES)
        assert card.hospitals == tuple(sorted(SITES))
        log = events(d.site_dir(site) / "state" / "audit.log")
        received = [e["details"] for e in log if e["event"] == "model_received"]
        assert [r["model_sha256"] for r in received] == [card.model_sha256]
    assert card_path.read_bytes() == kept(d, OFFLINE)[1]
    loaded = load_model(out, load_ontology())
    assert loaded.metadata["study"] == STUDY
    listed = cli("site", "models", "--json", "-c", str(d.site_dir(OFFLINE) / "site.toml"))
    (row,) = json.loads(listed)
    assert (row["study"], row["version"]) == (STUDY, ROUNDS)
    assert row["card_revision"] == 1 + len(SITES)
    # A hospital diagnoses a patient with the model it received: the downloaded file's answer.
    patient = ["--hpo", "Seizure, Global developmental delay, HP:0001252", "--json"]
    at_hospital = diagnosis("--config", str(d.site_dir(ONLINE[0]) / "site.toml"), *patient)
    assert at_hospital == diagnosis("--model", str(out), *patient)
    assert len(at_hospital) == 10
    c_events = [e["event"] for e in events(d.coordinator_dir / "audit.log")]
    assert c_events.count("model_published") == 1
    assert c_events.count("final_evaluation_received") == len(SITES)


def test_a_tampered_model_bundle_at_the_file_hospital_is_refused(deployment: Deployment) -> None:
    d = deployment
    ends = sorted((d.root / "usb-to-site").glob(f"*.{STUDY}.*study_end*.gabn"))
    assert ends, "the study above left its study-end bundles on the USB key"
    data = bytearray(ends[-1].read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the model
    bad = d.root / "usb-bad"
    bad.mkdir()
    (bad / ends[-1].name).write_bytes(bytes(data))
    site_toml = str(d.site_dir(OFFLINE) / "site.toml")
    models = d.site_dir(OFFLINE) / "state" / "models"
    before = sorted(
        (p.relative_to(models), p.read_bytes()) for p in models.rglob("*") if p.is_file()
    )
    out = cli("site", "import", str(bad), "-c", site_toml, code=2)
    assert "refused" in out
    cli("site", "run", "--until-idle", "-c", site_toml)
    after = sorted(
        (p.relative_to(models), p.read_bytes()) for p in models.rglob("*") if p.is_file()
    )
    assert after == before
    log = events(d.site_dir(OFFLINE) / "state" / "audit.log")
    assert any(e["event"] == "bundle_refused" for e in log)
