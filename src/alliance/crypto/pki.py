"""The consortium's certificates, as every party sees them: roles, identities and trust.

Design
------
A consortium has one offline root (:class:`alliance.crypto.authority.CertificateAuthority`)
that signs one X.509 certificate per party: the coordinator, the operator (the data scientist)
and each hospital site. A certificate carries two public keys:

* its ECDSA P-256 *TLS key*, used by mutual TLS (:mod:`alliance.crypto.tls`) to authenticate the
  channel, and
* the party's Ed25519 *message-signing key*, bound by a non-critical private extension under
  :data:`SIGNING_KEY_OID` whose value is the raw 32-byte public key. Messages are signed with
  it (:mod:`alliance.crypto.signing`), so a model update stays attributable after it has left
  the TLS channel (stored, audited, relayed).

The subject names the party: ``CN`` is its name (a site id, ``coordinator`` or ``operator``),
``O`` the consortium and ``OU`` its :class:`Role`.

Every party holds a :class:`TrustStore`: the root certificate plus the current certificate
revocation list (CRL). :meth:`TrustStore.verify` turns a certificate into an :class:`Identity`
only if it was signed by the root, is inside its validity window, is not revoked, and has the
expected role and name; otherwise it raises :class:`~alliance.core.errors.IntegrityError`
saying which check failed. A store loaded from files re-reads the CRL when the file changes
(one ``stat`` per call), so a revocation takes effect without a restart. It never takes a CRL
older than the one in use, nor, given a :class:`~alliance.crypto.revocation.CrlFloor`, older
than the newest it relied on before a restart (:mod:`alliance.crypto.revocation`).

The PEM loaders (:func:`load_certificate` and friends) live in :mod:`alliance.crypto.keyfiles`
and are re-exported here.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from alliance.core.errors import ConfigError, IntegrityError
from alliance.crypto.keyfiles import (
    PASSPHRASE_ENV,
    load_certificate,
    load_private_key,
    load_signing_key,
    read_file,
)
from alliance.crypto.revocation import CrlFloor, crl_number

__all__ = [
    "PASSPHRASE_ENV",
    "SIGNING_KEY_OID",
    "Identity",
    "Role",
    "TrustStore",
    "check_party_name",
    "fingerprint",
    "load_certificate",
    "load_private_key",
    "load_signing_key",
    "signing_public_key",
]

logger = logging.getLogger(__name__)

#: OID of the certificate extension that binds a party's Ed25519 message-signing public key
#: (raw 32 bytes). A ``2.25`` OID is a UUID written as an integer (ITU-T X.667), so it needs
#: no registration; this one is UUID ``49c496c1-b383-4d15-8c67-6108eae67043``, fixed forever:
#: changing it would make every issued certificate unusable.
SIGNING_KEY_OID = x509.ObjectIdentifier("2.25.98054391584604148000858892335711678531")

_PARTY_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class Role(enum.Enum):
    """What a certificate's holder may do; written in the subject's ``OU``."""

    COORDINATOR = "coordinator"
    SITE = "site"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Identity:
    """A party whose certificate a :class:`TrustStore` has verified.

    Parameters
    ----------
    name
        The party's name (``CN``): a site id, ``coordinator`` or ``operator``.
    role
        Its role (``OU``).
    consortium
        The consortium (``O``).
    serial
        The certificate's serial number.
    signing_key
        The Ed25519 public key its messages must be signed with.
    not_after
        When the certificate expires (UTC).
    fingerprint
        SHA-256 of the certificate's DER encoding, lowercase hex.
    """

    name: str
    role: Role
    consortium: str
    serial: int
    signing_key: ed25519.Ed25519PublicKey
    not_after: datetime
    fingerprint: str


def check_party_name(name: object, *, field: str = "name") -> str:
    """Return ``name`` if it is a valid party name, else raise :class:`ConfigError`."""
    if not isinstance(name, str) or _PARTY_NAME.fullmatch(name) is None:
        raise ConfigError(
            f"{field} {name!r} is not a valid party name: use 1 to 63 lowercase ASCII letters, "
            "digits and '-', starting and ending with a letter or digit (e.g. 'west-china')"
        )
    return name


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def subject_attribute(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    """The first value of ``oid`` in the certificate's subject, or ``None``."""
    values = certificate.subject.get_attributes_for_oid(oid)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def signing_public_key(certificate: x509.Certificate) -> ed25519.Ed25519PublicKey | None:
    """The Ed25519 key bound by the :data:`SIGNING_KEY_OID` extension, or ``None``."""
    try:
        ext = certificate.extensions.get_extension_for_oid(SIGNING_KEY_OID)
    except x509.ExtensionNotFound:
        return None
    if not isinstance(ext.value, x509.UnrecognizedExtension) or len(ext.value.value) != 32:
        return None
    return ed25519.Ed25519PublicKey.from_public_bytes(ext.value.value)


def _show(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


def _utc(when: datetime | None) -> datetime:
    if when is None:
        return datetime.now(UTC)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class TrustStore:
    """The consortium root certificate and its revocation list, to check other parties.

    Parameters
    ----------
    ca_certificate
        The consortium's root certificate (self-signed, ``CA=true``).
    crl
        The current revocation list; it must be signed by the root.
    floor
        Where the highest CRL number relied on is kept: a CRL with a lower number is refused.

    Raises
    ------
    ConfigError
        The root is not a CA certificate, or the CRL is not signed by it.
    """

    def __init__(
        self,
        ca_certificate: x509.Certificate,
        crl: x509.CertificateRevocationList | None = None,
        *,
        floor: CrlFloor | None = None,
    ) -> None:
        try:
            constraints = ca_certificate.extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ConfigError(
                "the trust root given is not a CA certificate; use the bundle's ca.crt"
            )
        ca_key = ca_certificate.public_key()
        if not isinstance(ca_key, ec.EllipticCurvePublicKey):
            raise ConfigError(
                "the trust root given does not have an ECDSA key; use the bundle's ca.crt"
            )
        self._ca = ca_certificate
        self._ca_key = ca_key
        self._consortium = subject_attribute(ca_certificate, NameOID.ORGANIZATION_NAME) or ""
        self._crl: x509.CertificateRevocationList | None = None
        self._crl_path: Path | None = None
        self._crl_stamp: tuple[int, int, int] | None = None
        self._floor = floor
        self._reload_lock = threading.Lock()
        if crl is not None:
            self._crl = self._checked_crl(crl, "the CRL given")

    @classmethod
    def load(
        cls, ca_path: Path, crl_path: Path | None = None, *, floor: Path | None = None
    ) -> TrustStore:
        """Read the root certificate and, if given, the CRL (re-read when the file changes).

        ``floor``: the file that keeps the highest CRL number relied on (see
        :class:`~alliance.crypto.revocation.CrlFloor`); without it, only the CRL in memory
        guards against an older one.
        """
        store = cls(load_certificate(ca_path), floor=None if floor is None else CrlFloor(floor))
        if crl_path is not None:
            store._crl_path = Path(crl_path)
            store.reload_crl(force=True)
        return store

    @property
    def consortium(self) -> str:
        """The consortium's name (the root's ``O``)."""
        return self._consortium

    @property
    def ca_certificate(self) -> x509.Certificate:
        """The root certificate."""
        return self._ca

    @property
    def crl(self) -> x509.CertificateRevocationList | None:
        """The revocation list in use, if any."""
        return self._crl

    @property
    def crl_path(self) -> Path | None:
        """The CRL file re-read when it changes, if the store was loaded with one."""
        return self._crl_path

    def _checked_crl(
        self, crl: x509.CertificateRevocationList, where: str
    ) -> x509.CertificateRevocationList:
        if crl.issuer != self._ca.subject or not crl.is_signature_valid(self._ca_key):
            raise ConfigError(
                f"{where} is not signed by consortium CA {self._consortium!r}; copy crl.pem "
                "again from the consortium's ca/ folder"
            )
        if self._crl is not None and crl_number(crl) < crl_number(self._crl):
            raise ConfigError(
                f"{where} is CRL number {crl_number(crl)}, older than the CRL in use "
                f"(number {crl_number(self._crl)}); copy the newest crl.pem from the "
                "consortium's ca/ folder"
            )
        if self._floor is not None:
            self._floor.check(crl, where)
        if self._crl is not None and crl.last_update_utc < self._crl.last_update_utc:
            raise ConfigError(
                f"{where} (issued {_show(crl.last_update_utc)}) is older than the CRL in use "
                f"(issued {_show(self._crl.last_update_utc)}); "
                "copy the newest crl.pem"
            )
        return crl

    def reload_crl(self, *, force: bool = False) -> bool:
        """Re-read the CRL file if it changed (or always with ``force``); ``True`` if re-read.

        Costs one ``stat`` when nothing changed. A file that fails its checks raises
        :class:`ConfigError` on every call until it is fixed: the store fails closed.
        """
        if self._crl_path is None:
            return False
        with self._reload_lock:
            return self._reload_crl(self._crl_path, force=force)

    def _reload_crl(self, path: Path, *, force: bool) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            raise ConfigError(
                f"CRL file {path} is missing; restore it from the consortium's ca/ folder"
            ) from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if not force and stamp == self._crl_stamp:
            return False
        data = read_file(path, "CRL")
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError:
            raise ConfigError(f"CRL file {path} is not a PEM CRL") from None
        checked = self._checked_crl(crl, f"CRL file {path}")
        if self._floor is not None:
            self._floor.raise_to(checked)
        self._crl, self._crl_stamp = checked, stamp
        logger.info(
            "loaded CRL %s: number %d, %d revoked certificates, valid until %s",
            path,
            crl_number(crl),
            len(crl),
            "(no nextUpdate)" if crl.next_update_utc is None else _show(crl.next_update_utc),
        )
        return True

    def verify(
        self,
        certificate: x509.Certificate | bytes,
        *,
        role: Role | None = None,
        name: str | None = None,
        now: datetime | None = None,
    ) -> Identity:
        """Check a party's certificate and return who it is.

        Parameters
        ----------
        certificate
            The certificate, or its DER encoding (as sent in a message or TLS handshake).
        role, name
            When given, the role and name the certificate must carry (what the message
            or connection claims).
        now
            The time to check validity at (default: now; a naive time is taken as UTC).

        Returns
        -------
        Identity
            The verified party.

        Raises
        ------
        IntegrityError
            The certificate is malformed, not issued by this consortium's CA, expired or not
            yet valid, revoked, of another role or name, or binds no signing key.
        ConfigError
            The CRL file changed and the new one is unusable.
        """
        try:
            return self._verify(certificate, role=role, name=name, now=now)
        except (ValueError, TypeError, UnicodeError, x509.InvalidVersion) as exc:
            # cryptography parses lazily: a malformed field surfaces only when it is read.
            raise IntegrityError(f"certificate is malformed: {exc}") from None

    def _verify(
        self,
        certificate: x509.Certificate | bytes,
        *,
        role: Role | None,
        name: str | None,
        now: datetime | None,
    ) -> Identity:
        if isinstance(certificate, bytes | bytearray | memoryview):
            try:
                certificate = x509.load_der_x509_certificate(bytes(certificate))
            except ValueError:
                raise IntegrityError("certificate is not a valid DER-encoded X.509") from None
        when = _utc(now)
        self.reload_crl()
        cn = subject_attribute(certificate, NameOID.COMMON_NAME)
        who = f"{cn!r}" if cn else "(no common name)"
        try:
            certificate.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            raise IntegrityError(
                f"certificate for {who} is not issued by consortium CA {self._consortium!r}"
            ) from None
        try:
            is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if is_ca or cn is None:
            raise IntegrityError(f"certificate for {who} is not a party certificate")
        if when > certificate.not_valid_after_utc:
            raise IntegrityError(
                f"certificate for {who} expired on {_show(certificate.not_valid_after_utc)}; "
                "ask the consortium for a new one"
            )
        if when < certificate.not_valid_before_utc:
            raise IntegrityError(
                f"certificate for {who} is not valid before "
                f"{_show(certificate.not_valid_before_utc)}; check this machine's clock"
            )
        try:
            party_role = Role(subject_attribute(certificate, NameOID.ORGANIZATIONAL_UNIT_NAME))
        except ValueError:
            raise IntegrityError(f"certificate for {who} names no known role (OU)") from None
        self._check_revocation(certificate, f"{party_role.value} {who}", when)
        if role is not None and party_role is not role:
            raise IntegrityError(
                f"certificate of {who} is for a {party_role.value}, not a {role.value}"
            )
        if name is not None and cn != name:
            raise IntegrityError(
                f"certificate names {party_role.value} {who}, message claims {name!r}"
            )
        signing_key = signing_public_key(certificate)
        if signing_key is None:
            raise IntegrityError(
                f"certificate for {who} binds no Ed25519 signing key (extension "
                f"{SIGNING_KEY_OID.dotted_string}); reissue it with alliance consortium"
            )
        return Identity(
            name=cn,
            role=party_role,
            consortium=self._consortium,
            serial=certificate.serial_number,
            signing_key=signing_key,
            not_after=certificate.not_valid_after_utc,
            fingerprint=fingerprint(certificate),
        )

    def _check_revocation(self, certificate: x509.Certificate, who: str, when: datetime) -> None:
        if self._crl is None:
            return
        next_update = self._crl.next_update_utc
        if next_update is not None and when > next_update:
            raise IntegrityError(
                f"the consortium's revocation list expired on {_show(next_update)}; renew it "
                "with 'alliance consortium renew-crl' and copy crl.pem"
            )
        revoked = self._crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if revoked is not None:
            raise IntegrityError(
                f"certificate serial {certificate.serial_number:x} of {who} was revoked on "
                f"{_show(revoked.revocation_date_utc)}"
            )
