"""The consortium's offline root: issues, records and revokes every party's certificate.

Design
------
:class:`CertificateAuthority` is used only by the provisioning tool (``alliance consortium``)
on a machine that is kept offline between uses. It holds the root's ECDSA P-256 key and a
record of everything it issued; :meth:`~CertificateAuthority.save` writes the folder::

    ca.crt      the root certificate (public: every party gets a copy)
    ca.key      the root key, mode 0600, encrypted when a passphrase is given
    crl.pem     the current certificate revocation list
    state.json  issued certificates (serial, name, role, expiry, fingerprint) and revocations

The root certificate and key never change once written: saving again rewrites only
``crl.pem`` and ``state.json``, so a key written encrypted can never be rewritten in clear.

:meth:`~CertificateAuthority.issue` makes an :class:`IssuedParty`: a fresh ECDSA P-256 TLS key,
a fresh Ed25519 message-signing key, and a certificate binding both to the party's name and
role (see :mod:`alliance.crypto.pki`): only for the consortium's own parties and the
one-machine demo. A hospital makes its keys itself and sends a request, which
:meth:`~CertificateAuthority.issue_request` certifies after its proofs were checked
(:mod:`alliance.crypto.enrolment`). Serial numbers are random 159-bit integers. Only one
valid certificate may exist per name and role, except during a key rotation: the new
certificate is issued with ``rotation=True``, and the old one revoked once the party uses it.

Each CRL gets an increasing ``CRLNumber`` and a ``lastUpdate`` strictly later (to the
second) than the previous one, because OpenSSL picks the newest CRL by ``lastUpdate`` when
a TLS server holds several (:func:`alliance.crypto.tls.reload_crl`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from alliance.core.errors import ConfigError
from alliance.crypto.certificates import (
    BACKDATE,
    IssuedParty,
    as_utc,
    certify,
    iso,
    make_party,
    make_root,
    parse_iso,
    utc_now,
)
from alliance.crypto.enrolment import SiteRequest
from alliance.crypto.keyfiles import load_certificate, load_private_key, write_file
from alliance.crypto.pki import Role, check_party_name, fingerprint, subject_attribute

__all__ = ["CertificateAuthority", "IssuedParty", "IssuedRecord"]

logger = logging.getLogger(__name__)

_RESERVED_SITE_NAMES = frozenset({"coordinator", "operator"})
_STATE_FORMAT = 1
_PEM = serialization.Encoding.PEM
_PKCS8 = serialization.PrivateFormat.PKCS8


@dataclass(frozen=True)
class IssuedRecord:
    """What the CA remembers of a certificate it issued (kept in ``state.json``)."""

    serial: int
    name: str
    role: Role
    not_after: datetime
    fingerprint: str


class CertificateAuthority:
    """The consortium's root: use :meth:`create` or :meth:`load`, not the constructor.

    Parameters
    ----------
    certificate, key
        The root certificate and its private key.
    """

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._cert = certificate
        self._key = key
        self._consortium = subject_attribute(certificate, NameOID.ORGANIZATION_NAME) or ""
        self._records: list[IssuedRecord] = []
        self._revoked: dict[int, datetime] = {}
        self._crl: x509.CertificateRevocationList | None = None
        self._crl_number = 0
        self._crl_last_update: datetime | None = None

    @classmethod
    def create(cls, consortium: str, *, valid_days: int = 3650) -> CertificateAuthority:
        """Make a new root for ``consortium``, valid ``valid_days`` days."""
        cert, key = make_root(consortium, valid_days=valid_days)
        logger.info("created root CA of consortium %r", consortium)
        return cls(cert, key)

    @property
    def certificate(self) -> x509.Certificate:
        """The root certificate."""
        return self._cert

    @property
    def consortium(self) -> str:
        """The consortium's name."""
        return self._consortium

    @property
    def issued(self) -> tuple[IssuedRecord, ...]:
        """Every certificate issued, oldest first."""
        return tuple(self._records)

    def revoked_at(self, serial: int) -> datetime | None:
        """When the certificate ``serial`` was revoked, or ``None`` if it was not."""
        return self._revoked.get(serial)

    def issue(
        self,
        name: str,
        role: Role,
        *,
        hosts: Sequence[str] = (),
        valid_days: int = 825,
        not_before: datetime | None = None,
    ) -> IssuedParty:
        """Issue a certificate with fresh TLS and signing keys for party ``name``.

        Parameters
        ----------
        name
            The party's name: 1-63 lowercase ASCII letters, digits and '-'.
        role
            Its role. ``coordinator`` and ``operator`` are reserved and not valid site names.
        hosts
            Host names and IP addresses the party serves TLS on (required for the
            coordinator): written as DNS or IP subject alternative names.
        valid_days
            Days of validity from ``not_before``.
        not_before
            Start of validity (default: an hour ago, to tolerate clock skew).

        Raises
        ------
        ConfigError
            Invalid name or host, a still-valid unrevoked certificate exists for this name
            and role, or the certificate would outlive the root.
        """
        start, end = self._window(name, role, valid_days, not_before, rotation=False)
        if role is Role.COORDINATOR and not hosts:
            raise ConfigError(
                "a coordinator certificate needs at least one host (name or IP address sites "
                "connect to)"
            )
        party = make_party(
            self._cert,
            self._key,
            name=name,
            consortium=self._consortium,
            role=role,
            hosts=hosts,
            not_before=start,
            not_after=end,
        )
        self._remember(party.certificate, name, role)
        return party

    def issue_request(
        self,
        request: SiteRequest,
        *,
        rotation: bool = False,
        valid_days: int = 825,
        not_before: datetime | None = None,
    ) -> x509.Certificate:
        """Certify the keys of a hospital's checked request; no private key is made here.

        Parameters
        ----------
        request
            The site's request, as :func:`~alliance.crypto.enrolment.read_request` checked it.
        rotation
            The site already holds a valid certificate and is rotating its keys: both stay
            valid until the old one is revoked (:meth:`revoke` with ``keep``).
        valid_days, not_before
            As for :meth:`issue`.

        Raises
        ------
        ConfigError
            The site already holds a valid certificate (without ``rotation``), holds none to
            rotate (with it), or as for :meth:`issue`.
        """
        name = request.name
        start, end = self._window(name, Role.SITE, valid_days, not_before, rotation=rotation)
        cert = certify(
            self._cert,
            self._key,
            name=name,
            consortium=self._consortium,
            role=Role.SITE,
            hosts=(),
            tls_public_key=request.tls_public_key,
            signing_public_key=request.signing_public_key,
            not_before=start,
            not_after=end,
        )
        self._remember(cert, name, Role.SITE)
        return cert

    def _remember(self, cert: x509.Certificate, name: str, role: Role) -> None:
        self._records.append(
            IssuedRecord(
                serial=cert.serial_number,
                name=name,
                role=role,
                not_after=cert.not_valid_after_utc,
                fingerprint=fingerprint(cert),
            )
        )
        logger.info("issued %s certificate %x for %r", role.value, cert.serial_number, name)

    def _live(self, name: str, role: Role, now: datetime) -> list[IssuedRecord]:
        return [
            r
            for r in self._records
            if r.name == name
            and r.role is role
            and r.serial not in self._revoked
            and r.not_after > now
        ]

    def _window(
        self,
        name: str,
        role: Role,
        valid_days: int,
        not_before: datetime | None,
        *,
        rotation: bool,
    ) -> tuple[datetime, datetime]:
        """Check that ``name`` may get a certificate now; its validity (start, end)."""
        check_party_name(name)
        if role is Role.SITE and name in _RESERVED_SITE_NAMES:
            raise ConfigError(f"site name {name!r} is reserved; choose another site id")
        if valid_days < 1:
            raise ConfigError(f"certificate validity must be at least 1 day, got {valid_days}")
        now = utc_now()
        live = self._live(name, role, now)
        if live and not rotation:
            record = live[-1]
            raise ConfigError(
                f"{role.value} {name!r} already holds certificate serial {record.serial:x} "
                f"(valid until {iso(record.not_after)}); for a key rotation sign its new "
                "request with --rotate, otherwise revoke it first (alliance consortium "
                "revoke-site)"
            )
        if rotation and not live:
            raise ConfigError(
                f"{role.value} {name!r} holds no valid certificate to rotate; sign its request "
                "without --rotate"
            )
        start = (now - BACKDATE) if not_before is None else as_utc(not_before)
        end = start + timedelta(days=valid_days)
        if end > self._cert.not_valid_after_utc:
            raise ConfigError(
                f"certificate for {name!r} would expire on {iso(end)}, after the consortium "
                f"root ({iso(self._cert.not_valid_after_utc)}); give fewer valid days"
            )
        return start, end

    def revoke(self, name: str, *, role: Role = Role.SITE, keep: int | None = None) -> list[int]:
        """Revoke every unrevoked certificate of ``name`` in ``role``; return their serials.

        With ``keep``, the certificate of that serial stays valid: the last step of a key
        rotation revokes only the certificates the party held before its new one. The change
        reaches relying parties only through a new :meth:`crl`.
        """
        now = utc_now()
        serials = [
            r.serial
            for r in self._records
            if r.name == name and r.role is role and r.serial not in self._revoked
        ]
        if keep is not None:
            if keep not in serials:
                raise ConfigError(
                    f"{role.value} {name!r} holds no valid certificate serial {keep:x} to keep"
                )
            serials.remove(keep)
            if not serials:
                raise ConfigError(
                    f"{role.value} {name!r} holds no certificate older than serial {keep:x} to "
                    "revoke: its rotation is already complete"
                )
        if not serials:
            known = sorted({r.name for r in self._records if r.role is role})
            raise ConfigError(
                f"no unrevoked {role.value} certificate named {name!r} to revoke; "
                f"{role.value}s on record: {', '.join(known) or 'none'}"
            )
        for serial in serials:
            self._revoked[serial] = now
        self._crl = None
        logger.info("revoked %s %r: serials %s", role.value, name, [f"{s:x}" for s in serials])
        return serials

    def crl(
        self, *, valid_days: int = 30, now: datetime | None = None
    ) -> x509.CertificateRevocationList:
        """Sign a new CRL listing every revoked serial, valid ``valid_days`` from ``now``.

        Without ``now``, waits (under a second) if needed so that its ``lastUpdate`` is
        strictly later than the previous CRL's.
        """
        if valid_days < 1:
            raise ConfigError(f"CRL validity must be at least 1 day, got {valid_days}")
        if now is None:
            when = utc_now()
            last = self._crl_last_update
            if last is not None and when <= last < when + timedelta(seconds=2):
                next_second = last + timedelta(seconds=1)
                time.sleep(max(0.0, (next_second - datetime.now(UTC)).total_seconds()))
                when = utc_now()
        else:
            when = as_utc(now).replace(microsecond=0)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(when)
            .next_update(when + timedelta(days=valid_days))
            .add_extension(x509.CRLNumber(self._crl_number + 1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        for serial, revoked in sorted(self._revoked.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(revoked)
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        self._crl_number += 1
        self._crl_last_update = when
        self._crl = crl
        return crl

    def save(self, directory: Path, *, passphrase: bytes | None = None) -> None:
        """Write the CA folder (see the module docstring); ``passphrase`` encrypts a new key.

        Raises
        ------
        ConfigError
            The folder holds another root's certificate, or cannot be written.
        """
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path, key_path = directory / "ca.crt", directory / "ca.key"
        if cert_path.exists():
            if load_certificate(cert_path) != self._cert:
                raise ConfigError(
                    f"{cert_path} holds another root certificate; save this CA to an empty folder"
                )
        else:
            write_file(cert_path, self._cert.public_bytes(_PEM))
        if not key_path.exists():
            encryption: serialization.KeySerializationEncryption = (
                serialization.BestAvailableEncryption(passphrase)
                if passphrase
                else serialization.NoEncryption()
            )
            write_file(key_path, self._key.private_bytes(_PEM, _PKCS8, encryption), mode=0o600)
        crl = self._crl if self._crl is not None else self.crl()
        write_file(directory / "crl.pem", crl.public_bytes(_PEM))
        write_file(directory / "state.json", (json.dumps(self._state(), indent=2) + "\n").encode())

    def _state(self) -> dict[str, Any]:
        return {
            "format": _STATE_FORMAT,
            "consortium": self._consortium,
            "crl_number": self._crl_number,
            "crl_last_update": None
            if self._crl_last_update is None
            else iso(self._crl_last_update),
            "issued": [
                {
                    "serial": f"{r.serial:x}",
                    "name": r.name,
                    "role": r.role.value,
                    "not_after": iso(r.not_after),
                    "fingerprint": r.fingerprint,
                }
                for r in self._records
            ],
            "revoked": [
                {"serial": f"{serial:x}", "revoked_at": iso(when)}
                for serial, when in sorted(self._revoked.items())
            ],
        }

    @classmethod
    def load(cls, directory: Path, *, passphrase: bytes | None = None) -> CertificateAuthority:
        """Read a CA folder written by :meth:`save`.

        Raises
        ------
        ConfigError
            A file is missing or malformed, or the passphrase is missing or wrong.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError(f"CA folder {directory} does not exist; give the consortium's ca/")
        cert = load_certificate(directory / "ca.crt")
        key = load_private_key(directory / "ca.key", passphrase=passphrase)
        raw = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(
            serialization.Encoding.DER, raw
        ) != cert.public_key().public_bytes(serialization.Encoding.DER, raw):
            raise ConfigError(f"{directory / 'ca.key'} is not the key of {directory / 'ca.crt'}")
        ca = cls(cert, key)
        ca._read_state(directory / "state.json")
        crl_path = directory / "crl.pem"
        try:
            crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"{crl_path} does not exist; restore the CA folder") from None
        except ValueError:
            raise ConfigError(f"{crl_path} is not a PEM CRL; restore the CA folder") from None
        if not crl.is_signature_valid(key.public_key()):
            raise ConfigError(f"{crl_path} is not signed by {directory / 'ca.crt'}")
        ca._crl = crl
        return ca

    def _read_state(self, path: Path) -> None:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist; restore the CA folder") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not readable JSON: {exc}") from None
        field = "format"
        try:
            if state["format"] != _STATE_FORMAT:
                raise ConfigError(f"{path}: format {state['format']!r}, expected {_STATE_FORMAT}")
            field = "crl_number"
            self._crl_number = int(state["crl_number"])
            field = "crl_last_update"
            last = state["crl_last_update"]
            self._crl_last_update = None if last is None else parse_iso(last)
            field = "issued"
            for item in state["issued"]:
                self._records.append(
                    IssuedRecord(
                        serial=int(item["serial"], 16),
                        name=str(item["name"]),
                        role=Role(item["role"]),
                        not_after=parse_iso(item["not_after"]),
                        fingerprint=str(item["fingerprint"]),
                    )
                )
            field = "revoked"
            for item in state["revoked"]:
                self._revoked[int(item["serial"], 16)] = parse_iso(item["revoked_at"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}: field {field!r} is malformed ({exc!r})") from None
