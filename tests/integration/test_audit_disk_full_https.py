"""The coordinator's audit disk is full: an upload gets a retryable 503 that says why, not a 500.

A real uvicorn server with mutual TLS and the project's own CA, its audit log on a 512 KiB tmpfs
filled to the last byte (root only; skipped otherwise). Before, the refused audit line
surfaced as a bare ``OSError`` and the site saw "500 Internal Server Error".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.https_server import serve_app
from tests.integration.test_https import _bundle
from tests.unit.test_audit_disk_full import fill, small_disk  # noqa: F401 - fixture

from alliance.coordinator.service import CoordinatorService
from alliance.crypto import CertificateAuthority, Role, Signer, TrustStore
from alliance.crypto.tls import client_context, server_context
from alliance.protocol.codec import encode_signed
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import ModelUpdate
from alliance.store.audit import AuditLog, read_audit_log, verify_audit_log
from alliance.store.sql import SqlStore
from alliance.transport.http import create_app


@dataclass
class Coordinator:
    url: str
    root: Path
    audit: Path


@pytest.fixture
def coordinator(tmp_path: Path, small_disk: Path) -> Iterator[Coordinator]:  # noqa: F811
    ca = CertificateAuthority.create("guardian")
    (tmp_path / "ca").mkdir()
    ca.save(tmp_path / "ca")
    coord = _bundle(ca, tmp_path, COORDINATOR, Role.COORDINATOR, hosts=["127.0.0.1"])
    _bundle(ca, tmp_path, "site-a", Role.SITE)
    audit = small_disk / "audit.log"
    service = CoordinatorService(
        federation="guardian",
        store=SqlStore(f"sqlite:///{tmp_path / 'c.db'}"),
        signer=Signer.from_files(coord / "party.crt", coord / "signing.key"),
        trust=TrustStore.load(tmp_path / "ca" / "ca.crt", None),
        audit=AuditLog(audit, actor=COORDINATOR),
    )
    context = server_context(
        certificate=coord / "party.crt",
        key=coord / "party.key",
        ca=tmp_path / "ca" / "ca.crt",
        crl=None,
    )
    with serve_app(create_app(service), context) as port:
        yield Coordinator(f"https://127.0.0.1:{port}", tmp_path, audit)
    service.store.close()


def upload(c: Coordinator) -> httpx.Response:
    folder = c.root / "site-a"
    signer = Signer.from_files(folder / "party.crt", folder / "signing.key")
    header = Header(MessageKind.MODEL_UPDATE, "guardian", "s1", 1, "site-a", COORDINATOR)
    update = ModelUpdate(header, 0, 5, {"w": np.zeros(3, np.float32)}, {"train_loss": 1.0})
    context = client_context(
        certificate=folder / "party.crt", key=folder / "party.key", ca=c.root / "ca" / "ca.crt"
    )
    with httpx.Client(base_url=c.url, verify=context, timeout=10) as client:
        return client.post(
            "/v1/updates",
            content=encode_signed(update.to_envelope(), signer),
            headers={"content-type": "application/octet-stream"},
        )


def test_an_upload_while_the_audit_disk_is_full_is_a_503_that_names_the_cause(
    coordinator: Coordinator,
) -> None:
    filler = fill(coordinator.audit.parent)
    refused = upload(coordinator)
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["error"] == "TransportError"
    assert f"audit log {coordinator.audit}: could not append 'update_rejected'" in body["detail"]
    assert "No space left on device" in body["detail"]
    assert "retried" in body["detail"]
    assert verify_audit_log(coordinator.audit).ok
    assert read_audit_log(coordinator.audit) == []
    filler.unlink()  # space again: the same upload gets its real answer, and its audit line
    answered = upload(coordinator)
    assert answered.status_code == 409, answered.text
    assert "no study is running" in answered.json()["detail"]
    assert [e.event for e in read_audit_log(coordinator.audit)] == ["update_rejected"]
    assert verify_audit_log(coordinator.audit).ok
