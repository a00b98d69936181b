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

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from alliance.core.errors import TransportError
from alliance.core.files import write_atomically
from alliance.crypto.signing import Signer
from alliance.protocol.bundles import (
    BUNDLE_SUFFIX,
    OpenedBundle,
    bundle_name,
    open_bundle,
    seal_bundle,
)
from alliance.protocol.codec import DEFAULT_MAX_BYTES, SignatureVerifier
from alliance.protocol.envelope import COORDINATOR, Envelope
from alliance.transport.base import Sent
from alliance.transport.inbox import BundleFolder, BundleReader, PendingBundle, Rejection, holds
from alliance.transport.ledger import BundleLedger

__all__ = [
    "BUNDLE_SUFFIX",
    "BundleLedger",
    "FileMailbox",
    "FileSiteLink",
    "Rejection",
    "RoutedMailbox",
]

logger = logging.getLogger(__name__)

#: How long a bundle stays valid: couriers are slow, but a message must not live for ever.
DEFAULT_TTL_S = 14 * 86_400.0


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
    on_rejected
        Called with each bundle :meth:`fetch` sets aside in ``rejected/`` (after it was moved),
        so the hospital can record it: a site's audit log names every bundle it refused.
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
        on_rejected: Callable[[Rejection], None] | None = None,
    ) -> None:
        self.site = site
        self.federation = federation
        self.inbox = inbox
        self.outbox = outbox
        self._signer = signer
        self._coordinator_key = coordinator_key
        self._ttl_s = ttl_s
        self._queue: list[PendingBundle] = []
        #: The bundle of the message :meth:`fetch` handed out last, until it is settled.
        self._in_hand: PendingBundle | None = None
        self._ledger = ledger
        self._reader = BundleReader(
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
            on_rejected=on_rejected,
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

    def _answered_before(self, pending: PendingBundle) -> bool:
        replies = self._ledger.replies(pending.opened)
        if not replies:
            return False
        self.outbox.mkdir(parents=True, exist_ok=True)
        for name, data in replies:
            if not any(
                holds(folder / name, data) for folder in (self.outbox, self.outbox / "sent")
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

    def submit(self, envelope: Envelope) -> Sent:
        """Seal a reply to the coordinator and write it into the outbox; its size and name."""
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
        return Sent(len(data), name)


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
        self._reader = BundleReader(
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
        return holds(folder / name, data) or holds(folder / "sent" / name, data)

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
    for file in BundleFolder(source).pending():
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
