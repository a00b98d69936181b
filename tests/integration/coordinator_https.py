"""A real coordinator HTTPS server on loopback for the request-handling tests.

The consortium CA, the coordinator's certificate and every caller's certificate come from the
project's own provisioning (:class:`~alliance.crypto.CertificateAuthority`); the server is
uvicorn with the coordinator's mutual-TLS context, serving :func:`create_app` over a real
:class:`CoordinatorService` and SQLite store, in a thread of the test process.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tests.https_server import serve_app

from alliance.coordinator.service import CoordinatorService
from alliance.crypto import CertificateAuthority, Role, Signer, TrustStore
from alliance.crypto.tls import client_context, server_context
from alliance.protocol.envelope import COORDINATOR
from alliance.store.audit import AuditLog
from alliance.store.sql import SqlStore
from alliance.transport.http import create_app

FEDERATION = "guardian"


@dataclass
class Running:
    """A coordinator serving on ``url``; callers' certificates under ``root/<name>``."""

    url: str
    port: int
    root: Path
    service: CoordinatorService

    def context(self, party: str) -> ssl.SSLContext:
        """The TLS client context of ``party``."""
        folder = self.root / party
        return client_context(
            certificate=folder / "party.crt",
            key=folder / "party.key",
            ca=self.root / "ca" / "ca.crt",
        )

    def client(self, party: str, *, timeout: float = 30.0) -> httpx.Client:
        """An httpx client with ``party``'s certificate."""
        return httpx.Client(base_url=self.url, verify=self.context(party), timeout=timeout)

    def raw(self, party: str) -> ssl.SSLSocket:
        """A bare TLS socket with ``party``'s certificate, for requests httpx will not send."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.context(party).wrap_socket(sock, server_hostname="127.0.0.1")


def provision(root: Path, sites: list[str], operators: tuple[str, ...] = ("operator",)) -> None:
    """A consortium CA, the coordinator's certificate and one per site and operator."""
    ca = CertificateAuthority.create(FEDERATION)
    ca.issue(COORDINATOR, Role.COORDINATOR, hosts=["127.0.0.1"]).write(
        root / COORDINATOR, stem="party"
    )
    for site in sites:
        ca.issue(site, Role.SITE).write(root / site, stem="party")
    for operator in operators:
        ca.issue(operator, Role.OPERATOR).write(root / operator, stem="party")
    (root / "ca").mkdir()
    ca.save(root / "ca")


@contextmanager
def serving(root: Path, **limits: Any) -> Iterator[Running]:
    """Serve a fresh coordinator for the consortium provisioned under ``root``.

    ``limits`` go to :func:`create_app` (per-identity concurrency, body sizes and timeouts).
    """
    coord = root / COORDINATOR
    service = CoordinatorService(
        federation=FEDERATION,
        store=SqlStore(f"sqlite:///{root / 'coordinator.db'}"),
        signer=Signer.from_files(coord / "party.crt", coord / "signing.key"),
        trust=TrustStore.load(root / "ca" / "ca.crt", None),
        audit=AuditLog(root / "audit.log", actor=COORDINATOR),
    )
    context = server_context(
        certificate=coord / "party.crt",
        key=coord / "party.key",
        ca=root / "ca" / "ca.crt",
        crl=None,
    )
    with (
        closing(service.store),
        serve_app(create_app(service, **limits), context, stop_s=15) as port,
    ):
        try:
            yield Running(f"https://127.0.0.1:{port}", port, root, service)
        finally:
            service.stop()
