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

An entry of a folder that is no bundle file (a folder, a FIFO, a symbolic link, a file that
cannot be read) is set aside in ``rejected/`` the same way: a link is never followed, a FIFO
never opened for a blocking read, and one bad entry stops no reader.

A site settles a bundle only once its replies are durably written: :meth:`FileSiteLink.fetch`
hands out one message at a time and leaves its bundle in the inbox; :meth:`FileSiteLink.settle`
(or the next fetch) records it and moves it to ``done/``. Each reply is kept in the ledger,
against the bundle it answers, before it is written, so an agent killed at any instant loses
no task, and a task whose reply was written is never worked on again: on restart its reply is
written again if it is not in the outbox (nor already sent), and the bundle is settled.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from alliance.core.errors import AllianceError, ProtocolError, TransportError
from alliance.core.faults import crash_point
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
        self._db.execute(
            # Replies written for a bundle not yet settled: a restart writes them again
            # instead of working on the bundle twice.
            "CREATE TABLE IF NOT EXISTS replies (sender TEXT NOT NULL, nonce TEXT NOT NULL, "
            "name TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (sender, nonce, name))"
        )
        self._db.execute(
            # A bundle recorded by publish_once and not yet known to be in its folder.
            "CREATE TABLE IF NOT EXISTS unwritten (recipient TEXT NOT NULL, message TEXT NOT NULL, "
            "name TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (recipient, message))"
        )

    def accept(self, opened: OpenedBundle) -> bool:
        """Record a bundle; ``False`` if its nonce was accepted before (a replay)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO bundles VALUES (?, ?, ?, ?)",
            (opened.header.sender, opened.header.nonce, opened.digest, time.time()),
        )
        return cursor.rowcount == 1

    def settle(self, opened: OpenedBundle) -> bool:
        """Record a bundle as :meth:`accept` does and forget the replies kept for it, at once."""
        h = opened.header
        with self._db:  # one transaction
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO bundles VALUES (?, ?, ?, ?)",
                (h.sender, h.nonce, opened.digest, time.time()),
            )
            self._db.execute(
                "DELETE FROM replies WHERE sender = ? AND nonce = ?", (h.sender, h.nonce)
            )
        return cursor.rowcount == 1

    def keep_reply(self, answered: OpenedBundle, name: str, data: bytes) -> None:
        """Keep the reply ``data`` (file ``name``) to ``answered`` until it is settled."""
        h = answered.header
        self._db.execute(
            "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)", (h.sender, h.nonce, name, data)
        )

    def replies(self, answered: OpenedBundle) -> list[tuple[str, bytes]]:
        """``(file name, bytes)`` of each reply kept for ``answered`` (see :meth:`keep_reply`)."""
        h = answered.header
        rows = self._db.execute(
            "SELECT name, data FROM replies WHERE sender = ? AND nonce = ? ORDER BY rowid",
            (h.sender, h.nonce),
        ).fetchall()
        return [(str(name), bytes(data)) for name, data in rows]

    def seen(self, sender: str, nonce: str) -> bool:
        """Whether ``sender``'s bundle with ``nonce`` was accepted before."""
        row = self._db.execute(
            "SELECT 1 FROM bundles WHERE sender = ? AND nonce = ?", (sender, nonce)
        ).fetchone()
        return row is not None

    def publish_once(
        self, recipient: str, message: str, bundle: tuple[str, bytes] | None = None
    ) -> bool:
        """Record that ``message`` (a key naming it) was written for ``recipient``; ``False`` if
        it was before. A sender uses it so that a restart does not write the same task twice.

        ``bundle`` (file name, bytes) is kept with the record until :meth:`written` says it is
        in its folder, so that a crash in between loses no message (:meth:`unwritten`).
        """
        with self._db:  # one transaction
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO published VALUES (?, ?, ?)",
                (recipient, message, time.time()),
            )
            fresh = cursor.rowcount == 1
            if fresh and bundle is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO unwritten VALUES (?, ?, ?, ?)",
                    (recipient, message, *bundle),
                )
        return fresh

    def written(self, recipient: str, message: str) -> None:
        """The bundle of ``message`` for ``recipient`` is in its folder: forget its bytes."""
        self._db.execute(
            "DELETE FROM unwritten WHERE recipient = ? AND message = ?", (recipient, message)
        )

    def unwritten(self, recipient: str, message: str) -> tuple[str, bytes] | None:
        """``(file name, bytes)`` kept by :meth:`publish_once` and not yet :meth:`written`."""
        row = self._db.execute(
            "SELECT name, data FROM unwritten WHERE recipient = ? AND message = ?",
            (recipient, message),
        ).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def is_published(self, recipient: str, message: str) -> bool:
        """Whether :meth:`publish_once` recorded ``message`` for ``recipient``."""
        row = self._db.execute(
            "SELECT 1 FROM published WHERE recipient = ? AND message = ?", (recipient, message)
        ).fetchone()
        return row is not None

    def published(self, recipient: str) -> list[str]:
        """The keys of every message recorded by :meth:`publish_once` for ``recipient``."""
        rows = self._db.execute(
            "SELECT message FROM published WHERE recipient = ? ORDER BY published_at", (recipient,)
        ).fetchall()
        return [str(row[0]) for row in rows]

    def forget_published(self, recipient: str, message: str) -> None:
        """Undo :meth:`publish_once` (writing the bundle failed)."""
        self.written(recipient, message)
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
        """Every entry named like a bundle, of whatever kind: the reader checks each."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name.endswith(BUNDLE_SUFFIX))

    def settle(self, file: Path, *, accepted: bool, reason: str = "") -> None:
        target = self.path / ("done" if accepted else "rejected")
        target.mkdir(exist_ok=True)
        destination = target / file.name
        n = 0
        while os.path.lexists(destination):  # never replace an entry set aside before
            n += 1
            destination = target / f"{file.name}.{n}"
        # A rename moves a link or FIFO itself, never what it points at.
        file.replace(destination)
        if not accepted:
            write_atomically(target / f"{destination.name}.reason", reason.encode("utf-8") + b"\n")


@dataclass(frozen=True)
class _Pending:
    """A bundle read from a folder and not yet settled."""

    file: Path
    opened: OpenedBundle
    size: int


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
        #: File name and size of each accepted bundle, by its digest.
        self.files: dict[str, tuple[str, int]] = {}
        #: Entries that could not even be moved aside: skipped for the life of this reader.
        self._stuck: set[Path] = set()

    def read_pending(self) -> list[_Pending]:
        """Every pending bundle that passes its checks, oldest first, *not* yet recorded.

        Bad entries and replays (of a bundle recorded before, or of one earlier in the same
        folder) are set aside in ``rejected/``. The caller records each bundle it has acted on
        with :meth:`settle`; one it never settles is read again by the next reader.
        """
        good: list[tuple[float, str, _Pending]] = []
        for file in self.folder.pending():
            if file in self._stuck:
                continue
            try:
                data = _read_entry(file, self._max_bytes)
                if data is None:  # gone meanwhile (another reader, a courier): nothing to do
                    continue
                opened = self._open(data)
            except AllianceError as exc:
                self._reject(file, str(exc), type(exc))
                continue
            good.append((opened.header.created_at, file.name, _Pending(file, opened, len(data))))
        out: list[_Pending] = []
        taken: set[tuple[str, str]] = set()
        for _, _, pending in sorted(good, key=lambda item: (item[0], item[1])):
            sender, nonce = pending.opened.header.sender, pending.opened.header.nonce
            if (sender, nonce) in taken or self._ledger.seen(sender, nonce):
                self._reject(
                    pending.file,
                    f"replayed: {sender!r}'s bundle nonce {nonce} was accepted before",
                )
                continue
            taken.add((sender, nonce))
            self.files[pending.opened.digest] = (pending.file.name, pending.size)
            out.append(pending)
        return out

    def settle(self, pending: _Pending) -> None:
        """Record ``pending`` as acted on and move it to ``done/``.

        The file moves first: a crash in between leaves it in ``done/`` unrecorded (its kept
        replies still answer a copy imported again), never as a "replay" in ``rejected/``.
        """
        self._move(pending.file, accepted=True)
        crash_point("bundles.before_record")
        self._ledger.settle(pending.opened)

    def read_all(
        self, handle: Callable[[OpenedBundle, str, int], None] | None = None
    ) -> list[OpenedBundle]:
        """Every pending bundle that passes, in the order they were created, each recorded.

        With ``handle``, each bundle is handed to it (with its file name and size) *before* it
        is moved to ``done/`` and recorded, so that a crash in between leaves it in the folder to
        be read again (the handler must count a message once, as the coordinator's store does). A
        bundle the handler refuses (:class:`~alliance.core.errors.AllianceError`) is recorded
        and moved to ``rejected/`` with the handler's reason.
        """
        out = []
        for pending in self.read_pending():
            opened, file = pending.opened, pending.file
            refused: AllianceError | None = None
            if handle is not None:
                try:
                    handle(opened, file.name, pending.size)
                except AllianceError as exc:
                    refused = exc
            if refused is not None:
                if self._ledger.accept(opened):  # else another reader took it meanwhile
                    self._reject(file, f"not counted: {refused}", type(refused))
                continue
            # Moved, then recorded: a crash in between leaves a counted bundle in done/, never
            # a counted one refused as a replay on the next start.
            self._move(file, accepted=True)
            crash_point("bundles.before_record")
            if self._ledger.accept(opened):
                out.append(opened)
        return out

    def _reject(self, file: Path, reason: str, error: type[AllianceError] = ProtocolError) -> None:
        logger.warning("bundle %s rejected: %s", file.name, reason)
        self.rejections.append(Rejection(str(file), reason, error))
        self._move(file, accepted=False, reason=reason)

    def _move(self, file: Path, *, accepted: bool, reason: str = "") -> None:
        try:
            self.folder.settle(file, accepted=accepted, reason=reason)
        except FileNotFoundError:
            pass  # taken by another reader meanwhile
        except OSError as exc:
            # The folder itself is at fault (read-only, full): skip the entry, go on.
            self._stuck.add(file)
            logger.error(
                "%s cannot be moved to %s/ (%s); it is skipped until the agent restarts: "
                "make the folder %s writable",
                file,
                "done" if accepted else "rejected",
                exc.strerror or exc,
                self.folder.path,
            )


def _read_entry(file: Path, max_bytes: int) -> bytes | None:
    """The bytes of bundle file ``file``; ``None`` if it vanished.

    Raises
    ------
    ProtocolError
        ``file`` is no regular file (a symbolic link is never followed, a FIFO never waited
        on), cannot be read, or exceeds ``max_bytes``.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(file, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ProtocolError(
                "is a symbolic link; bundles are read only as files inside the folder, so "
                "copy the bundle itself here (`alliance site import` / `coordinator import`)"
            ) from None
        raise ProtocolError(f"cannot be opened: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "no regular file"
            raise ProtocolError(f"is {kind}, not a bundle; bundles are files")
        if info.st_size > max_bytes:
            raise ProtocolError(
                f"bundle of {info.st_size} bytes exceeds the limit of {max_bytes} bytes"
            )
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ProtocolError(f"bundle exceeds the limit of {max_bytes} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise ProtocolError(f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


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
        self._queue: list[_Pending] = []
        #: The bundle of the message :meth:`fetch` handed out last, until it is settled.
        self._in_hand: _Pending | None = None
        self._ledger = ledger
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
        """The next message from the inbox, or ``None`` if no bundle is pending.

        The message fetched before is settled first (see :meth:`settle`). A bundle whose
        replies were written before a restart is not handed out again: its replies are put
        back in the outbox if they are in neither it nor ``sent/``, and it is settled.
        """
        if site != self.site:
            raise TransportError(f"this link belongs to site {self.site!r}, not {site!r}")
        self.settle()
        while True:
            if not self._queue:
                self._queue = self._reader.read_pending()
                if not self._queue:
                    return None
            pending = self._queue.pop(0)
            if self._answered_before(pending):
                continue
            if pending.opened.header.sender == COORDINATOR:
                self._learn_coordinator(pending.opened.header.certificate_der)
            self._in_hand = pending
            return pending.opened.message.envelope

    def settle(self) -> None:
        """Record the bundle of the message fetched last as done: call it once its replies are
        submitted (they are then durably written). Until then a crash leaves the bundle in the
        inbox, to be handled on restart. Nothing happens when no message is in hand."""
        pending, self._in_hand = self._in_hand, None
        if pending is not None:
            self._reader.settle(pending)

    def _answered_before(self, pending: _Pending) -> bool:
        replies = self._ledger.replies(pending.opened)
        if not replies:
            return False
        self.outbox.mkdir(parents=True, exist_ok=True)
        for name, data in replies:
            if not any(
                _holds(folder / name, data) for folder in (self.outbox, self.outbox / "sent")
            ):
                write_atomically(self.outbox / name, data)
            logger.info(
                "bundle %s was answered before a restart; its reply %s is in the outbox",
                pending.file.name,
                name,
            )
        self._reader.settle(pending)
        return True

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
        if self._in_hand is not None:
            # Kept before it is written: a crash after this point never works on the task again.
            self._ledger.keep_reply(self._in_hand.opened, name, data)
        write_atomically(self.outbox / name, data)
        self.last_sent = (len(data), name)


def _holds(file: Path, data: bytes) -> bool:
    """Whether ``file`` is a regular file with exactly ``data``."""
    try:
        return _read_entry(file, len(data)) == data
    except ProtocolError:
        return False


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
        name, data = self.seal(envelope)
        self.write(envelope.header.recipient, name, data)

    def seal(self, envelope: Envelope) -> tuple[str, bytes]:
        """The file name and bytes of ``envelope`` sealed to its site, not yet written."""
        recipient = envelope.header.recipient
        key = self._site_keys.get(recipient)
        if key is None:
            raise TransportError(f"site {recipient!r} is not served by the files transport")
        data = seal_bundle(envelope, signer=self._signer, recipient_key=key, ttl_s=self._ttl_s)
        return _name_of(data), data

    def write(self, site: str, name: str, data: bytes) -> None:
        """Write a sealed bundle into ``site``'s outbox folder."""
        folder = self.outbox(site)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / name, data)
        self.last_sent = (len(data), name)

    def holds(self, site: str, name: str, data: bytes) -> bool:
        """Whether the bundle ``name`` is waiting in ``site``'s outbox folder or was exported
        (a copy in ``sent/``)."""
        folder = self.outbox(site)
        return _holds(folder / name, data) or _holds(folder / "sent" / name, data)

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
        if file.is_symlink() or not file.is_file():
            continue  # a courier carries bundle files only; the reader sets the rest aside
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
