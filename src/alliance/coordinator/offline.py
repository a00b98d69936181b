"""The coordinator's side of hospitals on files: ``[files]`` of ``coordinator.toml``.

A hospital that allows no network connection is listed in ``coordinator.toml`` with the
certificate from its start-up bundle (the consortium folder's ``sites/<id>/site.crt``)::

    [files]
    dir = "offline"               # to-<site>/ for each hospital, inbox/, state/bundles.db
    ttl_days = 14                 # how long a bundle stays valid on its way

    [files.sites]
    "xizang-peoples" = "sites/xizang-peoples.crt"

The certificate is checked against the consortium CA and CRL when the coordinator starts: its
name must be the hospital's id and its role ``site``; every bundle for that hospital is sealed
to the key it binds. The service (:mod:`alliance.coordinator.service`) then treats these sites
as always reachable: what it would hand such a site over HTTPS (its task, a secure-aggregation
stage, the study's end) is written once, as a sealed and signed bundle, into
``<dir>/to-<site>/`` — recorded in :class:`~alliance.transport.files.BundleLedger` so that a
restart does not write it again, with its sealed bytes until the file is in place, so that a
coordinator killed in between writes that very bundle on its next start — and
``alliance coordinator export --site X`` moves it to the courier. ``alliance coordinator
import FILE`` checks bundles from the hospitals and places them in ``<dir>/inbox/``; the service
reads them there and counts each message through the same path as an HTTPS upload
(:meth:`CoordinatorService.submit_update`'s checks), once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from alliance.core.config import TomlFile
from alliance.core.errors import AllianceError, ConfigError
from alliance.core.faults import crash_point
from alliance.crypto.keyfiles import load_certificate
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.signing import Signer
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.bundles import DEFAULT_MAX_BUNDLE_BYTES, OpenedBundle, open_bundle
from alliance.protocol.envelope import COORDINATOR, Envelope, MessageKind
from alliance.store.audit import AuditLog
from alliance.transport.files import BundleLedger, FileMailbox, Rejection
from alliance.transport.http import PermissionDenied

__all__ = ["FilesConfig", "OfflineSites", "message_key", "task_version"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FilesConfig:
    """``[files]`` of ``coordinator.toml``: where bundles live and which hospitals use them."""

    dir: Path
    sites: Mapping[str, Path] = field(default_factory=dict)
    ttl_s: float = 14 * 86_400.0

    @classmethod
    def from_toml(cls, f: TomlFile) -> FilesConfig | None:
        """The ``[files]`` table of ``f``, or ``None`` when it has none."""
        if "files" not in f.data:
            return None
        table = f.data["files"]
        if not isinstance(table, dict):
            raise ConfigError(f"{f.path}: [files] must be a table")
        sites = table.get("sites", {})
        if not isinstance(sites, dict) or not all(isinstance(v, str) for v in sites.values()):
            raise ConfigError(
                f"{f.path}: [files.sites] must map each hospital's id to the path of its "
                'certificate, e.g. "xizang-peoples" = "sites/xizang-peoples.crt"'
            )
        paths = {}
        for site, cert in sites.items():
            path = Path(cert) if Path(cert).is_absolute() else f.path.parent / cert
            if not path.is_file():
                raise ConfigError(
                    f"{f.path}: [files.sites] {site} = {cert!r}: no such certificate; copy the "
                    f"hospital's site.crt from the consortium folder (sites/{site}/site.crt)"
                )
            paths[str(site)] = path
        ttl_days = f.number("files", "ttl_days", default=14.0, minimum=0.0, exclusive_minimum=True)
        return cls(
            dir=f.required_path("files", "dir", must_exist=False),
            sites=paths,
            ttl_s=ttl_days * 86_400.0,
        )


def message_key(envelope: Envelope) -> str:
    """What names a message to a site independently of its nonce and time: the same task asked
    for twice has the same key, so it is written once."""
    h = envelope.header
    body = envelope.body
    if h.kind is MessageKind.TRAIN_TASK:
        detail = f"v{body.get('model_version')}/a{body.get('attempt')}"
    elif h.kind is MessageKind.SECAGG:
        detail = f"{body.get('stage')}/a{body.get('attempt', '')}"
    elif h.kind is MessageKind.STUDY_END and "card" in body:
        # A newer revision of the model card is another message (with the same model).
        detail = "card-" + hashlib.sha256(str(body["card"]).encode()).hexdigest()[:16]
    else:
        detail = ""
    return f"{h.study}/{h.round}/{h.kind.value}/{detail}"


def task_version(key: str, study: str) -> int | None:
    """The model version of the training task of ``study`` that :func:`message_key` named
    ``key``; ``None`` for any other message."""
    parts = key.rsplit("/", 4)
    if len(parts) != 5 or parts[0] != study or parts[2] != MessageKind.TRAIN_TASK.value:
        return None
    version = parts[3].removeprefix("v")
    return int(version) if version.isdigit() else None


class OfflineSites:
    """The coordinator's mailbox for the hospitals on files, in the service and the simulation.

    Parameters
    ----------
    federation
        The consortium.
    root
        The folder of ``to-<site>/`` outboxes, the ``inbox/`` and ``state/bundles.db``.
    site_keys
        Each hospital's certificate-bound Ed25519 public key (bundles are sealed to it).
    signer, key
        The coordinator's signing identity and its Ed25519 private key.
    verify
        Checks the hospitals' signatures (consortium CA, site role).
    ttl_s
        How long a bundle stays valid on its way.
    """

    def __init__(
        self,
        *,
        federation: str,
        root: Path,
        site_keys: Mapping[str, ed25519.Ed25519PublicKey],
        signer: Signer,
        key: ed25519.Ed25519PrivateKey,
        verify: MessageVerifier,
        ttl_s: float = 14 * 86_400.0,
    ) -> None:
        self.federation = federation
        self._key = key
        self._verify = verify
        self.ledger = BundleLedger(root / "state" / "bundles.db")
        self._published: set[tuple[str, str]] = set()
        self.mailbox = FileMailbox(
            federation=federation,
            root=root,
            signer=signer,
            key=key,
            site_keys=site_keys,
            verify=verify,
            ledger=self.ledger,
            ttl_s=ttl_s,
        )

    @classmethod
    def from_config(
        cls,
        *,
        federation: str,
        config: FilesConfig,
        signer: Signer,
        key: ed25519.Ed25519PrivateKey,
        trust: TrustStore,
    ) -> OfflineSites:
        """The hospitals of ``[files]``, each certificate checked against the CA and CRL.

        Raises
        ------
        ConfigError
            A listed certificate is not the named hospital's, not a site's, or not valid.
        """
        keys: dict[str, ed25519.Ed25519PublicKey] = {}
        for site, path in config.sites.items():
            try:
                identity = trust.verify(load_certificate(path), role=Role.SITE, name=site)
            except AllianceError as exc:
                raise ConfigError(
                    f"[files.sites] {site} = {str(path)!r}: {exc}; list the hospital's own "
                    "site.crt from the consortium folder"
                ) from None
            if identity.consortium != federation:
                raise ConfigError(
                    f"[files.sites] {site}: certificate of consortium {identity.consortium!r}, "
                    f"this coordinator serves {federation!r}"
                )
            keys[site] = identity.signing_key
        return cls(
            federation=federation,
            root=config.dir,
            site_keys=keys,
            signer=signer,
            key=key,
            verify=MessageVerifier(trust, role=Role.SITE),
            ttl_s=config.ttl_s,
        )

    @property
    def sites(self) -> frozenset[str]:
        """The hospitals on files."""
        return self.mailbox.sites

    @property
    def inbox(self) -> Path:
        """Where imported bundles wait for the service."""
        return self.mailbox.inbox

    def outbox(self, site: str) -> Path:
        """Where bundles for ``site`` wait for ``alliance coordinator export``."""
        if site not in self.sites:
            raise ConfigError(
                f"site {site!r} is not in [files.sites] of the coordinator's config; the "
                f"hospitals on files are: {', '.join(sorted(self.sites)) or 'none'}"
            )
        return self.mailbox.outbox(site)

    def publish(self, envelope: Envelope) -> tuple[int, str] | None:
        """Write ``envelope`` for its site unless the same message was written before; return
        ``(bytes, file name)`` of the new bundle, or ``None``.

        The sealed bundle is kept in the ledger with its record until it is written, so a
        coordinator killed in between writes that very bundle on its next start.
        """
        recipient, key = envelope.header.recipient, message_key(envelope)
        if (recipient, key) in self._published:  # asked at every tick: spare the database
            return None
        if self.ledger.is_published(recipient, key):
            self._published.add((recipient, key))
            return self._write_kept(recipient, key)
        name, data = self.mailbox.seal(envelope)
        if not self.ledger.publish_once(recipient, key, (name, data)):
            self._published.add((recipient, key))
            return None
        try:
            crash_point("offline.before_write")
            self.mailbox.write(recipient, name, data)
        except BaseException:
            self.ledger.forget_published(recipient, key)
            raise
        self.ledger.written(recipient, key)
        self._published.add((recipient, key))
        return self.mailbox.last_sent

    def _write_kept(self, recipient: str, key: str) -> tuple[int, str] | None:
        """Write the bundle recorded for ``key`` if a crash kept it from its folder."""
        kept = self.ledger.unwritten(recipient, key)
        if kept is None:
            return None
        name, data = kept
        written = None
        if not self.mailbox.holds(recipient, name, data):
            self.mailbox.write(recipient, name, data)
            written = self.mailbox.last_sent
        self.ledger.written(recipient, key)
        return written

    def issued_tasks(self, study: str) -> dict[str, int]:
        """``site → model version`` of the newest training task of ``study`` written for each
        hospital on files (kept in the bundle ledger, so a restarted coordinator knows which
        tasks are still on the road)."""
        issued: dict[str, int] = {}
        for site in sorted(self.sites):
            versions = [task_version(key, study) for key in self.ledger.published(site)]
            known = [v for v in versions if v is not None]
            if known:
                issued[site] = max(known)
        return issued

    def collect(self, handle: Callable[[OpenedBundle, str, int], None]) -> list[Rejection]:
        """Hand every new bundle of the inbox to ``handle`` (opened, file name, size) before it
        is recorded, so that a crash in between leaves it to be read again; return the bundles
        refused since the last call (by their checks or by ``handle``)."""
        before = len(self.mailbox.rejections)
        self.mailbox.collect_bundles(handle)
        return self.mailbox.rejections[before:]

    def read(self, count: Callable[[str, Envelope, int, str], None], audit: AuditLog) -> None:
        """Hand every message imported into the inbox to ``count(site, envelope, size, file)``
        (the checks of an HTTPS upload); every bundle read or refused is an audit line."""

        def handle(bundle: OpenedBundle, name: str, size: int) -> None:
            h = bundle.header
            audit.append(
                "bundle_read",
                site=h.sender,
                study=h.study,
                round=h.round,
                stage=h.stage,
                file=name,
                bytes=size,
                sha256=bundle.digest,
            )
            if h.sender not in self.sites:
                # A hospital online over HTTPS cannot also hand in files: one path per site.
                reason = f"{h.sender} is not in [files.sites]; it must send over HTTPS"
                audit.append("update_rejected", site=h.sender, bytes=size, reason=reason)
                raise PermissionDenied(reason)
            count(h.sender, bundle.envelope, size, name)

        for rejection in self.collect(handle):
            logger.warning("bundle %s: %s", rejection.file, rejection.reason)
            audit.append("bundle_rejected", file=Path(rejection.file).name, reason=rejection.reason)

    def write(self, envelope_for: Callable[[str], Envelope | None], audit: AuditLog) -> None:
        """Write what ``envelope_for(site)`` says each hospital should receive next, once."""
        for site in sorted(self.sites):
            envelope = envelope_for(site)
            if envelope is None:
                continue
            written = self.publish(envelope)
            if written is not None:
                h = envelope.header
                size, name = written
                audit.append(
                    "bundle_written",
                    site=site,
                    study=h.study,
                    round=h.round,
                    stage=str(envelope.body.get("stage", h.kind.value)),
                    file=name,
                    bytes=size,
                )

    def open_one(self, data: bytes) -> OpenedBundle:
        """Check one bundle from a hospital as the service will (for ``coordinator import``)."""
        return open_bundle(
            data,
            verify=self._verify,
            recipient=COORDINATOR,
            recipient_key=self._key,
            federation=self.federation,
            max_bytes=DEFAULT_MAX_BUNDLE_BYTES,
        )

    def close(self) -> None:
        """Close the bundle ledger."""
        self.ledger.close()
