"""Message signatures: Ed25519 over byte strings, keys bound to consortium certificates.

Design
------
Every party signs what it sends with its Ed25519 *signing key*, whose public half its
certificate binds (:data:`alliance.crypto.pki.SIGNING_KEY_OID`). A receiver verifies the
sender's certificate with its :class:`~alliance.crypto.pki.TrustStore`, which yields an
:class:`~alliance.crypto.pki.Identity` carrying the public key, then checks the signature with
:func:`verify_signature`. TLS authenticates the channel; signatures keep a message
attributable after it has left the channel (stored, audited, relayed).

This module signs and verifies opaque byte strings only. What exactly is signed (the framing
of a message, its header, domain separation) is the protocol codec's business.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from alliance.core.errors import ConfigError, IntegrityError
from alliance.crypto.pki import (
    SIGNING_KEY_OID,
    Identity,
    load_certificate,
    load_signing_key,
    signing_public_key,
    subject_attribute,
)

__all__ = ["SIGNATURE_SIZE", "Signer", "verify_signature"]

logger = logging.getLogger(__name__)

#: Length in bytes of an Ed25519 signature.
SIGNATURE_SIZE = 64

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Signer:
    """A party's signing key together with the certificate that binds it.

    Parameters
    ----------
    signing_key
        The party's Ed25519 private key (``signing.key`` of its bundle).
    certificate
        The party's certificate (``site.crt``, ``coordinator.crt`` or ``operator.crt``).

    Raises
    ------
    ConfigError
        The certificate binds no signing key, or a different one.
    """

    def __init__(
        self, signing_key: ed25519.Ed25519PrivateKey, certificate: x509.Certificate
    ) -> None:
        name = subject_attribute(certificate, NameOID.COMMON_NAME)
        bound = signing_public_key(certificate)
        if bound is None:
            raise ConfigError(
                f"certificate of {name!r} binds no signing key (extension "
                f"{SIGNING_KEY_OID.dotted_string}); reissue it with alliance consortium"
            )
        if signing_key.public_key().public_bytes(*_RAW) != bound.public_bytes(*_RAW):
            raise ConfigError(
                f"signing key does not match the certificate of {name!r}; use the "
                "signing.key from the same bundle as the certificate"
            )
        if name is None:
            raise ConfigError("certificate has no common name; use a consortium certificate")
        self._key = signing_key
        self._certificate = certificate
        self._der = certificate.public_bytes(serialization.Encoding.DER)
        self._name = name

    @classmethod
    def from_files(cls, certificate: Path, signing_key: Path) -> Signer:
        """Load the certificate and signing key files of a party's bundle."""
        key, cert = load_signing_key(signing_key), load_certificate(certificate)
        try:
            return cls(key, cert)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (files {certificate}, {signing_key})") from None

    @property
    def name(self) -> str:
        """The party's name (the certificate's ``CN``)."""
        return self._name

    @property
    def certificate(self) -> x509.Certificate:
        """The party's certificate."""
        return self._certificate

    @property
    def certificate_der(self) -> bytes:
        """The certificate's DER encoding, to send along with signed messages."""
        return self._der

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey:
        """The public half of the signing key."""
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(bytes(data))


def verify_signature(identity: Identity, data: bytes, signature: bytes) -> None:
    """Check that ``signature`` is ``identity``'s Ed25519 signature of ``data``.

    Raises
    ------
    IntegrityError
        The signature is malformed or does not verify under the identity's signing key.
    """
    if len(signature) != SIGNATURE_SIZE:
        raise IntegrityError(
            f"signature of {identity.name} is {len(signature)} bytes, expected "
            f"{SIGNATURE_SIZE}; the message is corrupt or not signed"
        )
    try:
        identity.signing_key.verify(bytes(signature), bytes(data))
    except InvalidSignature:
        raise IntegrityError(
            f"signature of {identity.name} does not verify: the message was altered or not "
            f"signed by {identity.role.value} {identity.name!r} (certificate serial "
            f"{identity.serial:x}); discard it"
        ) from None
