"""The study queue: a study that cannot run blocks nothing, and an operator can cancel one.

A real :class:`CoordinatorService` over SQLite, with certificates from the project's own CA; the
cancel route is exercised over real HTTPS with mutual TLS (uvicorn on loopback) through the
operator's CLI, ``alliance study cancel``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from tests.cli_logging import kept_logging  # noqa: F401 - the fixture
from tests.https_server import serve_app
from tests.unit.study_cases import CASES
from typer.testing import CliRunner

from alliance.cli.app import app
from alliance.coordinator.service import CoordinatorService
from alliance.core.errors import ConfigError, FederationError, ProtocolError
from alliance.crypto import CertificateAuthority, Role, Signer, TrustStore
from alliance.crypto.tls import client_context, server_context
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.codec import decode_signed
from alliance.protocol.envelope import COORDINATOR, Envelope, MessageKind
from alliance.protocol.study import spec_hash
from alliance.store.audit import AuditLog
from alliance.store.sql import SqlStore
from alliance.store.state import StudyRecord, StudyStatus
from alliance.transport.http import HttpClient, NotFoundError, create_app
from alliance.transport.https_link import HttpSiteLink

FEDERATION = "guardian"
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("kept_logging")


def study(study_id: str, *, dim: int = 8, title: str = "") -> str:
    title_line = f"title = {title!r}\n" if title else ""
    return (
        f'[study]\nid = "{study_id}"\n{title_line}rounds = 2\nsites = ["site-a"]\nquorum = 1\n'
        f'round_timeout_s = 60\n\n[model]\nkind = "phenotype-ranker"\ndim = {dim}\n'
    )


@dataclass
class Federation:
    root: Path
    ca: CertificateAuthority
    service: CoordinatorService

    def party(self, name: str) -> Path:
        return self.root / name

    def audit_events(self) -> list[tuple[str, dict[str, object]]]:
        return [(e.event, dict(e.details)) for e in self.service.audit.entries()]

    def poll(self, site: str) -> Envelope | None:
        data = self.service.next_message(site, 0)
        if data is None:
            return None
        verify = MessageVerifier(TrustStore(self.ca.certificate), role=Role.COORDINATOR)
        return decode_signed(data, verify).envelope


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    ca = CertificateAuthority.create(FEDERATION)
    (tmp_path / "ca").mkdir()
    ca.save(tmp_path / "ca")
    ca.issue(COORDINATOR, Role.COORDINATOR, hosts=["127.0.0.1"]).write(
        tmp_path / COORDINATOR, stem="party"
    )
    for name, role in (("site-a", Role.SITE), ("operator", Role.OPERATOR)):
        ca.issue(name, role).write(tmp_path / name, stem="party")
    coord = tmp_path / COORDINATOR
    service = CoordinatorService(
        federation=FEDERATION,
        store=SqlStore(f"sqlite:///{tmp_path / 'c.db'}"),
        signer=Signer.from_files(coord / "party.crt", coord / "signing.key"),
        trust=TrustStore(ca.certificate),
        audit=AuditLog(tmp_path / "audit.log", actor=COORDINATOR),
    )
    try:
        yield Federation(tmp_path, ca, service)
    finally:
        service.stop()
        service.store.close()


def status(f: Federation, study_id: str) -> str:
    return str(f.service.study_status(study_id)["status"])


# --- a study that cannot run ---------------------------------------------------------------


def test_a_study_that_cannot_run_no_longer_blocks_the_queue(federation: Federation) -> None:
    """A queued study whose model would not fit in memory (queued before submissions were
    checked, or by a store written by hand) fails at once; the next study starts."""
    f = federation
    huge = study("huge", dim=1 << 40)
    f.service.store.add_study(
        StudyRecord("huge", huge, spec_hash(huge), "operator", StudyStatus.QUEUED, time.time())
    )
    f.service.submit_study("operator", study("next"))
    with pytest.raises(ProtocolError):  # an upload is refused as bad input, not a 500
        f.service.submit_update("site-a", b"not a signed update")
    f.service.tick()
    f.service.tick()
    assert status(f, "huge") == "failed"
    assert "[model] dim must be an integer in [1, 1024]" in str(
        f.service.study_status("huge")["error"]
    )
    assert status(f, "next") == "running"


def test_a_bad_study_is_refused_at_submit(federation: Federation) -> None:
    for bad, words in (
        (study("huge", dim=1 << 40), "[model] dim"),
        (study("late").replace("= 60", "= inf"), "[study] round_timeout_s"),
        (study("late").replace('"late"', '"late\\n"'), "[study] id"),
    ):
        with pytest.raises(ConfigError, match=r"\[") as info:
            federation.service.submit_study("operator", bad)
        assert words in str(info.value)
    assert federation.service.list_studies() == []


# --- cancel ----------------------------------------------------------------------------------


def test_a_queued_study_is_cancelled_and_the_next_one_starts(federation: Federation) -> None:
    f = federation
    f.service.submit_study("operator", study("first"))
    f.service.submit_study("operator", study("second"))
    answer = f.service.cancel_study("operator", "first")
    assert answer["status"] == "cancelled"
    f.service.tick()
    assert status(f, "second") == "running"
    assert ("study_cancelled", {"study": "first", "by": "operator", "was": "queued"}) in (
        f.audit_events()
    )
    with pytest.raises(FederationError, match="is cancelled; only a queued or running"):
        f.service.cancel_study("operator", "first")
    with pytest.raises(NotFoundError):
        f.service.cancel_study("operator", "no-such-study")


def test_a_running_study_is_cancelled_and_its_hospitals_told(federation: Federation) -> None:
    f = federation
    f.service.submit_study("operator", study("first"))
    f.service.submit_study("operator", study("second"))
    assert f.poll("site-a") is None  # the site is alive
    f.service.tick()  # starts "first"
    f.service.tick()  # opens its round 1
    task = f.poll("site-a")
    assert task is not None
    assert (task.header.kind, task.header.study) == (MessageKind.TRAIN_TASK, "first")

    f.service.cancel_study("operator", "first")

    end = f.poll("site-a")
    assert end is not None
    assert (end.header.kind, end.header.study) == (MessageKind.STUDY_END, "first")
    f.service.tick()
    assert status(f, "first") == "cancelled"
    assert status(f, "second") == "running"
    events = f.audit_events()
    assert ("study_cancelled", {"study": "first", "by": "operator", "was": "running"}) in events
    logs = [line["kind"] for line in f.service.study_logs("first", 0)]
    assert "study_cancelled" in logs
    with pytest.raises(FederationError, match="is cancelled"):
        f.service.cancel_study("operator", "first")


# --- over HTTPS, through the CLI -------------------------------------------------------------


@pytest.fixture
def https(federation: Federation) -> Iterator[str]:
    f = federation
    coord = f.party(COORDINATOR)
    crl = f.root / "crl.pem"
    crl.write_bytes(f.ca.crl().public_bytes(serialization.Encoding.PEM))
    context = server_context(
        certificate=coord / "party.crt",
        key=coord / "party.key",
        ca=f.root / "ca" / "ca.crt",
        crl=crl,
    )
    with serve_app(create_app(f.service), context) as port:
        url = f"https://127.0.0.1:{port}"
        for party in ("operator", "site-a"):
            (f.party(party) / "operator.toml").write_text(
                f'federation = "{FEDERATION}"\ncoordinator = "{url}"\n[tls]\n'
                f'certificate = "party.crt"\nkey = "party.key"\nca = "../ca/ca.crt"\n',
                encoding="utf-8",
            )
        yield url


def cli(f: Federation, party: str, *args: str) -> tuple[int, str]:
    config = str(f.party(party) / "operator.toml")
    result = runner.invoke(app, ["study", *args, "--config", config])
    return result.exit_code, " ".join(result.output.split())


def test_study_cancel_over_https_for_operators_only(federation: Federation, https: str) -> None:
    f = federation
    f.service.submit_study("operator", study("first"))
    code, out = cli(f, "site-a", "cancel", "first")
    assert code == 1, out
    assert "a site certificate ('site-a') cannot call /v1/studies/first/cancel" in out
    assert status(f, "first") == "queued"
    code, out = cli(f, "operator", "cancel", "first")
    assert code == 0, out
    assert "cancelled study first" in out
    assert status(f, "first") == "cancelled"
    code, out = cli(f, "operator", "cancel", "first")
    assert code == 1, out
    assert "is cancelled; only a queued or running study can be cancelled" in out
    code, out = cli(f, "operator", "cancel", "x\n")
    assert code == 2, out
    assert "is not a study id" in out
    assert "Traceback" not in out


def test_bad_study_files_are_refused_by_post_and_by_submit(
    federation: Federation, https: str
) -> None:
    """Each bad value of the table: ``POST /v1/studies`` answers 400 naming the field and its
    range; ``alliance study submit`` exits 2 with the same words; nothing is queued."""
    f = federation
    operator = f.party("operator")
    context = client_context(
        certificate=operator / "party.crt", key=operator / "party.key", ca=f.root / "ca" / "ca.crt"
    )
    tried = 0
    with httpx.Client(base_url=https, verify=context, timeout=30) as client:
        for case in CASES:
            text, words = case.values
            assert isinstance(text, str)
            assert isinstance(words, str)
            answer = client.post("/v1/studies", json={"spec": text})
            assert answer.status_code == 400, (case.id, answer.text)
            assert answer.json()["error"] == "ConfigError"
            assert words in answer.json()["detail"], (case.id, answer.text)
            file = f.root / "study.toml"
            file.write_text(text, encoding="utf-8")
            code, out = cli(f, "operator", "submit", str(file))
            assert code == 2, (case.id, out)
            assert " ".join(words.split()) in out, (case.id, out)
            assert "Traceback" not in out
            tried += 1
    assert tried == len(CASES)
    assert f.service.list_studies() == []


def test_study_status_prints_a_title_of_markup_as_is(federation: Federation, https: str) -> None:
    federation.service.submit_study("operator", study("first", title="[/] [bold]x"))
    code, out = cli(federation, "operator", "status", "first")
    assert code == 0, out
    assert "first — [/] [bold]x: queued" in out
    code, out = cli(federation, "operator", "status")  # the list of studies
    assert code == 0, out
    assert "│ first │ queued │" in out


def test_a_site_never_puts_a_malformed_study_id_in_a_url(federation: Federation) -> None:
    """A task naming study ``"x\\n"`` (a lying coordinator, or one from before the id check)
    is refused with a ProtocolError, which the agent logs and audits; no httpx traceback."""
    site = federation.party("site-a")
    client = HttpClient(
        "https://127.0.0.1:9",
        ssl_context=client_context(
            certificate=site / "party.crt",
            key=site / "party.key",
            ca=federation.root / "ca" / "ca.crt",
        ),
    )
    link = HttpSiteLink(
        client,
        signer=Signer.from_files(site / "party.crt", site / "signing.key"),
        verify=MessageVerifier(TrustStore(federation.ca.certificate), role=Role.COORDINATOR),
    )
    try:
        for bad in ("x\n", "x/../y", "x?y", "X"):
            with pytest.raises(ProtocolError, match="not a study id"):
                link.study_spec(bad)
    finally:
        client.close()
