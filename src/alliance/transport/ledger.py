"""The bundles one party has accepted, and the messages it wrote, kept in SQLite.

Each end of the files transport (:mod:`alliance.transport.files`) keeps one
:class:`BundleLedger` in its state folder: the bundles it accepted (by sender and nonce, so a
bundle read twice changes state once), the messages it wrote (so a restart writes none twice),
and, for the instants a crash could otherwise lose something, the bytes in flight: a site's
replies until their task is settled, the coordinator's bundles until their file is in place.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from alliance.protocol.bundles import OpenedBundle

__all__ = ["BundleLedger"]


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
