"""The files transport: protocol messages as signed, sealed bundles in folders.

Some hospitals allow no network connection at all. Their site exchanges the very same protocol
messages as the network path, each one a bundle (:mod:`alliance.protocol.bundles`): signed by its
sender, sealed to its recipient, naming federation, study, round, stage, a nonce and an expiry.
Whatever carries the files (a USB key, a one-way data diode, secure file transfer) is outside the
system; this module only reads and writes folders.

- :class:`FileSiteLink` is a site's end (a :class:`~alliance.transport.base.SiteLink`): it fetches
  from its *inbox* folder and submits into its *outbox* folder.
- :class:`FileMailbox` is the coordinator's end for the sites on files (a
  :class:`~alliance.transport.base.CoordinatorMailbox`): it publishes into one outbox folder per
  site and collects from its inbox folder.
- :class:`RoutedMailbox` lets one coordinator serve online sites over one mailbox and offline
  sites over another, by recipient.

Each end keeps a :class:`BundleLedger` of the bundles it has accepted (SQLite, in its state
folder): a bundle imported or read twice changes state once. A bundle that fails any check
(signature, seal, addressing, expiry, size, replay) is moved to ``rejected/`` beside the folder
it was read from, with a ``.reason`` file saying why, and changes nothing; the next good bundle
is read normally. Accepted bundles are moved to ``done/``, so a folder shows what is pending.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from alliance.core.errors import AllianceError, ProtocolError, TransportError
from alliance.core.files import write_atomically
from alliance.crypto.signing import Signer
from alliance.protocol.bundles import OpenedBundle, bundle_name, open_bundle, seal_bundle
from alliance.protocol.codec import DEFAULT_MAX_BYTES, SignatureVerifier
from alliance.protocol.envelope import COORDINATOR, Envelope

__all__ = [
    "BUNDLE_SUFFIX",
    "BundleLedger",
    "FileMailbox",
    "FileSiteLink",
    "Rejection",
    "RoutedMailbox",
]

logger = logging.getLogger(__name__)

BUNDLE_SUFFIX = ".gabn"
#: How long a bundle stays valid: couriers are slow, but a message must not live for ever.
DEFAULT_TTL_S = 14 * 86_400.0


@dataclass(frozen=True)
class Rejection:
    """A bundle that was refused, and why.

    Parameters
    ----------
    file
        Where it was read.
    reason
        What was wrong.
    error
        The kind of error: :class:`~alliance.core.errors.IntegrityError` for a bundle that
        fails its signature or seal, :class:`~alliance.core.errors.ProtocolError` for the rest.
    """

    file: str
    reason: str
    error: type[AllianceError] = ProtocolError


class BundleLedger:
    """The bundles one party has accepted, by nonce, kept in SQLite so a restart forgets none.

    Parameters
    ----------
    path
        The ledger file (created with its folder).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            # Keyed by sender and nonce: a nonce is readable in a bundle's header, so another
            # member who saw the file must not be able to burn it with a bundle of its own.
            "CREATE TABLE IF NOT EXISTS bundles (sender TEXT NOT NULL, nonce TEXT NOT NULL, "
            "digest TEXT NOT NULL, accepted_at REAL NOT NULL, PRIMARY KEY (sender, nonce))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS published (recipient TEXT NOT NULL, message TEXT NOT NULL, "
            "published_at REAL NOT NULL, PRIMARY KEY (recipient, message))"
        )

    def accept(self, opened: OpenedBundle) -> bool:
        """Record a bundle; ``False`` if its nonce was accepted before (a replay)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO bundles VALUES (?, ?, ?, ?)",
            (opened.header.sender, opened.header.nonce, opened.digest, time.time()),
        )
        return cursor.rowcount == 1

    def seen(self, sender: str, nonce: str) -> bool:
        """Whether ``sender``'s bundle with ``nonce`` was accepted before."""
        row = self._db.execute(
            "SELECT 1 FROM bundles WHERE sender = ? AND nonce = ?", (sender, nonce)
        ).fetchone()
        return row is not None

    def publish_once(self, recipient: str, message: str) -> bool:
        """Record that ``message`` (a key naming it) was written for ``recipient``; ``False`` if
        it was before. A sender uses it so that a restart does not write the same task twice."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO published VALUES (?, ?, ?)", (recipient, message, time.time())
        )
        return cursor.rowcount == 1

    def published(self, recipient: str) -> list[str]:
        """The keys of every message recorded by :meth:`publish_once` for ``recipient``."""
        rows = self._db.execute(
            "SELECT message FROM published WHERE recipient = ? ORDER BY published_at", (recipient,)
        ).fetchall()
        return [str(row[0]) for row in rows]

    def forget_published(self, recipient: str, message: str) -> None:
        """Undo :meth:`publish_once` (writing the bundle failed)."""
        self._db.execute(
            "DELETE FROM published WHERE recipient = ? AND message = ?", (recipient, message)
        )

    def close(self) -> None:
        """Close the database."""
        self._db.close()


@dataclass
class _Folder:
    """A folder of incoming bundles with its ``done/`` and ``rejected/`` beside."""

    path: Path

    def pending(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(
            p for p in self.path.iterdir() if p.is_file() and p.name.endswith(BUNDLE_SUFFIX)
        )

    def settle(self, file: Path, *, accepted: bool, reason: str = "") -> None:
        target = self.path / ("done" if accepted else "rejected")
        target.mkdir(exist_ok=True)
        file.replace(target / file.name)
        if not accepted:
            write_atomically(target / f"{file.name}.reason", reason.encode("utf-8") + b"\n")


class _Reader:
    """Opens the bundles of one folder, oldest first, each once."""

    def __init__(
        self,
        folder: Path,
        *,
        open_one: Callable[[bytes], OpenedBundle],
        ledger: BundleLedger,
        max_bytes: int,
    ) -> None:
        self.folder = _Folder(folder)
        self._open = open_one
        self._ledger = ledger
        self._max_bytes = max_bytes
        self.rejections: list[Rejection] = []
        self.accepted: list[OpenedBundle] = []
        #: File name and size of each accepted bundle, by its digest.
        self.files: dict[str, tuple[str, int]] = {}

    def read_all(
        self, handle: Callable[[OpenedBundle, str, int], None] | None = None
    ) -> list[OpenedBundle]:
        """Every pending bundle that passes, in the order they were created.

        With ``handle``, each bundle is handed to it (with its file name and size) *before* it
        is recorded as accepted, so that a crash in between leaves it in the folder to be read
        again (the handler must count a message once, as the coordinator's store does). A
        bundle the handler refuses (:class:`~alliance.core.errors.AllianceError`) is recorded
        and moved to ``rejected/`` with the handler's reason.
        """
        good: list[tuple[float, str, OpenedBundle, Path]] = []
        for file in self.folder.pending():
            try:
                data = _read_capped(file, self._max_bytes)
                opened = self._open(data)
            except AllianceError as exc:
                self._reject(file, str(exc), type(exc))
                continue
            good.append((opened.header.created_at, file.name, opened, file))
        out = []
        for _, _, opened, file in sorted(good, key=lambda item: (item[0], item[1])):
            sender, nonce = opened.header.sender, opened.header.nonce
            if self._ledger.seen(sender, nonce):
                self._reject(
                    file, f"replayed: {sender!r}'s bundle nonce {nonce} was accepted before"
                )
                continue
            size = file.stat().st_size
            self.files[opened.digest] = (file.name, size)
            refused: AllianceError | None = None
            if handle is not None:
                try:
                    handle(opened, file.name, size)
                except AllianceError as exc:
                    refused = exc
            if not self._ledger.accept(opened):  # another reader took it meanwhile
                continue
            if refused is not None:
                self._reject(file, f"not counted: {refused}", type(refused))
                continue
            self.folder.settle(file, accepted=True)
            self.accepted.append(opened)
            out.append(opened)
        return out

    def _reject(self, file: Path, reason: str, error: type[AllianceError] = ProtocolError) -> None:
        logger.warning("bundle %s rejected: %s", file.name, reason)
        self.rejections.append(Rejection(str(file), reason, error))
        self.folder.settle(file, accepted=False, reason=reason)


def _read_capped(file: Path, max_bytes: int) -> bytes:
    size = file.stat().st_size
    if size > max_bytes:
        raise ProtocolError(f"bundle of {size} bytes exceeds the limit of {max_bytes} bytes")
    return file.read_bytes()


class FileSiteLink:
    """A site's end of the files transport: its inbox and outbox folders.

    Parameters
    ----------
    site
        The site's id.
    federation
        Its consortium.
    inbox, outbox
        Folders: bundles from the coordinator arrive in ``inbox``; replies are written to
        ``outbox`` for the courier.
    signer
        The site's signing identity.
    key
        The site's Ed25519 private signing key (its sealing key is derived from it).
    coordinator_key
        The coordinator's Ed25519 public key, from its certificate: replies are sealed to it.
        ``None``: taken from the certificate of the coordinator's bundles as they are read
        (``verify`` has checked it against the consortium); a site only ever replies.
    verify
        Checks the coordinator's signatures against the consortium.
    ledger
        The bundles already accepted.
    """

    def __init__(
        self,
        site: str,
        *,
        federation: str,
        inbox: Path,
        outbox: Path,
        signer: Signer,
        key: ed25519.Ed25519PrivateKey,
        coordinator_key: ed25519.Ed25519PublicKey | None,
        verify: SignatureVerifier,
        ledger: BundleLedger,
        ttl_s: float = DEFAULT_TTL_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.site = site
        self.federation = federation
        self.inbox = inbox
        self.outbox = outbox
        self._signer = signer
        self._coordinator_key = coordinator_key
        self._ttl_s = ttl_s
        self._queue: list[Envelope] = []
        #: ``(bytes, file name)`` of the last bundle written by :meth:`submit`.
        self.last_sent: tuple[int, str] | None = None
        self._reader = _Reader(
            inbox,
            open_one=lambda data: open_bundle(
                data,
                verify=verify,
                recipient=site,
                recipient_key=key,
                federation=federation,
                max_bytes=max_bytes,
            ),
            ledger=ledger,
            max_bytes=max_bytes,
        )

    @property
    def rejections(self) -> list[Rejection]:
        """Bundles refused so far, with their reasons."""
        return self._reader.rejections

    def fetch(self, site: str) -> Envelope | None:
        """The next message from the inbox, or ``None`` if no bundle is pending."""
        if site != self.site:
            raise TransportError(f"this link belongs to site {self.site!r}, not {site!r}")
        if not self._queue:
            opened = self._reader.read_all()
            for bundle in opened:
                if bundle.header.sender == COORDINATOR:
                    self._learn_coordinator(bundle.header.certificate_der)
            self._queue = [bundle.message.envelope for bundle in opened]
        return self._queue.pop(0) if self._queue else None

    def _learn_coordinator(self, certificate_der: bytes) -> None:
        from cryptography import x509

        from alliance.crypto.pki import signing_public_key

        key = signing_public_key(x509.load_der_x509_certificate(certificate_der))
        if key is not None:
            self._coordinator_key = key

    def submit(self, envelope: Envelope) -> None:
        """Seal a reply to the coordinator and write it into the outbox."""
        if envelope.header.sender != self.site or envelope.header.recipient != COORDINATOR:
            raise TransportError(
                f"site {self.site!r} can only send its own messages to the coordinator"
            )
        if self._coordinator_key is None:
            raise TransportError(
                f"site {self.site!r} has read no bundle from the coordinator yet, so it has no "
                "key to seal a reply to; import the coordinator's bundles first"
            )
        self.outbox.mkdir(parents=True, exist_ok=True)
        data = seal_bundle(
            envelope, signer=self._signer, recipient_key=self._coordinator_key, ttl_s=self._ttl_s
        )
        name = _name_of(data)
        write_atomically(self.outbox / name, data)
        self.last_sent = (len(data), name)


class FileMailbox:
    """The coordinator's end for the sites on files: an outbox folder per site, one inbox.

    Parameters
    ----------
    federation
        The consortium.
    root
        Holds ``to-<site>/`` (bundles for each site) and ``inbox/`` (bundles from the sites).
    signer, key
        The coordinator's signing identity and Ed25519 private key.
    site_keys
        Each offline site's Ed25519 public key, from its certificate.
    verify
        Checks the sites' signatures against the consortium.
    ledger
        The bundles already accepted.
    """

    def __init__(
        self,
        *,
        federation: str,
        root: Path,
        signer: Signer,
        key: ed25519.Ed25519PrivateKey,
        site_keys: Mapping[str, ed25519.Ed25519PublicKey],
        verify: SignatureVerifier,
        ledger: BundleLedger,
        ttl_s: float = DEFAULT_TTL_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.federation = federation
        self.root = root
        self._signer = signer
        self._site_keys = dict(site_keys)
        self._ttl_s = ttl_s
        #: ``(bytes, file name)`` of the last bundle written by :meth:`publish`.
        self.last_sent: tuple[int, str] | None = None
        self._reader = _Reader(
            root / "inbox",
            open_one=lambda data: open_bundle(
                data,
                verify=verify,
                recipient=COORDINATOR,
                recipient_key=key,
                federation=federation,
                max_bytes=max_bytes,
            ),
            ledger=ledger,
            max_bytes=max_bytes,
        )

    @property
    def sites(self) -> frozenset[str]:
        """The sites this mailbox serves."""
        return frozenset(self._site_keys)

    @property
    def inbox(self) -> Path:
        """Where bundles from the sites are put (by ``alliance coordinator import``)."""
        return self.root / "inbox"

    def outbox(self, site: str) -> Path:
        """Where bundles for ``site`` are written (``alliance coordinator export --site``)."""
        return self.root / f"to-{site}"

    @property
    def rejections(self) -> list[Rejection]:
        """Bundles refused so far, with their reasons."""
        return self._reader.rejections

    def publish(self, envelope: Envelope) -> None:
        """Seal a message to its site and write it into that site's outbox folder."""
        recipient = envelope.header.recipient
        key = self._site_keys.get(recipient)
        if key is None:
            raise TransportError(f"site {recipient!r} is not served by the files transport")
        folder = self.outbox(recipient)
        folder.mkdir(parents=True, exist_ok=True)
        data = seal_bundle(envelope, signer=self._signer, recipient_key=key, ttl_s=self._ttl_s)
        name = _name_of(data)
        write_atomically(folder / name, data)
        self.last_sent = (len(data), name)

    def collect(self) -> list[Envelope]:
        """Every new message the sites' bundles carry, oldest first."""
        return [opened.message.envelope for opened in self.collect_bundles()]

    def collect_bundles(
        self, handle: Callable[[OpenedBundle, str, int], None] | None = None
    ) -> list[OpenedBundle]:
        """Every new bundle of the inbox, opened and recorded, oldest first; each handed to
        ``handle`` (with its file name and size) before it is recorded (see ``_Reader``)."""
        return self._reader.read_all(handle)

    def file_of(self, opened: OpenedBundle) -> tuple[str, int]:
        """The file name and size an accepted bundle was read from."""
        return self._reader.files.get(opened.digest, ("?", 0))


class RoutedMailbox:
    """One coordinator, two channels: the sites on files through one, everyone else the other."""

    def __init__(self, online: object, offline: FileMailbox) -> None:
        from alliance.transport.base import CoordinatorMailbox

        if not isinstance(online, CoordinatorMailbox):
            raise TypeError("online must be a CoordinatorMailbox")
        self._online = online
        self._offline = offline

    def publish(self, envelope: Envelope) -> None:
        """Route by recipient."""
        if envelope.header.recipient in self._offline.sites:
            self._offline.publish(envelope)
        else:
            self._online.publish(envelope)

    def collect(self) -> list[Envelope]:
        """What both channels brought."""
        return [*self._online.collect(), *self._offline.collect()]


def carry(source: Path, target: Path) -> Iterator[Path]:
    """Move every bundle of ``source`` into ``target``: what a courier does, for tests and demos.

    Yields the bundles' new paths. Writing into ``target`` is atomic per file.
    """
    target.mkdir(parents=True, exist_ok=True)
    for file in _Folder(source).pending():
        data = file.read_bytes()
        destination = target / file.name
        # Names are not authenticated: never let one file replace another unread one.
        n = 0
        while destination.exists() and destination.read_bytes() != data:
            n += 1
            destination = target / f"{file.stem}.{n}{BUNDLE_SUFFIX}"
        write_atomically(destination, data)
        file.unlink()
        yield destination


def _name_of(data: bytes) -> str:
    from alliance.protocol.bundles import peek_header

    return bundle_name(peek_header(data))
