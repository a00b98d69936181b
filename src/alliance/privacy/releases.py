"""What left the hospital for each charged round: the durable copy of its one release.

Why it lives with the privacy ledger
------------------------------------
A charge in the :class:`~alliance.privacy.ledger.PrivacyLedger` pays for *one* release of a
study round's noisy update. Training the round again would draw fresh noise and release a second,
different update for the same charge; a coordinator that lies, replays or simply restarts (and a
hospital on files that lost ``state/bundles.db``, its record of bundles already read) can ask
for a round again at any time. So the site keeps, for every charged round it answered, the very
reply it sent (the encoded :class:`~alliance.protocol.envelope.Envelope`, header and nonce
included; under secure aggregation, the update before masking, which every later attempt of the
round masks afresh) and the model version it answered. A task for a round already answered gets
those same bytes again, never a new training; a task for that round on another model version is
refused. The record sits in the ledger's SQLite file, the anchored and durable store, because it
must survive whatever the ledger survives: a bundle ledger or a state folder can be lost, the
privacy accounting and what it paid for cannot.

Crash safety
------------
The round is charged before training (:mod:`alliance.site.privatize`), and its release is
recorded here (``synchronous=FULL``) *before* the reply leaves the site. A crash between the
charge and the record released nothing, so the round is trained again under its one charge; a
crash between the record and the send re-sends the recorded bytes on restart. Either way the
coordinator sees at most one update per charged round.

The table (``releases``, added in ledger schema 2) holds one row per ``(study, round)``; a row
can only be written for a round already charged, and a second, different reply for the same
round is refused with :class:`~alliance.core.errors.PrivacyError`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
from dataclasses import dataclass

from alliance.core.errors import PrivacyError

__all__ = ["RELEASES_SCHEMA", "Release", "find_release", "record_release"]

RELEASES_SCHEMA = """
CREATE TABLE releases (
    study TEXT NOT NULL,
    round INTEGER NOT NULL,
    model_version INTEGER NOT NULL CHECK (model_version >= 0),
    digest TEXT NOT NULL,
    reply BLOB NOT NULL,
    released_at TEXT NOT NULL,
    PRIMARY KEY (study, round),
    FOREIGN KEY (study, round) REFERENCES charges (study, round)
) STRICT
"""
"""The table of releases (created with the ledger; added to a schema-1 ledger on opening)."""


@dataclass(frozen=True)
class Release:
    """The one reply a hospital released for a charged study round.

    Attributes
    ----------
    study, round
        The round.
    model_version
        The model version the round was trained on.
    reply
        The encoded reply envelope, exactly as it was handed to the transport.
    digest
        sha256 (hex) of ``reply``.
    released_at
        When it was recorded (UTC, ISO 8601).
    """

    study: str
    round: int
    model_version: int
    reply: bytes
    digest: str
    released_at: str


def find_release(db: sqlite3.Connection, study: str, round_: int) -> Release | None:
    """The release recorded for ``(study, round_)``, if any."""
    row = db.execute(
        "SELECT model_version, reply, digest, released_at FROM releases "
        "WHERE study = ? AND round = ?",
        (study, round_),
    ).fetchone()
    if row is None:
        return None
    version, reply, digest, released_at = row
    return Release(study, round_, int(version), bytes(reply), str(digest), str(released_at))


def record_release(
    db: sqlite3.Connection, *, study: str, round_: int, model_version: int, reply: bytes
) -> Release:
    """Record ``reply`` as the release of ``(study, round_)``, inside the caller's transaction.

    Returns
    -------
    Release
        The recorded release (the earlier one if the same bytes were recorded before).

    Raises
    ------
    PrivacyError
        The round was never charged, or another reply was already released for it.
    """
    digest = hashlib.sha256(reply).hexdigest()
    existing = find_release(db, study, round_)
    if existing is not None:
        if existing.digest != digest:
            raise PrivacyError(
                f"study {study!r} round {round_} already released a reply on "
                f"{existing.released_at} (model version {existing.model_version}); a second, "
                "different reply for the same round would release the patients' data twice. "
                "Re-send the recorded reply instead"
            )
        return existing
    charged = db.execute(
        "SELECT 1 FROM charges WHERE study = ? AND round = ?", (study, round_)
    ).fetchone()
    if charged is None:
        raise PrivacyError(
            f"study {study!r} round {round_} is released without a charge in the privacy "
            "ledger; charge the round before training it"
        )
    now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    db.execute(
        "INSERT INTO releases (study, round, model_version, digest, reply, released_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (study, round_, model_version, digest, reply, now),
    )
    return Release(study, round_, model_version, reply, digest, now)
