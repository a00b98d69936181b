"""Mutual TLS as Python's ssl really does it: real TLS 1.3 handshakes on 127.0.0.1.

The server is the coordinator's context; each test connects a client with some certificate
and checks that the handshake is accepted or refused, and for the reason expected.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from alliance.core.errors import ConfigError
from alliance.crypto import (
    CertificateAuthority,
    Role,
    TrustStore,
    client_context,
    peer_certificate_der,
    peer_identity_name,
    reload_crl,
    server_context,
)
from alliance.crypto.revocation import CrlNotices
from alliance.crypto.tls import follow_crl

TIMEOUT = 10.0


@dataclass
class Outcome:
    server_error: Exception | None = None
    client_error: Exception | None = None
    peer_name: str | None = None
    peer_der: bytes | None = None
    version: str | None = None

    @property
    def accepted(self) -> bool:
        return self.server_error is None and self.client_error is None


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, *, hostname: str = "127.0.0.1"
) -> Outcome:
    """Connect ``client`` to a one-shot server on 127.0.0.1 and exchange two bytes."""
    outcome = Outcome()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                with server.wrap_socket(conn, server_side=True) as tls:
                    outcome.peer_name = peer_identity_name(tls)
                    outcome.peer_der = peer_certificate_der(tls)
                    tls.sendall(b"ok")
        except Exception as exc:
            outcome.server_error = exc
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
            client.wrap_socket(raw, server_hostname=hostname) as tls,
        ):
            outcome.version = tls.version()
            # TLS 1.3: the server checks the client's certificate after the client is done,
            # so a refusal reaches the client as an alert on its first read.
            if tls.recv(2) != b"ok":
                raise ConnectionError("server closed the connection")
    except Exception as exc:
        outcome.client_error = exc
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    return outcome


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A consortium on disk: ca/, coordinator/, and one folder per client case."""
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create("tls-test")
    ca.issue("coordinator", Role.COORDINATOR, hosts=["localhost", "127.0.0.1"]).write(
        root / "coordinator", stem="party"
    )
    ca.issue("west-china", Role.SITE).write(root / "good", stem="party")
    ca.issue("operator", Role.OPERATOR).write(root / "operator", stem="party")
    start = datetime.now(UTC) - timedelta(days=10)
    ca.issue("old", Role.SITE, not_before=start, valid_days=2).write(root / "expired", stem="party")
    ca.issue("gone", Role.SITE).write(root / "revoked", stem="party")
    ca.revoke("gone")
    # A site certificate that names the server's address: only its key usage is wrong.
    ca.issue("poser", Role.SITE, hosts=["127.0.0.1"]).write(root / "poser", stem="party")
    ca.save(root / "ca")
    impostor = CertificateAuthority.create("tls-test")  # same name, other key
    impostor.issue("west-china", Role.SITE).write(root / "alien", stem="party")
    impostor.issue("coordinator", Role.COORDINATOR, hosts=["127.0.0.1"]).write(
        root / "alien-coordinator", stem="party"
    )
    impostor.save(root / "alien-ca")
    return root


def server_for(pki: Path, folder: str = "coordinator", ca: str = "ca") -> ssl.SSLContext:
    return server_context(
        certificate=pki / folder / "party.crt",
        key=pki / folder / "party.key",
        ca=pki / ca / "ca.crt",
        crl=pki / ca / "crl.pem",
    )


def client_for(pki: Path, folder: str) -> ssl.SSLContext:
    return client_context(
        certificate=pki / folder / "party.crt",
        key=pki / folder / "party.key",
        ca=pki / "ca" / "ca.crt",
    )


def verify_message(exc: Exception | None) -> str:
    assert isinstance(exc, ssl.SSLCertVerificationError), repr(exc)
    return str(exc.verify_message)


def test_contexts_are_tls13_mutual_and_trust_only_the_consortium(pki: Path) -> None:
    server = server_for(pki)
    assert server.minimum_version is ssl.TLSVersion.TLSv1_3
    assert server.maximum_version is ssl.TLSVersion.TLSv1_3
    assert server.verify_mode is ssl.CERT_REQUIRED
    assert server.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    client = client_for(pki, "good")
    assert client.minimum_version is ssl.TLSVersion.TLSv1_3
    assert client.check_hostname
    assert client.verify_mode is ssl.CERT_REQUIRED
    assert client.cert_store_stats()["x509_ca"] == 1  # the consortium root, no system roots


def test_valid_site_certificate_is_accepted(pki: Path) -> None:
    outcome = handshake(server_for(pki), client_for(pki, "good"))
    assert outcome.accepted, outcome
    assert outcome.version == "TLSv1.3"
    assert outcome.peer_name == "west-china"
    assert outcome.peer_der is not None
    trust = TrustStore.load(pki / "ca" / "ca.crt", pki / "ca" / "crl.pem")
    identity = trust.verify(outcome.peer_der, role=Role.SITE, name="west-china")
    assert identity.name == "west-china"


def test_operator_is_accepted_and_localhost_matches(pki: Path) -> None:
    outcome = handshake(server_for(pki), client_for(pki, "operator"), hostname="localhost")
    assert outcome.accepted, outcome
    assert outcome.peer_name == "operator"


def test_client_without_certificate_is_refused(pki: Path) -> None:
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(cafile=pki / "ca" / "ca.crt")
    outcome = handshake(server_for(pki), anonymous)
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(outcome.server_error)
    assert outcome.client_error is not None
    assert outcome.peer_name is None


def test_client_certificate_of_another_ca_is_refused(pki: Path) -> None:
    alien = client_context(
        certificate=pki / "alien" / "party.crt",
        key=pki / "alien" / "party.key",
        ca=pki / "ca" / "ca.crt",
    )
    outcome = handshake(server_for(pki), alien)
    assert "unable to get local issuer certificate" in verify_message(outcome.server_error)
    assert outcome.client_error is not None


def test_expired_client_certificate_is_refused(pki: Path) -> None:
    outcome = handshake(server_for(pki), client_for(pki, "expired"))
    assert verify_message(outcome.server_error) == "certificate has expired"
    assert outcome.client_error is not None


def test_revoked_client_certificate_is_refused(pki: Path) -> None:
    outcome = handshake(server_for(pki), client_for(pki, "revoked"))
    assert verify_message(outcome.server_error) == "certificate revoked"
    assert outcome.client_error is not None


def test_tls12_client_is_refused(pki: Path) -> None:
    old = client_for(pki, "good")
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_2
    outcome = handshake(server_for(pki), old)
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert isinstance(outcome.client_error, ssl.SSLError)


def test_client_refuses_a_server_of_another_ca(pki: Path) -> None:
    outcome = handshake(server_for(pki, "alien-coordinator", "alien-ca"), client_for(pki, "good"))
    # The server sends the foreign root along: OpenSSL names that root, or the missing issuer.
    assert verify_message(outcome.client_error) in {
        "self-signed certificate in certificate chain",
        "unable to get local issuer certificate",
    }


def test_client_checks_the_coordinator_host_name(pki: Path) -> None:
    outcome = handshake(server_for(pki), client_for(pki, "good"), hostname="other.example.org")
    assert "Hostname mismatch" in verify_message(outcome.client_error)


def test_client_refuses_a_site_certificate_posing_as_the_coordinator(pki: Path) -> None:
    outcome = handshake(server_for(pki, "poser"), client_for(pki, "good"))
    assert verify_message(outcome.client_error) == "unsuitable certificate purpose"


def test_reloading_the_crl_revokes_on_a_live_context(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("reload-test")
    ca.issue("coordinator", Role.COORDINATOR, hosts=["127.0.0.1"]).write(tmp_path, stem="coord")
    ca.issue("late", Role.SITE).write(tmp_path / "late", stem="site")
    ca.save(tmp_path / "ca")
    server = server_context(
        certificate=tmp_path / "coord.crt",
        key=tmp_path / "coord.key",
        ca=tmp_path / "ca" / "ca.crt",
        crl=tmp_path / "ca" / "crl.pem",
    )
    client = client_context(
        certificate=tmp_path / "late" / "site.crt",
        key=tmp_path / "late" / "site.key",
        ca=tmp_path / "ca" / "ca.crt",
    )
    assert handshake(server, client).accepted
    ca.revoke("late")
    ca.crl()  # lastUpdate strictly later than the first CRL's
    ca.save(tmp_path / "ca")
    # OpenSSL prefers a CRL that is already valid: wait out the new one's lastUpdate, which
    # the CA may have stamped up to a second ahead to keep CRLs strictly ordered.
    new = x509.load_pem_x509_crl((tmp_path / "ca" / "crl.pem").read_bytes())
    time.sleep(max(0.0, (new.last_update_utc - datetime.now(UTC)).total_seconds() + 0.05))
    reload_crl(server, tmp_path / "ca" / "crl.pem")
    outcome = handshake(server, client)
    assert verify_message(outcome.server_error) == "certificate revoked"


def test_a_followed_context_takes_a_renewed_crl_at_the_next_handshake(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An expired CRL refuses everyone; renewing the file ends that, no new context needed."""
    ca = CertificateAuthority.create("follow-test")
    ca.issue("coordinator", Role.COORDINATOR, hosts=["127.0.0.1"]).write(tmp_path, stem="coord")
    ca.issue("west-china", Role.SITE).write(tmp_path / "site", stem="site")
    ca.crl(valid_days=1, now=datetime.now(UTC) - timedelta(days=2))
    ca.save(tmp_path / "ca")
    crl = tmp_path / "ca" / "crl.pem"
    paths = {"certificate": tmp_path / "coord.crt", "key": tmp_path / "coord.key"}
    server = server_context(**paths, ca=tmp_path / "ca" / "ca.crt", crl=crl)
    trust = TrustStore.load(tmp_path / "ca" / "ca.crt", crl, floor=tmp_path / "floor.json")
    with caplog.at_level(logging.INFO, logger="alliance.crypto"):
        follow_crl(server, trust, CrlNotices(crl))
    assert any("expired on" in r.getMessage() for r in caplog.records)  # said at start
    client = client_context(
        certificate=tmp_path / "site" / "site.crt",
        key=tmp_path / "site" / "site.key",
        ca=tmp_path / "ca" / "ca.crt",
    )
    assert verify_message(handshake(server, client).server_error) == "CRL has expired"
    expired = crl.read_bytes()
    ca.crl()
    ca.save(tmp_path / "ca")
    with caplog.at_level(logging.INFO, logger="alliance.crypto"):
        assert handshake(server, client).accepted
    assert any(
        "TLS now checks clients against CRL number 2" in r.getMessage() for r in caplog.records
    )
    # Copying the expired list back changes nothing for the live context, and is said once.
    crl.write_bytes(expired)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="alliance.crypto"):
        assert handshake(server, client).accepted
        assert handshake(server, client).accepted
    refusals = [r for r in caplog.records if "refused the new file" in r.getMessage()]
    assert len(refusals) == 1
    assert "is CRL number 1, older than the CRL in use (number 2)" in refusals[0].getMessage()


def test_unusable_files_raise_config_errors(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TLS certificate file .* does not exist"):
        client_context(certificate=tmp_path / "x.crt", key=tmp_path / "x.key", ca=tmp_path)
    with pytest.raises(ConfigError, match=r"with key .*use the \.crt and \.key of the same bundle"):
        client_context(
            certificate=pki / "good" / "party.crt",
            key=pki / "operator" / "party.key",
            ca=pki / "ca" / "ca.crt",
        )
    with pytest.raises(ConfigError, match=r"TLS CA file .* is not a PEM certificate"):
        client_context(
            certificate=pki / "good" / "party.crt",
            key=pki / "good" / "party.key",
            ca=pki / "good" / "signing.key",
        )
    with pytest.raises(ConfigError, match=r"TLS CRL file .* does not exist"):
        server_context(
            certificate=pki / "coordinator" / "party.crt",
            key=pki / "coordinator" / "party.key",
            ca=pki / "ca" / "ca.crt",
            crl=tmp_path / "none.pem",
        )


def test_a_folder_or_an_unreadable_file_in_place_of_a_tls_file_is_named(
    pki: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "party.key"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"TLS key file .*party\.key is not a file"):
        server_context(
            certificate=pki / "coordinator" / "party.crt",
            key=folder,
            ca=pki / "ca" / "ca.crt",
            crl=None,
        )
    if os.geteuid() == 0:
        return  # root reads any file: the unreadable case needs an ordinary user
    locked = tmp_path / "locked.key"
    locked.write_bytes((pki / "coordinator" / "party.key").read_bytes())
    locked.chmod(0)
    with pytest.raises(ConfigError, match=r"locked\.key cannot be read by this user"):
        server_context(
            certificate=pki / "coordinator" / "party.crt",
            key=locked,
            ca=pki / "ca" / "ca.crt",
            crl=None,
        )
