"""Reading a folder of incoming bundles: each entry checked, set aside or settled, once.

A folder (a site's inbox, the coordinator's files inbox) is read by a :class:`BundleReader`.
Every entry named like a bundle is read without following a link and without blocking on a
FIFO; one that is no bundle file, or fails the bundle's checks, or replays a nonce, is moved to
``rejected/`` with a ``.reason`` file and changes nothing. A good bundle stays in the folder
until its reader settles it (moves it to ``done/`` and records it in its
:class:`~alliance.transport.ledger.BundleLedger`), so a reader killed before it acted on a
bundle reads it again on its next start.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alliance.core.errors import AllianceError, ProtocolError
from alliance.core.faults import crash_point
from alliance.core.files import write_atomically
from alliance.protocol.bundles import BUNDLE_SUFFIX, OpenedBundle
from alliance.transport.ledger import BundleLedger

__all__ = ["BundleFolder", "BundleReader", "PendingBundle", "Rejection", "holds", "read_entry"]

logger = logging.getLogger(__name__)


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


@dataclass
class BundleFolder:
    """A folder of incoming bundles with its ``done/`` and ``rejected/`` beside."""

    path: Path

    def pending(self) -> list[Path]:
        """Every entry named like a bundle, of whatever kind: the reader checks each."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name.endswith(BUNDLE_SUFFIX))

    def settle(self, file: Path, *, accepted: bool, reason: str = "") -> None:
        """Move ``file`` to ``done/``, or to ``rejected/`` beside a ``.reason`` file."""
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
class PendingBundle:
    """A bundle read from a folder and not yet settled."""

    file: Path
    opened: OpenedBundle
    size: int


class BundleReader:
    """Opens the bundles of one folder, oldest first, each once."""

    def __init__(
        self,
        folder: Path,
        *,
        open_one: Callable[[bytes], OpenedBundle],
        ledger: BundleLedger,
        max_bytes: int,
        on_rejected: Callable[[Rejection], None] | None = None,
    ) -> None:
        self.folder = BundleFolder(folder)
        self._open = open_one
        self._ledger = ledger
        self._max_bytes = max_bytes
        self._on_rejected = on_rejected
        self.rejections: list[Rejection] = []
        #: File name and size of each accepted bundle, by its digest.
        self.files: dict[str, tuple[str, int]] = {}
        #: Entries that could not even be moved aside: skipped for the life of this reader.
        self._stuck: set[Path] = set()

    def read_pending(self) -> list[PendingBundle]:
        """Every pending bundle that passes its checks, oldest first, *not* yet recorded.

        Bad entries and replays (of a bundle recorded before, or of one earlier in the same
        folder) are set aside in ``rejected/``. The caller records each bundle it has acted on
        with :meth:`settle`; one it never settles is read again by the next reader.
        """
        good: list[tuple[float, str, PendingBundle]] = []
        for file in self.folder.pending():
            if file in self._stuck:
                continue
            try:
                data = read_entry(file, self._max_bytes)
                if data is None:  # gone meanwhile (another reader, a courier): nothing to do
                    continue
                opened = self._open(data)
            except AllianceError as exc:
                self._reject(file, str(exc), type(exc))
                continue
            good.append(
                (opened.header.created_at, file.name, PendingBundle(file, opened, len(data)))
            )
        out: list[PendingBundle] = []
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

    def settle(self, pending: PendingBundle) -> None:
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
        rejection = Rejection(str(file), reason, error)
        self.rejections.append(rejection)
        self._move(file, accepted=False, reason=reason)
        if self._on_rejected is not None:
            self._on_rejected(rejection)

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


def read_entry(file: Path, max_bytes: int) -> bytes | None:
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


def holds(file: Path, data: bytes) -> bool:
    """Whether ``file`` is a regular file with exactly ``data``."""
    try:
        return read_entry(file, len(data)) == data
    except ProtocolError:
        return False
