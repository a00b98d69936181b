"""A hospital's keys, born at the hospital: its certificate signing request and its proof.

Design
------
A hospital makes its own ECDSA P-256 TLS key and Ed25519 message-signing key, and sends the
consortium only a PKCS#10 certificate signing request (``site.csr``, PEM). The private keys
never leave the hospital's folder, so whoever runs provisioning can neither sign as the
hospital nor open what is sealed to it (its X25519 sealing key derives from the signing key).

The request binds both public keys to the site's name, the way a certificate does:

* its subject is ``CN=<site>, OU=site``; its public key is the TLS key, and it is signed with
  the TLS key (PKCS#10's own proof of possession);
* it carries the Ed25519 public key in the :data:`~alliance.crypto.pki.SIGNING_KEY_OID`
  extension (as the certificate will), and in the :data:`SIGNING_PROOF_OID` extension the
  Ed25519 signature of ``label || site name || 0x00 || DER(TLS public key)``: the proof that
  the requester holds the signing key, tied to this name and this TLS key.

The TLS signature covers both extensions, so neither key, the name nor the proof can be
changed without breaking it. :func:`read_request` checks all of it; the consortium reads the
request's fingerprint (SHA-256 of its DER) to the hospital over another channel before
signing (:meth:`~alliance.crypto.authority.CertificateAuthority.issue_request`).

A hospital folder holds ``site.key`` and ``signing.key`` (mode 0600), ``site.csr`` and, once
installed, ``site.crt`` and ``ca.crt``. A key rotation writes the new keys as
``site.next.key`` and ``signing.next.key`` beside the keys in use, so the site keeps running
until the new certificate arrives; :func:`install_certificate` then moves them into place.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from alliance.core.errors import ConfigError, IntegrityError
from alliance.crypto.keyfiles import (
    load_certificate,
    load_private_key,
    load_signing_key,
    read_file,
    write_file,
)
from alliance.crypto.pki import (
    SIGNING_KEY_OID,
    Role,
    TrustStore,
    check_party_name,
    signing_public_key,
    subject_attribute,
)

__all__ = [
    "KEY_FILES",
    "NEXT_KEY_FILES",
    "SIGNING_PROOF_OID",
    "Installed",
    "SiteRequest",
    "install_certificate",
    "key_fingerprint",
    "make_site_keys",
    "read_request",
    "read_request_file",
]

logger = logging.getLogger(__name__)

#: OID of the request extension holding the Ed25519 proof of possession (a ``2.25`` UUID OID,
#: UUID ``811f19cc-91f5-45f6-9dcb-b348db475aed``; fixed forever, like ``SIGNING_KEY_OID``).
SIGNING_PROOF_OID = x509.ObjectIdentifier("2.25.171631895926825815105218381987308853997")

_PROOF_LABEL = b"guardian-alliance site request v1\x00"
_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_PKCS8 = serialization.PrivateFormat.PKCS8
_NONE = serialization.NoEncryption()
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)

#: File names in a hospital's folder: the keys in use, the keys of a pending rotation.
KEY_FILES = ("site.key", "signing.key")
NEXT_KEY_FILES = ("site.next.key", "signing.next.key")


def key_fingerprint(key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> str:
    """SHA-256 of a public key's DER ``SubjectPublicKeyInfo``, lowercase hex."""
    return hashlib.sha256(key.public_bytes(_DER, _SPKI)).hexdigest()


def _proof_message(name: str, tls_public_key: ec.EllipticCurvePublicKey) -> bytes:
    return _PROOF_LABEL + name.encode("ascii") + b"\x00" + tls_public_key.public_bytes(_DER, _SPKI)


@dataclass(frozen=True)
class SiteRequest:
    """A certificate signing request whose signatures and proofs :func:`read_request` checked.

    Parameters
    ----------
    name
        The site the request is for (its ``CN``).
    tls_public_key, signing_public_key
        The public halves of the hospital's TLS and message-signing keys.
    csr
        The PKCS#10 request itself.
    """

    name: str
    tls_public_key: ec.EllipticCurvePublicKey
    signing_public_key: ed25519.Ed25519PublicKey
    csr: x509.CertificateSigningRequest

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the request's DER encoding, lowercase hex: read it out of band."""
        return hashlib.sha256(self.csr.public_bytes(_DER)).hexdigest()

    @property
    def tls_key_fingerprint(self) -> str:
        """SHA-256 of the TLS public key (:func:`key_fingerprint`)."""
        return key_fingerprint(self.tls_public_key)

    @property
    def signing_key_fingerprint(self) -> str:
        """SHA-256 of the message-signing public key (:func:`key_fingerprint`)."""
        return key_fingerprint(self.signing_public_key)

    def pem(self) -> bytes:
        """The request as PEM, as written to ``site.csr``."""
        return self.csr.public_bytes(_PEM)


def _build_request(
    name: str, tls_key: ec.EllipticCurvePrivateKey, signing_key: ed25519.Ed25519PrivateKey
) -> x509.CertificateSigningRequest:
    proof = signing_key.sign(_proof_message(name, tls_key.public_key()))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, Role.SITE.value),
        ]
    )
    raw_signing = signing_key.public_key().public_bytes(*_RAW)
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.UnrecognizedExtension(SIGNING_KEY_OID, raw_signing), critical=False)
        .add_extension(x509.UnrecognizedExtension(SIGNING_PROOF_OID, proof), critical=False)
        .sign(tls_key, hashes.SHA256())
    )


def _refuse(where: str, what: str) -> ConfigError:
    return ConfigError(
        f"certificate request {where} {what}; do not sign it: ask the hospital to run "
        "'alliance site init' again and to send its new site.csr"
    )


def _extension(csr: x509.CertificateSigningRequest, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        value = csr.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def read_request(data: bytes, *, where: str) -> SiteRequest:
    """Parse a site's ``site.csr`` and check every signature and proof in it.

    Parameters
    ----------
    data
        The request file's bytes (PEM).
    where
        The file's name, for messages.

    Raises
    ------
    ConfigError
        The file is not a PEM request, or its TLS signature (PKCS#10 proof of possession),
        its site name, its signing key or the signing key's proof of possession is wrong.
    """
    try:
        csr = x509.load_pem_x509_csr(data)
        tls_public_key = csr.public_key()
        signature_ok = csr.is_signature_valid
        name = subject_attribute_of(csr, NameOID.COMMON_NAME)
        role = subject_attribute_of(csr, NameOID.ORGANIZATIONAL_UNIT_NAME)
        raw_signing = _extension(csr, SIGNING_KEY_OID)
        proof = _extension(csr, SIGNING_PROOF_OID)
    except (ValueError, TypeError, UnicodeError, x509.DuplicateExtension):
        raise _refuse(where, "is not a PEM certificate signing request") from None
    if not isinstance(tls_public_key, ec.EllipticCurvePublicKey) or not isinstance(
        tls_public_key.curve, ec.SECP256R1
    ):
        raise _refuse(where, "does not carry an ECDSA P-256 TLS key")
    if not signature_ok:
        raise _refuse(where, "has a signature its TLS key did not make (altered or forged)")
    if role != Role.SITE.value:
        raise _refuse(where, f"asks for role {role!r}, not 'site'")
    try:
        check_party_name(name, field="site name")
    except ConfigError as exc:
        raise _refuse(where, f"names no valid site ({exc})") from None
    assert name is not None
    if raw_signing is None or len(raw_signing) != 32:
        raise _refuse(where, "carries no Ed25519 message-signing key")
    signing_key = ed25519.Ed25519PublicKey.from_public_bytes(raw_signing)
    try:
        signing_key.verify(proof or b"", _proof_message(name, tls_public_key))
    except InvalidSignature:
        raise _refuse(
            where, "has no valid proof that its maker holds the message-signing key"
        ) from None
    return SiteRequest(name, tls_public_key, signing_key, csr)


def subject_attribute_of(
    csr: x509.CertificateSigningRequest, oid: x509.ObjectIdentifier
) -> str | None:
    """The first value of ``oid`` in the request's subject, or ``None``."""
    values = csr.subject.get_attributes_for_oid(oid)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


def make_site_keys(directory: Path, name: str, *, rotate: bool = False) -> SiteRequest:
    """Make a hospital's keys in ``directory`` and write its request ``site.csr``.

    Parameters
    ----------
    directory
        The hospital's folder (created with mode 0700 if missing).
    name
        The site's id, as the consortium knows it.
    rotate
        Make the keys of a rotation: written as ``site.next.key`` and ``signing.next.key``
        beside the keys in use, which stay until the new certificate is installed.

    Raises
    ------
    ConfigError
        Invalid name; keys already there (without ``rotate``), or nothing to rotate, or a
        rotation already pending (with it). A key file is never overwritten.
    """
    check_party_name(name, field="site name")
    directory = Path(directory)
    files = NEXT_KEY_FILES if rotate else KEY_FILES
    if rotate:
        current = directory / "site.crt"
        if not current.is_file():
            raise ConfigError(
                f"{directory} holds no installed site.crt to rotate; run 'alliance site init' "
                "without --rotate for a new site"
            )
        holder = subject_attribute(load_certificate(current), NameOID.COMMON_NAME)
        if holder != name:
            raise ConfigError(f"{current} is the certificate of {holder!r}, not of {name!r}")
    for file in files:
        if (directory / file).exists():
            hint = (
                "a rotation is already pending: install its certificate with 'alliance site "
                "install-cert', or delete site.next.key and signing.next.key to start over"
                if rotate
                else "this hospital already has keys; to replace them give --rotate"
            )
            raise ConfigError(f"{directory / file} exists: {hint}")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    signing_key = ed25519.Ed25519PrivateKey.generate()
    write_file(directory / files[0], tls_key.private_bytes(_PEM, _PKCS8, _NONE), mode=0o600)
    write_file(directory / files[1], signing_key.private_bytes(_PEM, _PKCS8, _NONE), mode=0o600)
    csr = _build_request(name, tls_key, signing_key)
    request = read_request(csr.public_bytes(_PEM), where=str(directory / "site.csr"))
    write_file(directory / "site.csr", request.pem())
    logger.info("made the %skeys of site %r in %s", "rotation " if rotate else "", name, directory)
    return request


@dataclass(frozen=True)
class Installed:
    """What :func:`install_certificate` did: the certificate and whether keys were rotated."""

    certificate: x509.Certificate
    rotated: bool


def _matches(directory: Path, files: tuple[str, str], certificate: x509.Certificate) -> bool:
    tls_path, signing_path = (directory / f for f in files)
    if not tls_path.is_file() or not signing_path.is_file():
        return False
    tls = load_private_key(tls_path).public_key()
    signing = load_signing_key(signing_path).public_key()
    bound = signing_public_key(certificate)
    return (
        key_fingerprint(tls) == key_fingerprint(_ec_key(certificate))
        and bound is not None
        and bound.public_bytes(*_RAW) == signing.public_bytes(*_RAW)
    )


def _ec_key(certificate: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise IntegrityError("the certificate does not carry an ECDSA TLS key")
    return key


def install_certificate(directory: Path, certificate: Path, ca: Path) -> Installed:
    """Install the consortium's answer to this hospital's request in ``directory``.

    Checks that ``certificate`` was issued by the root ``ca`` to a site and that it binds this
    hospital's keys: the pending rotation keys (then moved into place as ``site.key`` and
    ``signing.key``) or the keys in use. Writes ``site.crt`` and, if missing, ``ca.crt``.

    Raises
    ------
    ConfigError
        A file is unusable, ``ca`` differs from the root already installed, or the
        certificate binds neither key pair of this folder.
    IntegrityError
        The certificate is not a valid site certificate of the root ``ca``.
    """
    directory = Path(directory)
    cert = load_certificate(certificate)
    root = load_certificate(ca)
    installed_root = directory / "ca.crt"
    if installed_root.exists() and load_certificate(installed_root) != root:
        raise ConfigError(
            f"{ca} is not the consortium root already in {installed_root}; the certificate "
            "comes from another consortium"
        )
    identity = TrustStore(root).verify(cert, role=Role.SITE)
    rotated = _matches(directory, NEXT_KEY_FILES, cert)
    if not rotated and not _matches(directory, KEY_FILES, cert):
        raise ConfigError(
            f"{certificate} (site {identity.name!r}, TLS key "
            f"{key_fingerprint(_ec_key(cert))[:16]}…) does not bind the keys in {directory}; "
            "install the certificate the consortium issued for this folder's site.csr"
        )
    if rotated:
        for new, old in zip(NEXT_KEY_FILES, KEY_FILES, strict=True):
            os.replace(directory / new, directory / old)
    write_file(directory / "site.crt", cert.public_bytes(_PEM))
    if not installed_root.exists():
        write_file(installed_root, root.public_bytes(_PEM))
    logger.info("installed certificate %x of site %r", cert.serial_number, identity.name)
    return Installed(cert, rotated)


def read_request_file(path: Path) -> SiteRequest:
    """:func:`read_request` of the file ``path``."""
    return read_request(read_file(path, "certificate request"), where=str(path))
