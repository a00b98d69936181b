"""Building the consortium's X.509 certificates: the root and one certificate per party.

Design
------
The consortium's own keys are made here: ECDSA P-256 for the root and for TLS, Ed25519 for
message signing; a hospital makes its keys at the hospital (:mod:`alliance.crypto.enrolment`)
and :func:`certify` signs their public halves. The root is self-signed with
``CA=true, pathlen=0`` (it signs party certificates only) and key usage
``keyCertSign, cRLSign``. A party certificate has ``CA=false``, key usage
``digitalSignature``, extended key usage ``clientAuth`` (plus ``serverAuth`` for the
coordinator), subject and authority key identifiers (so OpenSSL's
strict mode accepts the chain), subject alternative names for the hosts it serves on, and the
non-critical :data:`~alliance.crypto.pki.SIGNING_KEY_OID` extension with its raw Ed25519
public key. Certificates start an hour in the past so that a party whose clock runs a little
behind still accepts them. The bookkeeping (what was issued, revocation, CRLs) is the
:class:`~alliance.crypto.authority.CertificateAuthority`'s.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from alliance.core.errors import ConfigError
from alliance.crypto.keyfiles import write_file
from alliance.crypto.pki import SIGNING_KEY_OID, Role, check_party_name, fingerprint

__all__ = [
    "BACKDATE",
    "ROOT_COMMON_NAME",
    "IssuedParty",
    "as_utc",
    "certify",
    "check_consortium_name",
    "iso",
    "make_party",
    "make_root",
    "parse_iso",
    "utc_now",
]

#: ``CN`` of every consortium root; its ``O`` is the consortium's name.
ROOT_COMMON_NAME = "Guardian Alliance root CA"
#: How far in the past a new certificate's validity starts (tolerates clock skew).
BACKDATE = timedelta(hours=1)

_CONSORTIUM_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._-]{0,62}[A-Za-z0-9])?")
_PEM = serialization.Encoding.PEM
_PKCS8 = serialization.PrivateFormat.PKCS8


def utc_now() -> datetime:
    """The current UTC time, to the second (X.509 times have no fractions)."""
    return datetime.now(UTC).replace(microsecond=0)


def as_utc(when: datetime) -> datetime:
    """``when`` as an aware UTC time; a naive time is taken as UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def iso(when: datetime) -> str:
    """``2025-01-31T12:00:00Z``."""
    return as_utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    """The inverse of :func:`iso`; ``ValueError`` on anything else."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def check_consortium_name(name: str) -> str:
    """Return ``name`` if it is a valid consortium name, else raise :class:`ConfigError`."""
    if not isinstance(name, str) or _CONSORTIUM_NAME.fullmatch(name) is None:
        raise ConfigError(
            f"consortium name {name!r} is invalid: use 1 to 64 ASCII letters, digits, spaces, "
            "'.', '_' or '-', starting and ending with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class IssuedParty:
    """A freshly issued party: its certificate and both private keys.

    Parameters
    ----------
    certificate
        The party's X.509 certificate, signed by the consortium root.
    tls_key
        The ECDSA P-256 key of the certificate, for mutual TLS.
    signing_key
        The Ed25519 key whose public half the certificate binds, for signing messages.
    """

    certificate: x509.Certificate
    tls_key: ec.EllipticCurvePrivateKey
    signing_key: ed25519.Ed25519PrivateKey

    @property
    def serial(self) -> int:
        """The certificate's serial number."""
        return self.certificate.serial_number

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER encoding, lowercase hex."""
        return fingerprint(self.certificate)

    def write(self, directory: Path, *, stem: str) -> dict[str, Path]:
        """Write ``<stem>.crt``, ``<stem>.key`` and ``signing.key`` (keys PKCS#8 PEM, 0600).

        Returns
        -------
        dict[str, Path]
            The paths under keys ``"certificate"``, ``"key"`` and ``"signing_key"``.
        """
        check_party_name(stem, field="file stem")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        none = serialization.NoEncryption()
        paths = {
            "certificate": directory / f"{stem}.crt",
            "key": directory / f"{stem}.key",
            "signing_key": directory / "signing.key",
        }
        write_file(paths["certificate"], self.certificate.public_bytes(_PEM))
        write_file(paths["key"], self.tls_key.private_bytes(_PEM, _PKCS8, none), mode=0o600)
        write_file(
            paths["signing_key"], self.signing_key.private_bytes(_PEM, _PKCS8, none), mode=0o600
        )
        return paths


def make_root(
    consortium: str, *, valid_days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed root certificate for ``consortium`` and its key."""
    check_consortium_name(consortium)
    if valid_days < 1:
        raise ConfigError(f"CA validity must be at least 1 day, got {valid_days}")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, ROOT_COMMON_NAME),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = utc_now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_party(
    root: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey,
    *,
    name: str,
    consortium: str,
    role: Role,
    hosts: Sequence[str],
    not_before: datetime,
    not_after: datetime,
) -> IssuedParty:
    """Fresh TLS and signing keys for ``name`` and a certificate, signed by ``root_key``.

    Only for parties whose keys the consortium itself makes (the coordinator, the operator,
    the one-machine demo's sites); a hospital makes its own (:mod:`alliance.crypto.enrolment`).
    """
    tls_key = ec.generate_private_key(ec.SECP256R1())
    signing_key = ed25519.Ed25519PrivateKey.generate()
    cert = certify(
        root,
        root_key,
        name=name,
        consortium=consortium,
        role=role,
        hosts=hosts,
        tls_public_key=tls_key.public_key(),
        signing_public_key=signing_key.public_key(),
        not_before=not_before,
        not_after=not_after,
    )
    return IssuedParty(certificate=cert, tls_key=tls_key, signing_key=signing_key)


def certify(
    root: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey,
    *,
    name: str,
    consortium: str,
    role: Role,
    hosts: Sequence[str],
    tls_public_key: ec.EllipticCurvePublicKey,
    signing_public_key: ed25519.Ed25519PublicKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A certificate binding ``name``'s TLS and signing public keys, signed by ``root_key``."""
    alt_names = _alt_names(hosts)
    raw_signing = signing_public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role is Role.COORDINATOR:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.subject)
        .public_key(tls_public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(tls_public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .add_extension(x509.UnrecognizedExtension(SIGNING_KEY_OID, raw_signing), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(root_key, hashes.SHA256())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names, and IP addresses for hosts that parse as one; duplicates dropped."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        text = host.strip()
        general: x509.GeneralName
        try:
            general = x509.IPAddress(ipaddress.ip_address(text.removeprefix("[").removesuffix("]")))
        except ValueError:
            if not text or any(c.isspace() or c in "/:@[]" for c in text) or len(text) > 253:
                raise ConfigError(
                    f"host {host!r} is not a host name or IP address; give e.g. "
                    "'coordinator.example.org' or '10.0.0.5'"
                ) from None
            try:
                text.encode("ascii")
            except UnicodeEncodeError:
                raise ConfigError(
                    f"host {host!r} is not an ASCII host name; give its IDNA (xn--) form"
                ) from None
            general = x509.DNSName(text.lower())
        if general not in names:
            names.append(general)
    return names
