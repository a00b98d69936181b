"""Checks that what the coordinator store hands back is what it stored.

A database's own checks do not cover the values in it: one flipped bit inside a model blob
leaves SQLite's ``integrity_check`` at "ok" and the blob still decodes, as a weight of 5.5e36
that a restarted coordinator would sign and send to every hospital. So every blob (model
weights, strategy state, update payload) is stored with the SHA-256 of its bytes
(:func:`blob_digest`), and :func:`checked` compares the two on every read; a mismatch raises
:class:`~alliance.core.errors.StoreDamaged` naming the study, model version or round and site,
and the value is never used.

:func:`quick_check` runs SQLite's ``PRAGMA quick_check`` (the b-tree pages and their links,
in time linear in the file) for the coordinator's start; PostgreSQL checks its own pages.
:func:`backfill_digests` gives rows written before schema version 3 their digests; it trusts
those rows as they are at the upgrade, since nothing older records what they were.
"""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import Connection, Table, select, text, update

from alliance.core.errors import StoreDamaged

__all__ = ["RESTORE", "backfill_digests", "blob_digest", "checked", "quick_check"]

logger = logging.getLogger(__name__)

#: What the operator does about a damaged store.
RESTORE = "nothing was read from it; restore the store from a backup before starting again"


def blob_digest(data: bytes) -> str:
    """The SHA-256 of a stored blob, as 64 hexadecimal digits."""
    return hashlib.sha256(data).hexdigest()


def checked(data: bytes, digest: str | None, *, what: str, where: str) -> bytes:
    """``data`` if its SHA-256 is ``digest``.

    Parameters
    ----------
    data
        The blob as read from the store.
    digest
        The digest stored with it (``None``: the row lost it).
    what
        What the blob is, e.g. ``"model version 3 of study 's1'"``.
    where
        The store, as shown to the operator (its URL, password masked).

    Raises
    ------
    StoreDamaged
        If the digest is missing or does not match.
    """
    found = blob_digest(bytes(data))
    if digest is None or found != digest:
        stored = "no digest" if digest is None else f"sha256 {digest[:16]}..."
        raise StoreDamaged(
            f"coordinator store {where}: {what} is damaged (its bytes hash to sha256 "
            f"{found[:16]}..., the store recorded {stored}); {RESTORE}"
        )
    return data


def quick_check(conn: Connection, where: str) -> None:
    """Run SQLite's ``PRAGMA quick_check`` on ``conn`` (nothing on other databases).

    Raises
    ------
    StoreDamaged
        If SQLite reports any problem; the message quotes the first few.
    """
    if conn.dialect.name != "sqlite":
        return
    problems = [str(row[0]) for row in conn.execute(text("PRAGMA quick_check(5)"))]
    if problems != ["ok"]:
        raise StoreDamaged(
            f"coordinator store {where}: the database file is damaged (SQLite quick_check: "
            f"{'; '.join(problems)}); {RESTORE}"
        )


def backfill_digests(conn: Connection, table: Table, pairs: dict[str, str]) -> int:
    """Store the digest of every blob of ``table`` that has none; the number of rows changed.

    ``pairs`` maps a blob column to its digest column. Used once, by the upgrade to schema
    version 3: the rows are trusted as they are at that moment.
    """
    keys = list(table.primary_key.columns)
    changed = 0
    for blob, digest in pairs.items():
        missing = select(*keys).where(table.c[blob].is_not(None), table.c[digest].is_(None))
        for row in conn.execute(missing).all():  # keys only: one blob in memory at a time
            match = [key == getattr(row, key.name) for key in keys]
            data = conn.execute(select(table.c[blob]).where(*match)).scalar_one()
            conn.execute(update(table).where(*match).values({digest: blob_digest(bytes(data))}))
            changed += 1
    return changed
