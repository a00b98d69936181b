"""The finding online: a coordinator re-signs a DP task and serves it again over mutual TLS.

The hospital runs the real agent (:class:`~alliance.site.runner.SiteRunner`, HTTPS) against the
real coordinator service over real mutual TLS, with certificates from ``alliance consortium
init``; the service lies only in what it hands out: round 1's task re-signed with fresh nonces as
rounds 1, 1, 3, 4 and 5, then the end of the study. The hospital submits round 1's update twice,
the very same message (same nonce, same content), refuses rounds 3 to 5 (the coordinator
learns "policy"), and charges one round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.https_server import serve_app
from tests.integration.test_lying_coordinator_on_files import FED, Coordinator, hospital_on_files

from alliance.coordinator.service import CoordinatorService
from alliance.core.logging import configure_logging
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.tls import server_context
from alliance.crypto.verifier import MessageVerifier
from alliance.privacy.ledger import PrivacyLedger
from alliance.protocol.codec import content_digest, decode_signed, encode_signed
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import StudyEnd, TrainTask
from alliance.site.runner import SiteConfig, SiteRunner
from alliance.store.audit import AuditLog
from alliance.store.sql import SqlStore
from alliance.transport.http import create_app

pytestmark = pytest.mark.slow


class LyingService(CoordinatorService):
    """The real service (TLS identities, upload caps), handing out whatever it was told to."""

    def __init__(self, messages: list[bytes], spec: str, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.queue = list(messages)
        self.spec = spec
        self.received: list[bytes] = []

    def max_upload_bytes(self) -> int:
        return 64 << 20  # no study runs in its store to size the cap from

    def next_message(self, site: str, wait_s: float) -> bytes | None:
        return self.queue.pop(0) if self.queue else None

    def submit_update(self, site: str, data: bytes) -> str:
        self.received.append(data)
        return f"received {len(self.received)}"

    def study_spec(self, study_id: str) -> str:
        return self.spec


@contextmanager
def serve(service: CoordinatorService, consortium: Path) -> Iterator[int]:
    own = consortium / "coordinator"
    context = server_context(
        certificate=own / "coordinator.crt",
        key=own / "coordinator.key",
        ca=own / "ca.crt",
        crl=own / "crl.pem",
    )
    with serve_app(create_app(service), context, start_s=60) as port:
        yield port


def test_a_lying_coordinator_online_gets_one_release_of_round_1(tmp_path: Path) -> None:
    site, toml, text = hospital_on_files(tmp_path, files=False)
    configure_logging()  # the provisioning CLI left logging on its own, now closed, stream
    consortium = tmp_path / "c"
    coordinator = Coordinator(consortium, site, text)
    spec = coordinator.spec
    messages = []
    for round_ in (1, 1, 3, 4, 5):
        header = Header(MessageKind.TRAIN_TASK, FED, "dp-study", round_, COORDINATOR, site)
        task = TrainTask(header, 0, spec.plan, coordinator.weights, spec.privacy, spec.secagg)
        messages.append(encode_signed(task.to_envelope(), coordinator.signer))
    end = Header(MessageKind.STUDY_END, FED, "dp-study", 1, COORDINATOR, site)
    messages.append(encode_signed(StudyEnd(end, 1).to_envelope(), coordinator.signer))
    own = consortium / "coordinator"
    service = LyingService(
        messages,
        text,
        federation=FED,
        store=SqlStore(f"sqlite:///{tmp_path / 'coordinator.db'}"),
        signer=coordinator.signer,
        trust=TrustStore.load(own / "ca.crt", own / "crl.pem"),
        audit=AuditLog(tmp_path / "coordinator-audit.log", actor=COORDINATOR),
    )
    with serve(service, consortium) as port:
        body = toml.read_text().replace("https://127.0.0.1:8443", f"https://127.0.0.1:{port}")
        toml.write_text(body)
        config = dataclasses.replace(SiteConfig.load(toml), poll_s=0.2)
        with SiteRunner(config) as runner:
            runner.run(max_studies=1)
    service.store.close()

    check = MessageVerifier(coordinator.trust, role=Role.SITE)
    updates: list[Envelope] = [decode_signed(data, check).envelope for data in service.received]
    assert [(u.header.round, u.header.kind) for u in updates] == [
        (1, MessageKind.MODEL_UPDATE),
        (1, MessageKind.MODEL_UPDATE),
        (3, MessageKind.REFUSAL),
        (4, MessageKind.REFUSAL),
        (5, MessageKind.REFUSAL),
    ]
    assert all(dict(u.body) == {"reason": "policy"} for u in updates[2:])
    assert updates[1].header == updates[0].header
    assert content_digest(updates[1]) == content_digest(updates[0])
    state = toml.parent / "state"
    refused = [
        e.details["reason"]
        for e in AuditLog(state / "audit.log", actor=site).entries()
        if e.event == "task_refused"
    ]
    assert len(refused) == 3
    with PrivacyLedger.open(state / "privacy.ledger", budget_epsilon=8.0, delta=1e-5) as ledger:
        assert [(c.study, c.round) for c in ledger.entries()] == [("dp-study", 1)]
