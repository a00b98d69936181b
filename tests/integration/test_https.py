"""The coordinator's HTTPS API with mutual TLS: who may connect, who may call what.

A real uvicorn server with the project's own CA and certificates, on loopback. The matrix: no
client certificate, another CA, an expired certificate, a revoked one (refused at the TLS
handshake by the CRL the server loaded, and, revoked after start, by the application's check
of the current CRL), a certificate of the wrong role, and an update signed as another site.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.https_server import serve_app

from alliance.coordinator.service import CoordinatorService
from alliance.crypto import CertificateAuthority, Role, Signer, TrustStore
from alliance.crypto.tls import client_context, server_context
from alliance.protocol.codec import encode_signed
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import ModelUpdate
from alliance.store.audit import AuditLog, verify_audit_log
from alliance.store.sql import SqlStore
from alliance.transport.http import create_app


@dataclass
class Server:
    url: str
    root: Path
    ca: CertificateAuthority


def _bundle(ca: CertificateAuthority, root: Path, name: str, role: Role, **kw: object) -> Path:
    folder = root / name
    ca.issue(name, role, **kw).write(folder, stem="party")  # type: ignore[arg-type]
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("https")
    ca = CertificateAuthority.create("guardian")
    (root / "ca").mkdir()
    ca.save(root / "ca")
    coord = _bundle(ca, root, COORDINATOR, Role.COORDINATOR, hosts=["127.0.0.1", "localhost"])
    for site in ("site-a", "site-b", "revoked-site", "late-revoked"):
        _bundle(ca, root, site, Role.SITE)
    _bundle(ca, root, "operator", Role.OPERATOR)
    _bundle(
        ca,
        root,
        "expired-site",
        Role.SITE,
        not_before=datetime.now(UTC) - timedelta(days=10),
        valid_days=1,
    )
    ca.revoke("revoked-site")
    crl = root / "crl.pem"
    from cryptography.hazmat.primitives import serialization

    crl.write_bytes(ca.crl().public_bytes(serialization.Encoding.PEM))
    ca.save(root / "ca")
    rogue = CertificateAuthority.create("guardian")
    _bundle(rogue, root / "rogue", "site-a", Role.SITE)

    service = CoordinatorService(
        federation="guardian",
        store=SqlStore(f"sqlite:///{root / 'c.db'}"),
        signer=Signer.from_files(coord / "party.crt", coord / "signing.key"),
        trust=TrustStore.load(root / "ca" / "ca.crt", crl),
        audit=AuditLog(root / "audit.log", actor=COORDINATOR),
    )
    context = server_context(
        certificate=coord / "party.crt", key=coord / "party.key", ca=root / "ca" / "ca.crt", crl=crl
    )
    with serve_app(create_app(service), context) as port:
        yield Server(f"https://127.0.0.1:{port}", root, ca)
    service.store.close()


def _client(server: Server, party: str, *, base: Path | None = None) -> httpx.Client:
    folder = (base or server.root) / party
    context = client_context(
        certificate=folder / "party.crt", key=folder / "party.key", ca=server.root / "ca" / "ca.crt"
    )
    return httpx.Client(base_url=server.url, verify=context, timeout=10)


def _poll(client: httpx.Client) -> httpx.Response:
    with client:
        return client.get("/v1/messages/next", params={"wait": 0})


def test_a_site_with_its_certificate_is_served(server: Server) -> None:
    assert _poll(_client(server, "site-a")).status_code == 204


def test_no_client_certificate_is_refused_at_the_handshake(server: Server) -> None:
    context = ssl.create_default_context(cafile=server.root / "ca" / "ca.crt")
    with (
        pytest.raises(httpx.TransportError),
        httpx.Client(base_url=server.url, verify=context) as c,
    ):
        c.get("/v1/health")


@pytest.mark.parametrize(
    ("party", "base"),
    [("site-a", "rogue"), ("expired-site", None), ("revoked-site", None)],
    ids=["another CA", "expired", "revoked"],
)
def test_bad_certificates_are_refused_at_the_handshake(
    server: Server, party: str, base: str | None
) -> None:
    client = _client(server, party, base=None if base is None else server.root / base)
    with pytest.raises(httpx.TransportError):
        _poll(client)


def test_a_certificate_revoked_after_start_is_refused_by_the_current_crl(server: Server) -> None:
    from cryptography.hazmat.primitives import serialization

    assert _poll(_client(server, "late-revoked")).status_code == 204
    server.ca.revoke("late-revoked")
    (server.root / "crl.pem").write_bytes(server.ca.crl().public_bytes(serialization.Encoding.PEM))
    response = _poll(_client(server, "late-revoked"))
    assert response.status_code == 403
    assert "revoked" in response.json()["detail"]


def test_an_operator_cannot_poll_and_a_site_cannot_submit_studies(server: Server) -> None:
    response = _poll(_client(server, "operator"))
    assert response.status_code == 403
    assert "operator certificate" in response.json()["detail"]
    with _client(server, "site-a") as c:
        refused = c.post("/v1/studies", json={"spec": "[study]\nid='x'\nrounds=1\n"})
    assert refused.status_code == 403


def test_an_update_signed_as_another_site_is_refused(server: Server) -> None:
    """site-a's connection carrying an update signed with site-b's key and certificate."""
    b = server.root / "site-b"
    signer = Signer.from_files(b / "party.crt", b / "signing.key")
    header = Header(MessageKind.MODEL_UPDATE, "guardian", "s", 1, "site-b", COORDINATOR)
    update = ModelUpdate(header, 0, 5, {"w": np.zeros(3, np.float32)}, {"train_loss": 1.0})
    data = encode_signed(update.to_envelope(), signer)
    with _client(server, "site-a") as c:
        response = c.post(
            "/v1/updates", content=data, headers={"content-type": "application/octet-stream"}
        )
    assert response.status_code == 403
    assert "arrived over the connection of 'site-a'" in response.json()["detail"]
    report = verify_audit_log(server.root / "audit.log")
    assert report.ok
    assert any(
        "update_rejected" in line for line in (server.root / "audit.log").read_text().splitlines()
    )


def test_oversized_uploads_are_refused_before_they_are_read(server: Server) -> None:
    with _client(server, "site-a") as c:
        response = c.post(
            "/v1/updates",
            content=b"\0" * (2 << 20),
            headers={"content-type": "application/octet-stream"},
        )
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["detail"]


def test_the_openapi_spec_is_served(server: Server) -> None:
    with _client(server, "site-a") as c:
        spec = c.get("/openapi.json").json()
    assert {"/v1/messages/next", "/v1/updates", "/v1/studies"} <= set(spec["paths"])


def test_the_model_routes_are_in_the_spec_and_answer_404_for_no_model(server: Server) -> None:
    with _client(server, "site-a") as c:
        spec = c.get("/openapi.json").json()
        assert {"/v1/studies/{study_id}/model", "/v1/studies/{study_id}/model/card"} <= set(
            spec["paths"]
        )
        response = c.get("/v1/studies/nope/model")
    assert response.status_code == 404
    assert "no study 'nope'" in response.json()["detail"]
    with _client(server, "operator") as c:
        assert c.get("/v1/studies/nope/model/card", params={"version": 2}).status_code == 404
        assert c.get("/v1/studies/nope/model", params={"version": 0}).status_code == 400
