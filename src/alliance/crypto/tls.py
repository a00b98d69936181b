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

A context cannot forget a CRL, but OpenSSL uses the newest CRL of an issuer that is in its
validity window (then by ``lastUpdate``), so :func:`reload_crl` adds a re-signed CRL to a live
server context and new handshakes honour it. :func:`follow_crl` does so by itself: at the start
of every handshake (OpenSSL's server-name callback, before the client's certificate is checked)
it asks the :class:`~alliance.crypto.pki.TrustStore` for its CRL, which costs one ``stat``
unless the file changed, and adds a new one to the context. A renewed CRL therefore ends the
outage an expired one causes, without a restart; a file the trust store refuses (an older CRL,
another CA's, not a CRL) is logged once and the context keeps the CRL it has.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from alliance.core.errors import ConfigError
from alliance.crypto.pki import TrustStore
from alliance.crypto.revocation import CrlNotices, crl_number

__all__ = [
    "client_context",
    "follow_crl",
    "peer_certificate_der",
    "peer_identity_name",
    "reload_crl",
    "server_context",
]

logger = logging.getLogger(__name__)


def _require(path: Path, what: str) -> str:
    if Path(path).exists() and not Path(path).is_file():
        raise ConfigError(f"TLS {what} file {path} is not a file; check the [tls] section")
    if not Path(path).is_file():
        raise ConfigError(f"TLS {what} file {path} does not exist; check the [tls] section")
    if not os.access(path, os.R_OK):
        # OpenSSL would raise a bare PermissionError from deep inside the context.
        raise ConfigError(
            f"TLS {what} file {path} cannot be read by this user (permission denied); give "
            "the service's user read access to it"
        )
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
    _load_crl(context, crl)
    logger.info("loaded CRL %s into the TLS context", crl)


def _load_crl(context: ssl.SSLContext, crl: Path) -> None:
    try:
        context.load_verify_locations(cafile=_require(crl, "CRL"))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"TLS CRL file {crl} is not a PEM CRL: {exc.reason or exc}; copy crl.pem again "
            "from the consortium's ca/ folder"
        ) from None


def follow_crl(context: ssl.SSLContext, trust: TrustStore, notices: CrlNotices) -> None:
    """Keep a live server context's CRL that of ``trust``'s CRL file, checked per handshake.

    Parameters
    ----------
    context
        A :func:`server_context` built with a CRL.
    trust
        The trust store loaded with the same CRL file (and the party's CRL floor).
    notices
        Logs an expired or soon expiring CRL, at most once a day (an hour when expired).
    """
    current = trust.crl
    refused: list[str] = []

    def before_handshake(
        _ssl_object: ssl.SSLObject, _server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        nonlocal current
        try:
            trust.reload_crl()
        except ConfigError as exc:
            if refused != [str(exc)]:  # once per distinct refusal, not once per handshake
                refused[:] = [str(exc)]
                logger.error("kept the CRL in use, refused the new file: %s", exc)
        else:
            refused.clear()
        crl = trust.crl
        if crl is not None and crl is not current:
            try:
                _add_crl(ctx, crl)
                current = crl
            except ConfigError as exc:
                logger.error("%s", exc)
        notices.check(current)

    context.sni_callback = before_handshake
    notices.check(current)


def _add_crl(context: ssl.SSLContext, crl: x509.CertificateRevocationList) -> None:
    """Add a CRL already checked by the trust store (its bytes, not the file, which may change)."""
    # Python reads CRLs only from a file (cadata takes certificates), so the checked bytes go
    # through a private temporary one.
    with tempfile.TemporaryDirectory(prefix="alliance-crl-") as folder:
        path = Path(folder) / "crl.pem"
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        _load_crl(context, path)
    logger.info("TLS now checks clients against CRL number %d", crl_number(crl))


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
