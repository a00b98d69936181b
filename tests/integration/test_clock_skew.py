"""A hospital whose clock is wrong is told so, on both ends of the HTTPS channel.

The real coordinator service runs a study behind the real HTTPS server (mutual TLS with the
project's own certificates); the hospital is the real :class:`HttpSiteLink`, whose clock is
set minutes ahead, as a machine without NTP drifts. The coordinator signs a task when it hands
it out, valid for four times the round's timeout (here 60 s, so 240 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tests.contract.transport_harness import ContractModelKind
from tests.https_server import serve_app

from alliance.coordinator.service import CoordinatorService
from alliance.core.errors import ProtocolError
from alliance.crypto import CertificateAuthority, Role, Signer, TrustStore
from alliance.crypto.tls import client_context, server_context
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import ModelUpdate
from alliance.store.audit import AuditLog
from alliance.store.memory import MemoryStore
from alliance.transport.http import HttpClient, RetryPolicy, create_app
from alliance.transport.https_link import HttpSiteLink

FEDERATION = "skew"
STUDY = """[study]
id = "s"
rounds = 1
sites = ["site-a"]
quorum = 1
round_timeout_s = 60

[model]
kind = "contract"
"""


@dataclass
class Served:
    root: Path
    url: str
    trust: TrustStore
    site: Signer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("skew")
    ca = CertificateAuthority.create(FEDERATION)
    ca.save(root / "ca")
    ca.issue(COORDINATOR, Role.COORDINATOR, hosts=["127.0.0.1"]).write(root / "c", stem="party")
    ca.issue("site-a", Role.SITE).write(root / "a", stem="party")
    trust = TrustStore.load(root / "ca" / "ca.crt")
    service = CoordinatorService(
        federation=FEDERATION,
        store=MemoryStore(),
        signer=Signer.from_files(root / "c" / "party.crt", root / "c" / "signing.key"),
        trust=trust,
        audit=AuditLog(root / "audit.log", actor=COORDINATOR),
        model_kind=lambda table: ContractModelKind(),  # type: ignore[arg-type,return-value]
        model_check=ContractModelKind.check,
    )
    service.submit_study("operator", STUDY)
    service.next_message("site-a", 0)
    service.tick()  # round 1 is open: site-a's task waits for it
    context = server_context(
        certificate=root / "c" / "party.crt",
        key=root / "c" / "party.key",
        ca=root / "ca" / "ca.crt",
        crl=None,
    )
    with serve_app(create_app(service), context) as port:
        site = Signer.from_files(root / "a" / "party.crt", root / "a" / "signing.key")
        yield Served(root, f"https://127.0.0.1:{port}", trust, site)


@contextmanager
def _hospital(served: Served, *, ahead_s: float) -> Iterator[HttpSiteLink]:
    folder = served.root / "a"
    client = HttpClient(
        served.url,
        ssl_context=client_context(
            certificate=folder / "party.crt",
            key=folder / "party.key",
            ca=served.root / "ca" / "ca.crt",
        ),
        retry=RetryPolicy(base_s=0.05, cap_s=0.2, give_up_s=5.0),
        timeout_s=10.0,
    )
    try:
        yield HttpSiteLink(
            client,
            signer=served.site,
            verify=MessageVerifier(served.trust, role=Role.COORDINATOR),
            poll_s=0,
            clock=lambda: time.time() + ahead_s,
        )
    finally:
        client.close()


def test_a_hospital_four_minutes_fast_is_told_its_clock_is_wrong(served: Served) -> None:
    with _hospital(served, ahead_s=0) as on_time:
        task = on_time.fetch("site-a")
    assert task is not None
    assert task.header.kind is MessageKind.TRAIN_TASK
    with _hospital(served, ahead_s=245) as fast, pytest.raises(ProtocolError) as refused:
        fast.fetch("site-a")
    message = str(refused.value)
    assert "this hospital's clock is about 4 minutes ahead of the coordinator's" in message
    assert "(message created at " in message
    assert ", local time " in message
    assert "fix the system clock (NTP)" in message
    assert "the sender must send a fresh one" not in message  # no longer blames the coordinator


def test_the_coordinator_names_a_hospital_clock_that_runs_ahead(served: Served) -> None:
    header = Header(MessageKind.MODEL_UPDATE, FEDERATION, "s", 1, "site-a", COORDINATOR)
    update = ModelUpdate(header, 0, 5, {"w": np.zeros(3, np.float32)}, {"train_loss": 1.0})
    with _hospital(served, ahead_s=420) as fast, pytest.raises(ProtocolError) as refused:
        fast.submit(update.to_envelope())
    message = str(refused.value)
    assert "coordinator refused" in message
    assert "'site-a''s clock is about 7 minutes ahead of the coordinator's" in message
    assert "(message created at " in message
    assert "fix the wrong one (NTP)" in message
