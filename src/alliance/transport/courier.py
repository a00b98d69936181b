"""Moving bundles between a party's folders and the courier's medium: import and export.

A hospital without a network connection and the coordinator each keep an *inbox* (bundles to
be read) and an *outbox* (bundles written for the other side). Whatever carries the files (a
USB key, a data diode, secure file transfer) is a folder to this module:

- :func:`export_bundles` moves every bundle of an outbox into the courier's folder. A copy is
  kept in ``<outbox>/sent/`` so that a lost USB key can be written again; a bundle already on
  the medium is not written twice.
- :func:`import_bundles` checks every bundle the courier brought *before* it enters the inbox:
  signature, seal, sender's certificate, addressing, expiry, size, and whether its nonce was
  already accepted. Good bundles are copied into the inbox (never over another file); a bundle
  imported twice, or already read, is reported as such and changes nothing; a bad one is left
  where it is and reported with its reason.

Both return one record per file so that the command line can print it and the party's audit
log can keep it. Importing only places a bundle in the inbox; the party's reader (the site
agent, the coordinator service) opens it again, records it in its
:class:`~alliance.transport.files.BundleLedger` and acts on it, so a bundle changes state once
however often it is imported.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from alliance.core.errors import AllianceError, ConfigError
from alliance.core.files import write_atomically
from alliance.protocol.bundles import BUNDLE_SUFFIX, BundleHeader, OpenedBundle, peek_header
from alliance.transport.files import BundleLedger

__all__ = [
    "Exported",
    "ImportOutcome",
    "Imported",
    "bundle_files",
    "export_bundles",
    "import_bundles",
]


class ImportOutcome(enum.Enum):
    """What :func:`import_bundles` did with one file."""

    IMPORTED = "imported"
    ALREADY = "already imported"
    REFUSED = "refused"


@dataclass(frozen=True)
class Imported:
    """One file offered to :func:`import_bundles` and what became of it.

    Parameters
    ----------
    source
        The file as given.
    outcome
        Imported, already imported (in the inbox or read before), or refused.
    reason
        Why it was refused or not imported again (empty when imported).
    header
        The bundle's header when it could be read (``None`` for a file that is no bundle).
    digest
        SHA-256 of the file, hex.
    size
        Bytes.
    target
        Where it was placed in the inbox (``None`` unless imported).
    """

    source: Path
    outcome: ImportOutcome
    reason: str
    header: BundleHeader | None
    digest: str
    size: int
    target: Path | None = None


@dataclass(frozen=True)
class Exported:
    """One bundle moved out of an outbox by :func:`export_bundles`."""

    name: str
    header: BundleHeader
    digest: str
    size: int
    target: Path


def bundle_files(paths: Iterable[Path]) -> list[Path]:
    """The bundle files named by ``paths``: files as given, folders' ``*.gabn`` sorted.

    Raises
    ------
    ConfigError
        A path does not exist.
    """
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(
                sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(BUNDLE_SUFFIX))
            )
        elif path.is_file():
            out.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder of bundles")
    return out


def import_bundles(
    files: Iterable[Path],
    *,
    inbox: Path,
    open_one: Callable[[bytes], OpenedBundle],
    ledger: BundleLedger,
    max_bytes: int,
) -> list[Imported]:
    """Check each bundle and copy the good ones into ``inbox`` (see the module docstring).

    Parameters
    ----------
    files
        Bundle files (see :func:`bundle_files`).
    inbox
        The party's inbox folder (created if needed).
    open_one
        Opens and verifies one bundle for this party (``open_bundle`` with its key, role and
        federation bound); raises :class:`~alliance.core.errors.AllianceError` when it fails.
    ledger
        The party's record of accepted bundles: a bundle read before is not imported again.
    max_bytes
        Largest bundle accepted.
    """
    inbox.mkdir(parents=True, exist_ok=True)
    results: list[Imported] = []
    for source in files:
        try:
            size = source.stat().st_size
            if size > max_bytes:
                results.append(
                    Imported(
                        source,
                        ImportOutcome.REFUSED,
                        f"{size} bytes exceeds the limit of {max_bytes} bytes",
                        None,
                        "",
                        size,
                    )
                )
                continue
            data = source.read_bytes()
        except OSError as exc:
            results.append(
                Imported(source, ImportOutcome.REFUSED, f"cannot be read: {exc}", None, "", 0)
            )
            continue
        digest = hashlib.sha256(data).hexdigest()
        try:
            opened = open_one(data)
        except AllianceError as exc:
            header: BundleHeader | None
            try:
                header = peek_header(data)
            except AllianceError:
                header = None
            results.append(
                Imported(source, ImportOutcome.REFUSED, str(exc), header, digest, len(data))
            )
            continue
        h = opened.header
        if ledger.seen(h.sender, h.nonce):
            results.append(
                Imported(
                    source,
                    ImportOutcome.ALREADY,
                    f"read before (nonce {h.nonce[:12]}…)",
                    h,
                    digest,
                    len(data),
                )
            )
            continue
        target = inbox / source.name
        if not source.name.endswith(BUNDLE_SUFFIX):
            target = inbox / f"{source.name}{BUNDLE_SUFFIX}"
        existing = _same_content(inbox, data, digest)
        if existing is not None:
            results.append(
                Imported(
                    source,
                    ImportOutcome.ALREADY,
                    f"already waiting in the inbox as {existing.name}",
                    h,
                    digest,
                    len(data),
                )
            )
            continue
        n = 0
        while target.exists():  # names are not authenticated: never replace another bundle
            n += 1
            target = inbox / f"{source.name.removesuffix(BUNDLE_SUFFIX)}.{n}{BUNDLE_SUFFIX}"
        write_atomically(target, data)
        results.append(Imported(source, ImportOutcome.IMPORTED, "", h, digest, len(data), target))
    return results


def _same_content(folder: Path, data: bytes, digest: str) -> Path | None:
    for file in folder.iterdir():
        if (
            file.is_file()
            and file.name.endswith(BUNDLE_SUFFIX)
            and file.stat().st_size == len(data)
            and hashlib.sha256(file.read_bytes()).hexdigest() == digest
        ):
            return file
    return None


def export_bundles(outbox: Path, target: Path) -> Iterator[Exported]:
    """Move every bundle of ``outbox`` into ``target``, keeping a copy in ``outbox/sent/``.

    Yields one record per bundle, after it is safely written to ``target``.

    Raises
    ------
    ConfigError
        ``target`` is inside ``outbox`` (bundles would be exported into themselves).
    """
    if target.resolve() == outbox.resolve() or outbox.resolve() in target.resolve().parents:
        raise ConfigError(f"--to {target} is inside the outbox {outbox}; give the courier's folder")
    if not outbox.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    sent = outbox / "sent"
    for file in sorted(
        p for p in outbox.iterdir() if p.is_file() and p.name.endswith(BUNDLE_SUFFIX)
    ):
        data = file.read_bytes()
        header = peek_header(data)
        digest = hashlib.sha256(data).hexdigest()
        destination = target / file.name
        if not (destination.exists() and destination.read_bytes() == data):
            n = 0
            while destination.exists():
                n += 1
                destination = target / f"{file.name.removesuffix(BUNDLE_SUFFIX)}.{n}{BUNDLE_SUFFIX}"
            write_atomically(destination, data)
        sent.mkdir(exist_ok=True)
        file.replace(sent / file.name)
        yield Exported(file.name, header, digest, len(data), destination)
