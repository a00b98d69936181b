"""TLS contexts for the consortium's mutual TLS: TLS 1.3 only, consortium root only.

Design
------
The coordinator serves HTTPS with :func:`server_context`: TLS 1.3, a client certificate is
mandatory, and it must chain to the consortium root (never the system's roots). With a CRL,
OpenSSL checks the client's certificate against it (``VERIFY_CRL_CHECK_LEAF``), so a revoked
site fails the handshake itself. Sites and the operator connect with :func:`client_context`,
which trusts only the consortium root and checks the coordinator's host name.

A handshake proves the peer holds *some* certificate of the consortium with the right key
usage (``clientAuth`` for clients, ``serverAuth`` for the coordinator). Which party it is,
and whether its role fits the request, is decided by the application with
:meth:`alliance.crypto.pki.TrustStore.verify` on :func:`peer_certificate_der`.

A context cannot forget a CRL, but OpenSSL uses the newest CRL of an issuer (by
``lastUpdate``), so :func:`reload_crl` adds a re-signed CRL to a live server context and new
handshakes honour it.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from alliance.core.errors import ConfigError

__all__ = [
    "client_context",
    "peer_certificate_der",
    "peer_identity_name",
    "reload_crl",
    "server_context",
]

logger = logging.getLogger(__name__)


def _require(path: Path, what: str) -> str:
    if not Path(path).is_file():
        raise ConfigError(f"TLS {what} file {path} does not exist; check the [tls] section")
    return str(path)


def _load_chain(context: ssl.SSLContext, certificate: Path, key: Path) -> None:
    cert_file, key_file = _require(certificate, "certificate"), _require(key, "key")
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"cannot use TLS certificate {certificate} with key {key}: {exc.reason or exc}; "
            "use the .crt and .key of the same bundle"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=_require(ca, "CA"))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"TLS CA file {ca} is not a PEM certificate: {exc.reason or exc}; copy ca.crt "
            "again from the consortium bundle"
        ) from None


def server_context(*, certificate: Path, key: Path, ca: Path, crl: Path | None) -> ssl.SSLContext:
    """The coordinator's TLS context: TLS 1.3, client certificates of the consortium required.

    Parameters
    ----------
    certificate, key
        The coordinator's certificate and TLS key (PEM).
    ca
        The consortium root certificate; the only trust anchor.
    crl
        The consortium CRL (PEM); when given, revoked client certificates fail the handshake.
        An expired CRL makes every handshake fail: renew it in time.

    Raises
    ------
    ConfigError
        A file is missing or unusable.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    _load_chain(context, certificate, key)
    _load_ca(context, ca)
    if crl is not None:
        reload_crl(context, crl)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def reload_crl(context: ssl.SSLContext, crl: Path) -> None:
    """Add the CRL file to a (live) context; new handshakes use the newest CRL loaded.

    Raises
    ------
    ConfigError
        The file is missing or not a PEM CRL.
    """
    try:
        context.load_verify_locations(cafile=_require(crl, "CRL"))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"TLS CRL file {crl} is not a PEM CRL: {exc.reason or exc}; copy crl.pem again "
            "from the consortium's ca/ folder"
        ) from None
    logger.info("loaded CRL %s into the TLS context", crl)


def client_context(*, certificate: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """A site's or operator's TLS context: TLS 1.3, trusts only the consortium root.

    The coordinator's host name (or IP address) is checked against its certificate.

    Raises
    ------
    ConfigError
        A file is missing or unusable.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    _load_chain(context, certificate, key)
    _load_ca(context, ca)
    return context


def peer_certificate_der(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """The peer's certificate (DER) after the handshake, for :meth:`TrustStore.verify`."""
    return ssl_object.getpeercert(binary_form=True)


def peer_identity_name(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The ``CN`` of the peer's verified certificate, or ``None`` without one.

    A name only: use :meth:`alliance.crypto.pki.TrustStore.verify` to check role and
    revocation before trusting it.
    """
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    subject = cert.get("subject", ())
    for rdn in subject if isinstance(subject, tuple) else ():
        for attribute in rdn:
            if len(attribute) == 2 and attribute[0] == "commonName":
                return str(attribute[1])
    return None
