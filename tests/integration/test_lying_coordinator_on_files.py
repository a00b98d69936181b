"""The finding, end to end at a hospital on files: a coordinator re-signs a DP task.

The consortium is made by ``alliance consortium init``; the hospital approves a DP study of two
rounds. The coordinator, holding its own signing key, re-signs round 1's task with fresh nonces
as rounds 1, 1, 3, 4 and 5; the hospital imports the bundles (``alliance site import``), works
through them (``alliance site run --until-idle``) and exports its replies. Then
``state/bundles.db`` is deleted and the first bundle re-imported from the courier's folder.

The hospital answers round 1 once (the very same reply each time it is asked), refuses rounds 3
to 5 as outside the approved study (the coordinator learns "policy"), and its ledger holds
exactly one charged round.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from cryptography import x509
from tests.e2e.deployment import study_text
from typer.testing import CliRunner

from alliance.cli.app import app
from alliance.crypto.keyfiles import load_signing_key
from alliance.crypto.pki import Role, TrustStore, signing_public_key
from alliance.crypto.signing import Signer
from alliance.crypto.verifier import MessageVerifier
from alliance.data.loading import write_jsonl
from alliance.data.ontology import load_ontology
from alliance.data.synth import CohortConfig, generate_consortium, scaled_hospitals
from alliance.models.tasks import make_study_model
from alliance.models.training import get_weights
from alliance.privacy.ledger import PrivacyLedger
from alliance.protocol.bundles import open_bundle, seal_bundle
from alliance.protocol.codec import content_digest
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import TrainTask
from alliance.protocol.study import StudySpec, spec_hash
from alliance.site.runner import SiteConfig
from alliance.store.audit import AuditLog

pytestmark = pytest.mark.slow

FED = "guardian"
PRIVATE = '\n[privacy]\nmechanism = "dp-sgd"\nnoise_multiplier = 3.0\n'


def cli(*args: str, code: int = 0) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == code, result.output
    return result.output


def hospital_on_files(root: Path, *, files: bool = True) -> tuple[str, Path, str]:
    """One provisioned hospital (on files, or online) with its cases, approving a DP study of
    two rounds."""
    onto = load_ontology()
    (cohort,) = generate_consortium(
        onto, onto.catalogue(), scaled_hospitals(0.1)[:1], CohortConfig(seed=7, n_diseases=60)
    )
    site = cohort.hospital.id
    (root / "sites.toml").write_text(
        f'[coordinator]\nhost = "127.0.0.1"\nport = 8443\n\n[[site]]\nid = "{site}"\n'
        f'name = "{cohort.hospital.name}"\n'
    )
    cli("consortium", "init", FED, "--sites", str(root / "sites.toml"), "--out", str(root / "c"))
    folder = root / "c" / "sites" / site
    write_jsonl(cohort.train, folder / "cases.train.jsonl")
    write_jsonl(cohort.test, folder / "cases.test.jsonl")
    text = study_text("dp-study", [site], rounds=2, quorum=1, timeout_s=60, extra=PRIVATE)
    (folder / "studies").mkdir()
    (folder / "studies" / "dp-study.toml").write_text(text, encoding="utf-8")
    toml = folder / "site.toml"
    body = toml.read_text()
    if files:
        body = body.replace("coordinator = ", 'transport = "files"\ncoordinator = ', 1)
    body = body.replace('test = ""', 'test = "cases.test.jsonl"')
    body = body.replace("min_cohort = 20", "min_cohort = 1")
    body = body.replace("approved_studies = []", f'approved_studies = ["{spec_hash(text)}"]')
    toml.write_text(body)
    return site, toml, text


class Coordinator:
    """The coordinator's own key and certificate: what it needs to sign any task it likes."""

    def __init__(self, consortium: Path, site: str, text: str) -> None:
        own = consortium / "coordinator"
        self.signer = Signer.from_files(own / "coordinator.crt", own / "signing.key")
        self.key = load_signing_key(own / "signing.key")
        self.trust = TrustStore.load(own / "ca.crt", own / "crl.pem")
        cert = x509.load_pem_x509_certificate(
            (consortium / "sites" / site / "site.crt").read_bytes()
        )
        site_key = signing_public_key(cert)
        assert site_key is not None
        self.site_key = site_key
        self.site = site
        self.spec = StudySpec.parse(text)
        kind = make_study_model(self.spec.model)
        self.weights = get_weights(kind.build(self.spec.seed))

    def task(self, folder: Path, round_: int, name: str) -> Path:
        """Round 1's task re-signed as ``round_`` with a fresh nonce, into the courier's folder."""
        header = Header(MessageKind.TRAIN_TASK, FED, "dp-study", round_, COORDINATOR, self.site)
        spec = self.spec
        env = TrainTask(header, 0, spec.plan, self.weights, spec.privacy, spec.secagg)
        data = seal_bundle(env.to_envelope(), signer=self.signer, recipient_key=self.site_key)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.gabn"
        path.write_bytes(data)
        return path

    def read(self, folder: Path) -> list[Envelope]:
        """The hospital's replies the courier brought, opened and checked, oldest first."""
        verify = MessageVerifier(self.trust, role=Role.SITE)
        opened = [
            open_bundle(
                f.read_bytes(),
                verify=verify,
                recipient=COORDINATOR,
                recipient_key=self.key,
                federation=FED,
            )
            for f in sorted(folder.rglob("*.gabn"))
        ]
        return [o.message.envelope for o in opened]


@pytest.fixture
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """``site run --until-idle`` waits ``poll_s`` (25 s, not a site.toml key) after each task it
    refuses before it reads the next bundle: three refusals, 75 s of sleep. The test is about
    what is released, not the pause; the online sister test sets 0.2 s the same way."""
    load = SiteConfig.load
    monkeypatch.setattr(
        SiteConfig, "load", lambda path: dataclasses.replace(load(path), poll_s=0.2)
    )


@pytest.mark.usefixtures("quick_polls")
def test_a_lying_coordinator_gets_one_release_of_round_1_and_nothing_beyond_the_study(
    tmp_path: Path,
) -> None:
    site, toml, text = hospital_on_files(tmp_path)
    coordinator = Coordinator(tmp_path / "c", site, text)
    usb = tmp_path / "usb"
    tasks = [coordinator.task(usb / "in", r, f"{i}-r{r}") for i, r in enumerate((1, 1, 3, 4, 5))]
    cli("site", "import", "--config", str(toml), *map(str, tasks))
    cli("site", "run", "--until-idle", "--config", str(toml))
    cli("site", "export", "--to", str(usb / "out-1"), "--config", str(toml))

    replies = coordinator.read(usb / "out-1")
    # The two round-1 replies are one bundle: the same message, written twice. Rounds 3 to 5
    # are refused, and the coordinator learns only the category.
    assert [(r.header.round, r.header.kind, dict(r.body)) for r in replies[1:]] == [
        (r, MessageKind.REFUSAL, {"reason": "policy"}) for r in (3, 4, 5)
    ]
    assert (replies[0].header.round, replies[0].header.kind) == (1, MessageKind.MODEL_UPDATE)
    state = toml.parent / "state"
    audit = [e for e in AuditLog(state / "audit.log", actor=site).entries()]
    refused = [e.details["reason"] for e in audit if e.event == "task_refused"]
    assert len(refused) == 3
    assert all("outside the approved study (rounds 1–2" in r for r in refused)
    assert [e.event for e in audit].count("update_sent") == 2
    assert [e.details["reason"] for e in audit if e.event == "refusal_sent"] == ["policy"] * 3

    # bundles.db lost; the courier brings round 1's first bundle again.
    for file in state.glob("bundles.db*"):
        file.unlink()
    cli("site", "import", "--config", str(toml), str(tasks[0]))
    cli("site", "run", "--until-idle", "--config", str(toml))
    cli("site", "export", "--to", str(usb / "out-2"), "--config", str(toml))
    (again,) = coordinator.read(usb / "out-2")
    assert again.header == replies[0].header
    assert content_digest(again) == content_digest(replies[0])

    with PrivacyLedger.open(state / "privacy.ledger", budget_epsilon=8.0, delta=1e-5) as ledger:
        assert [(c.study, c.round) for c in ledger.entries()] == [("dp-study", 1)]
    assert '"rounds": 1' in cli("site", "budget", "--json", "--config", str(toml))
