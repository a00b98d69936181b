"""The durable :class:`~alliance.store.state.CoordinatorStore`: SQLAlchemy Core over SQLite or
PostgreSQL.

``SqlStore("sqlite:///state/coordinator.db")`` keeps a coordinator's state in one file;
``SqlStore("postgresql+psycopg://user:pw@host/db")`` in a server. The tables (``alliance_*``)
are created on first use, with ``alliance_schema_version`` recording the layout; a database
written by a newer layout is refused rather than misread.

Crash safety rests on the database, not on this code being careful:

- **one transaction per method** (:meth:`SqlStore._tx`): a process killed at any instant leaves
  either all of a method's effects or none. SQLite runs in WAL mode with ``synchronous=FULL``,
  so a committed transaction survives SIGKILL and power loss; writers take the lock up front
  (``BEGIN IMMEDIATE``) so concurrent threads queue on the busy timeout instead of failing on a
  stale snapshot.
- **uniqueness is a constraint**: the primary key ``(study, round, site)`` and the unique
  ``nonce`` decide which of two concurrent submissions counts; ``add_update`` reads the winner
  back (inside a savepoint) to tell a duplicate from a conflicting update.
- **a round closes under a row lock**: ``add_update`` holds a shared lock on the round's row
  (``FOR SHARE`` on PostgreSQL) and ``close_round`` an exclusive one, so no update can land in a
  round after its aggregation read the updates.

Arrays are stored as bytes of :func:`~alliance.store.arrays.pack_arrays` (the protocol codec; no
pickle), one row per site, so :meth:`SqlStore.load_delta` holds one delta in memory at a time.
The URL's password is never logged nor put in an error message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy.typing as npt
from sqlalchemy import Connection, Select, func, insert, select, update
from sqlalchemy import exc as sa_exc

from alliance.core.faults import crash_point
from alliance.store import rules, sqlrows
from alliance.store import sqlschema as db
from alliance.store.arrays import dump_json, load_json, unpack_arrays
from alliance.store.integrity import checked, quick_check
from alliance.store.state import (
    RoundState,
    RoundStatus,
    StoredEvent,
    StoredRejection,
    StudyRecord,
    StudyStatus,
    UpdateMeta,
    Weights,
)

__all__ = ["SqlStore"]

logger = logging.getLogger(__name__)

_ENDED = (StudyStatus.FINISHED, StudyStatus.FAILED, StudyStatus.CANCELLED)
_OPEN, _CLOSED = RoundStatus.OPEN.value, RoundStatus.CLOSED.value


class SqlStore:
    """Coordinator state in a SQL database (SQLite file or PostgreSQL server).

    Parameters
    ----------
    url
        A SQLAlchemy URL: ``sqlite:///path/coordinator.db`` or
        ``postgresql+psycopg://user:password@host:5432/database``.
    echo
        Log every SQL statement (parameters hidden) at INFO on ``sqlalchemy.engine``.

    Raises
    ------
    ConfigError
        If the URL is invalid or names another database kind, the database cannot be reached
        or opened, or it was written by a newer version of this software.

    Notes
    -----
    Thread-safe: every method runs in its own pooled connection and transaction. See
    :class:`~alliance.store.state.CoordinatorStore` for each method's meaning and errors.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = db.mask_url(url)
        self._engine = db.make_engine(url, self.url, echo=echo)
        try:
            with self._tx(write=True) as conn:
                db.migrate(conn, self.url)
        except BaseException:
            self._engine.dispose()
            raise
        logger.info("coordinator store at %s (schema version %d)", self.url, db.SCHEMA_VERSION)

    def __repr__(self) -> str:
        return f"SqlStore({self.url!r})"

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        """One transaction; committed when the block ends, rolled back if it raises."""
        return db.transaction(self._engine, self.url, write=write)

    def verify(self) -> int:
        """Check the store before serving from it: the database file (SQLite's
        ``quick_check``) and, against their digests, the newest model version of every study
        that has not ended.

        Returns
        -------
        int
            The number of model versions checked.

        Raises
        ------
        StoreDamaged
            Naming the file, or the study and model version, that is damaged.
        """
        with self._tx(write=False) as conn:
            quick_check(conn, self.url)
        versions = 0
        for record in self.studies():
            if record.status in _ENDED:
                continue
            with self._tx(write=False) as conn:
                row = conn.execute(_newest_model(record.study_id)).first()
            if row is not None:
                sqlrows.model_arrays(record.study_id, row, store=self.url)
                versions += 1
        return versions

    def drop_all(self) -> None:
        """Drop every ``alliance_*`` table (tests only: the state is gone)."""
        with self._tx(write=True) as conn:
            db.metadata.drop_all(conn)

    def close(self) -> None:
        """Close every pooled connection; the store must not be used afterwards."""
        self._engine.dispose()

    def _require_study(self, conn: Connection, study_id: str, *, lock: bool = False) -> None:
        if _nul(study_id):
            raise rules.unknown_study(study_id)
        query = select(db.studies.c.study_id).where(db.studies.c.study_id == study_id)
        if conn.execute(query.with_for_update() if lock else query).first() is None:
            raise rules.unknown_study(study_id)

    # --- studies ---------------------------------------------------------------------------
    def add_study(self, record: StudyRecord) -> None:
        """Store a new study (``ConfigError`` if its id exists)."""
        rules.check_key(record.study_id, "study id")
        values = dict(vars(record), status=record.status.value)
        with self._tx(write=True) as conn:
            try:
                with conn.begin_nested():
                    conn.execute(insert(db.studies), values)
            except sa_exc.IntegrityError:
                raise rules.study_exists(record.study_id) from None

    def study(self, study_id: str) -> StudyRecord | None:
        """One study, or ``None``."""
        if _nul(study_id):
            return None
        with self._tx(write=False) as conn:
            row = conn.execute(select(db.studies).where(db.studies.c.study_id == study_id)).first()
        return None if row is None else sqlrows.study_record(row)

    def studies(self) -> list[StudyRecord]:
        """Every study, oldest first (ties by study id)."""
        with self._tx(write=False) as conn:
            query = select(db.studies).order_by(db.studies.c.created_at, db.studies.c.study_id)
            return [sqlrows.study_record(row) for row in conn.execute(query)]

    def set_study_status(
        self, study_id: str, status: StudyStatus, *, error: str | None = None
    ) -> None:
        """Move a study to ``status``; ``finished_at`` is stamped for an ended study and
        cleared otherwise, ``error`` replaced by the given one."""
        finished = time.time() if status in _ENDED else None
        with self._tx(write=True) as conn:
            self._require_study(conn, study_id)
            conn.execute(
                update(db.studies)
                .where(db.studies.c.study_id == study_id)
                .values(status=status.value, finished_at=finished, error=error)
            )

    # --- model versions --------------------------------------------------------------------
    def save_initial_model(self, study_id: str, weights: Weights, strategy_state: Weights) -> None:
        """Store model version 0 unless it exists (idempotent, for restarts)."""
        row = sqlrows.model_row(
            study_id,
            0,
            weights,
            strategy_state,
            what=f"initial weights of study {study_id!r}",
            state_what=f"initial strategy state of study {study_id!r}",
        )
        stored = select(db.models.c.version).where(*db.version_key(study_id, 0))
        with self._tx(write=True) as conn:
            self._require_study(conn, study_id)
            if conn.execute(stored).first():
                return
            try:
                with conn.begin_nested():
                    conn.execute(insert(db.models), row)
            except sa_exc.IntegrityError:  # stored meanwhile by a concurrent caller
                logger.debug("study %s: model version 0 stored concurrently", study_id)

    def latest_model(
        self, study_id: str
    ) -> tuple[int, dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]:
        """``(version, weights, strategy_state)`` of the newest model version."""
        with self._tx(write=False) as conn:
            self._require_study(conn, study_id)
            row = conn.execute(_newest_model(study_id)).first()
        if row is None:
            raise rules.no_model(study_id)
        return sqlrows.model_arrays(study_id, row, store=self.url)

    def model(self, study_id: str, version: int) -> dict[str, npt.NDArray[Any]]:
        """The weights of one model version (``ConfigError`` if absent)."""
        if _nul(study_id):
            raise rules.no_version(study_id, version)
        query = select(db.models.c.weights, db.models.c.weights_sha256).where(
            *db.version_key(study_id, version)
        )
        with self._tx(write=False) as conn:
            row = conn.execute(query).first()
        if row is None:
            raise rules.no_version(study_id, version)
        what = f"model version {version} of study {study_id!r}"
        data = checked(row.weights, row.weights_sha256, what=what, where=self.url)
        return unpack_arrays(data, what=what)

    # --- rounds ----------------------------------------------------------------------------
    def open_round(
        self,
        study_id: str,
        round_: int,
        *,
        model_version: int,
        participants: Sequence[str],
        deadline: float | None,
    ) -> None:
        """Open round ``round_``: the next round number (1 first), on a stored model version.

        Raises ``FederationError`` if a round is open, the round exists or is not the next one,
        or ``model_version`` is not stored; ``ConfigError`` for an unknown study.
        """
        row = sqlrows.round_row(study_id, round_, model_version, participants, deadline)
        with self._tx(write=True) as conn:
            self._require_study(conn, study_id, lock=True)
            query = db.newest_round(study_id, db.rounds.c.round, db.rounds.c.status)
            newest = conn.execute(query).first()
            version = conn.execute(
                select(db.models.c.version).where(*db.version_key(study_id, model_version))
            ).first()
            rules.check_can_open(
                study_id,
                round_,
                newest=0 if newest is None else newest.round,
                newest_open=newest is not None and newest.status == _OPEN,
                version_exists=version is not None,
                model_version=model_version,
            )
            conn.execute(insert(db.rounds), row)

    def current_round(self, study_id: str) -> RoundState | None:
        """The newest round of the study (open or closed), or ``None`` before the first."""
        if _nul(study_id):
            return None
        with self._tx(write=False) as conn:
            row = conn.execute(db.newest_round(study_id)).first()
        return None if row is None else sqlrows.round_state(row)

    def rounds(self, study_id: str) -> list[RoundState]:
        """Every round, in order."""
        if _nul(study_id):
            return []
        query = (
            select(db.rounds).where(db.rounds.c.study_id == study_id).order_by(db.rounds.c.round)
        )
        with self._tx(write=False) as conn:
            return [sqlrows.round_state(row) for row in conn.execute(query)]

    def set_deadline(self, study_id: str, round_: int, deadline: float | None) -> None:
        """Move the deadline of an open round (``FederationError`` if it is not open)."""
        if _nul(study_id):
            raise rules.deadline_not_open(study_id, round_)
        with self._tx(write=True) as conn:
            done = conn.execute(
                update(db.rounds)
                .where(*db.round_key(db.rounds, study_id, round_), db.rounds.c.status == _OPEN)
                .values(deadline=deadline)
            )
            if done.rowcount != 1:
                raise rules.deadline_not_open(study_id, round_)

    def add_update(self, study_id: str, round_: int, meta: UpdateMeta, delta: Weights) -> None:
        """Store an accepted update of an open round (see the protocol for the errors).

        A resubmission of a stored update (same site, same digest) raises ``DuplicateUpdate``
        even after its round closed: the site is answered "already received".
        """
        where = rules.update_where(study_id, round_, meta.site)
        if _nul(study_id):
            raise rules.not_open(where, False)
        row = sqlrows.update_row(study_id, round_, meta, delta, where=where)
        stored = select(db.updates.c.digest).where(*db.update_key(study_id, round_, meta.site))
        with self._tx(write=True) as conn:
            digest = conn.execute(stored).scalar()
            if digest is not None:
                rules.raise_resubmitted(where, digest, meta.digest)
            # A shared lock on the round: close_round (exclusive) waits for this transaction.
            status = conn.execute(
                select(db.rounds.c.status)
                .where(*db.round_key(db.rounds, study_id, round_))
                .with_for_update(read=True)
            ).scalar()
            if status != _OPEN:
                raise rules.not_open(where, status is not None)
            try:
                with conn.begin_nested():
                    conn.execute(insert(db.updates), row)
            except sa_exc.IntegrityError:
                # A concurrent caller won the race; its row is committed and visible now.
                logger.debug("%s: a concurrent submission was stored first", where)
                digest = conn.execute(stored).scalar()
                if digest is not None:
                    rules.raise_resubmitted(where, digest, meta.digest)
                raise rules.nonce_reused(where, meta.nonce) from None

    def updates(self, study_id: str, round_: int) -> list[UpdateMeta]:
        """The accepted updates of a round, in site order."""
        if _nul(study_id):
            return []
        query = (
            select(*db.UPDATE_META)
            .where(*db.round_key(db.updates, study_id, round_))
            .order_by(db.updates.c.site)
        )
        with self._tx(write=False) as conn:
            rows = conn.execute(query).all()
        return [
            UpdateMeta(
                r.site,
                r.nonce,
                r.digest,
                r.num_examples,
                load_json(
                    r.metrics, what=f"metrics of the {rules.update_where(study_id, round_, r.site)}"
                ),
                r.base_version,
            )
            for r in rows
        ]

    def load_delta(self, study_id: str, round_: int, site: str) -> dict[str, npt.NDArray[Any]]:
        """One site's delta (``FederationError`` if absent or its round closed)."""
        if _nul(study_id, site):
            raise rules.no_update(rules.update_where(study_id, round_, site))
        query = select(db.updates.c.payload, db.updates.c.payload_sha256).where(
            *db.update_key(study_id, round_, site)
        )
        with self._tx(write=False) as conn:
            row = conn.execute(query).first()
        where = rules.update_where(study_id, round_, site)
        if row is None:
            raise rules.no_update(where)
        if row.payload is None:
            raise rules.released(where)
        what = f"the delta of the {where}"
        payload = checked(row.payload, row.payload_sha256, what=what, where=self.url)
        return unpack_arrays(payload, what=what)

    def nonce_seen(self, nonce: str) -> bool:
        """Whether an accepted message ever carried ``nonce``."""
        if _nul(nonce):
            return False
        with self._tx(write=False) as conn:
            query = select(db.updates.c.nonce).where(db.updates.c.nonce == nonce)
            return conn.execute(query).first() is not None

    def close_round(
        self,
        study_id: str,
        round_: int,
        *,
        new_version: int,
        weights: Weights,
        strategy_state: Weights,
        summary: Mapping[str, Any],
    ) -> None:
        """Atomically store model ``new_version``, close the round with its summary and release
        the round's update payloads (``FederationError`` if the round is not open or
        ``new_version`` is not newer than every stored version)."""
        if _nul(study_id):
            raise rules.cannot_close(study_id, round_)
        what = f"model version {new_version} of study {study_id!r}"
        model_row = sqlrows.model_row(study_id, new_version, weights, strategy_state, what=what)
        text_summary = dump_json(dict(summary), what=f"summary of round {round_}")
        this_round = db.round_key(db.rounds, study_id, round_)
        with self._tx(write=True) as conn:
            status = conn.execute(
                select(db.rounds.c.status).where(*this_round).with_for_update()
            ).scalar()
            if status != _OPEN:
                raise rules.cannot_close(study_id, round_)
            latest = conn.execute(
                select(func.max(db.models.c.version)).where(db.models.c.study_id == study_id)
            ).scalar()
            rules.check_new_version(study_id, new_version, latest)
            conn.execute(insert(db.models), model_row)
            # Killed here, the new model is written but not committed: the round stays open.
            crash_point("store.mid_checkpoint")
            conn.execute(
                update(db.rounds).where(*this_round).values(status=_CLOSED, summary=text_summary)
            )
            conn.execute(
                update(db.updates)
                .where(*db.round_key(db.updates, study_id, round_))
                .values(payload=None, payload_sha256=None)
            )
        logger.debug("study %s: round %d closed as model version %d", study_id, round_, new_version)

    # --- log -------------------------------------------------------------------------------
    def add_rejection(self, rejection: StoredRejection) -> None:
        """Remember a refused message."""
        with self._tx(write=True) as conn:
            conn.execute(insert(db.rejections), vars(rejection))

    def rejections(self, study_id: str) -> list[StoredRejection]:
        """Refused messages of a study, oldest first."""
        if _nul(study_id):
            return []
        query = (
            select(db.rejections)
            .where(db.rejections.c.study_id == study_id)
            .order_by(db.rejections.c.id)
        )
        with self._tx(write=False) as conn:
            return [sqlrows.rejection(r) for r in conn.execute(query)]

    def add_event(self, event: StoredEvent) -> None:
        """Append a line to a study's log."""
        with self._tx(write=True) as conn:
            conn.execute(insert(db.events), vars(event))

    def events(self, study_id: str, *, after: int = 0) -> list[tuple[int, StoredEvent]]:
        """Log lines with their sequence number (increasing), those after ``after`` only."""
        if _nul(study_id):
            return []
        query = (
            select(db.events)
            .where(db.events.c.study_id == study_id, db.events.c.id > after)
            .order_by(db.events.c.id)
        )
        with self._tx(write=False) as conn:
            return [sqlrows.stored_event(r) for r in conn.execute(query)]


def _nul(*keys: str) -> bool:
    """Whether a key holds a NUL character, which no stored key does (PostgreSQL cannot hold one
    in text, and :func:`~alliance.store.rules.check_key` refuses it on every backend): such a
    key is answered as absent without asking the database."""
    return any("\x00" in key for key in keys)


def _newest_model(study_id: str) -> Select[Any]:
    """``SELECT`` of a study's newest model version, blobs and digests included."""
    return (
        select(db.models)
        .where(db.models.c.study_id == study_id)
        .order_by(db.models.c.version.desc())
        .limit(1)
    )
