"""The consortium's public-key infrastructure: certificates, message signatures, mutual TLS.

One offline root (:class:`CertificateAuthority`) certifies every party; each certificate binds
the party's ECDSA P-256 TLS key and its Ed25519 message-signing key; a hospital makes both
itself and sends a :class:`SiteRequest` (:mod:`alliance.crypto.enrolment`). Every party checks the
others with a :class:`TrustStore` (root + CRL), authenticates channels with the TLS contexts
of :mod:`alliance.crypto.tls`, and signs messages with a :class:`Signer`. This package sits
just above :mod:`alliance.core`; how messages are framed for signing belongs to the protocol.
"""

from alliance.crypto.authority import CertificateAuthority, IssuedParty, IssuedRecord
from alliance.crypto.enrolment import (
    SiteRequest,
    install_certificate,
    make_site_keys,
    read_request,
)
from alliance.crypto.pki import (
    PASSPHRASE_ENV,
    SIGNING_KEY_OID,
    Identity,
    Role,
    TrustStore,
    check_party_name,
    fingerprint,
    load_certificate,
    load_private_key,
    load_signing_key,
    signing_public_key,
)
from alliance.crypto.signing import SIGNATURE_SIZE, Signer, verify_signature
from alliance.crypto.tls import (
    client_context,
    peer_certificate_der,
    peer_identity_name,
    reload_crl,
    server_context,
)

__all__ = [
    "PASSPHRASE_ENV",
    "SIGNATURE_SIZE",
    "SIGNING_KEY_OID",
    "CertificateAuthority",
    "Identity",
    "IssuedParty",
    "IssuedRecord",
    "Role",
    "Signer",
    "SiteRequest",
    "TrustStore",
    "check_party_name",
    "client_context",
    "fingerprint",
    "install_certificate",
    "load_certificate",
    "load_private_key",
    "load_signing_key",
    "make_site_keys",
    "peer_certificate_der",
    "peer_identity_name",
    "read_request",
    "reload_crl",
    "server_context",
    "signing_public_key",
    "verify_signature",
]
