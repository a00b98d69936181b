"""The SQL layer under :class:`~alliance.store.sql.SqlStore`: tables, engine, transactions,
migration.

Layout version :data:`SCHEMA_VERSION` (recorded in ``alliance_schema_version``); changing a
table means a new version and a step in :func:`migrate`, which also refuses a database written
by a newer layout. Version 2 added ``alliance_updates.base_version`` (the model version an update
was trained on, for asynchronous rounds); :func:`migrate` adds the column to a version 1
database when it is first opened, its existing rows reading ``NULL``. Version 3 stores the
SHA-256 of every blob beside it (``weights_sha256`` and ``state_sha256`` of a model version,
``payload_sha256`` of an update), checked on every read (:mod:`alliance.store.integrity`); the
upgrade computes them for the rows already there, trusting those rows as they are then.

Keys enforce the store's rules in the database itself, so they hold under any number of
concurrent coordinator threads or processes:

======================  =====================================  ===============================
table                   key                                    rule
======================  =====================================  ===============================
alliance_models         (study_id, version)                    one model per version
alliance_rounds         (study_id, round)                      one row per round
alliance_updates        (study_id, round, site); nonce UNIQUE  one update per site and round;
                                                               a nonce once, ever
alliance_events         id (autoincrement)                     the log's sequence numbers
======================  =====================================  ===============================

Arrays are ``LargeBinary`` columns holding :func:`~alliance.store.arrays.pack_arrays` bytes;
participants, metrics and summaries are JSON text. :func:`make_engine` sets SQLite to WAL
journaling with ``synchronous=FULL`` (a committed transaction survives SIGKILL and power loss),
a busy timeout, foreign keys on, and SQLAlchemy in charge of ``BEGIN`` (``BEGIN IMMEDIATE`` for
writing transactions, so two writers never hold snapshots they cannot upgrade); PostgreSQL gets
``pool_pre_ping`` and a connect timeout. :func:`transaction` runs one transaction and turns a
database that cannot be reached or locked into a ``ConfigError``. The ``*_key`` helpers and
:func:`newest_round` spell the ``WHERE`` terms and queries the store repeats; rows and records
are converted in :mod:`alliance.store.sqlrows`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Double,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from alliance.core.errors import ConfigError, StoreDamaged, TransportError
from alliance.store.integrity import RESTORE, backfill_digests

__all__ = [
    "SCHEMA_VERSION",
    "SQLITE_BUSY_TIMEOUT_S",
    "UPDATE_META",
    "WRITE_OPTION",
    "events",
    "first_line",
    "make_engine",
    "mask_url",
    "metadata",
    "migrate",
    "models",
    "newest_round",
    "rejections",
    "round_key",
    "rounds",
    "schema_version",
    "studies",
    "transaction",
    "update_key",
    "updates",
    "version_key",
]

logger = logging.getLogger(__name__)

#: The table layout this code writes and reads.
SCHEMA_VERSION = 3
#: Seconds a SQLite writer waits for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT_S = 30.0
#: Execution option: the transaction writes (SQLite: ``BEGIN IMMEDIATE``).
WRITE_OPTION = "alliance_write"

#: SQLite's words for a file it cannot trust (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``).
_DAMAGED = re.compile(r"malformed|not a database|database corrupt", re.IGNORECASE)

#: A disk that refused a write (SQLite ``SQLITE_FULL``, PostgreSQL ``disk_full``).
_FULL = re.compile(r"disk is full|no space left on device|could not extend file", re.IGNORECASE)

metadata = MetaData()

schema_version = Table(
    "alliance_schema_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
)

studies = Table(
    "alliance_studies",
    metadata,
    Column("study_id", String, primary_key=True),
    Column("spec", Text, nullable=False),
    Column("spec_hash", String, nullable=False),
    Column("submitted_by", String, nullable=False),
    Column("status", String, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("finished_at", Double, nullable=True),
    Column("error", Text, nullable=True),
)

models = Table(
    "alliance_models",
    metadata,
    Column("study_id", String, ForeignKey(studies.c.study_id), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("weights", LargeBinary, nullable=False),
    Column("strategy_state", LargeBinary, nullable=False),
    Column("weights_sha256", String, nullable=True),  # since schema version 3
    Column("state_sha256", String, nullable=True),  # since schema version 3
)

rounds = Table(
    "alliance_rounds",
    metadata,
    Column("study_id", String, ForeignKey(studies.c.study_id), primary_key=True),
    Column("round", Integer, primary_key=True, autoincrement=False),
    Column("model_version", Integer, nullable=False),
    Column("participants", Text, nullable=False),  # JSON list of site ids
    Column("deadline", Double, nullable=True),
    Column("status", String, nullable=False),
    Column("summary", Text, nullable=True),  # JSON object once closed
)

updates = Table(
    "alliance_updates",
    metadata,
    Column("study_id", String, primary_key=True),
    Column("round", Integer, primary_key=True, autoincrement=False),
    Column("site", String, primary_key=True),
    Column("nonce", String, nullable=False, unique=True),
    Column("digest", String, nullable=False),
    Column("num_examples", Integer, nullable=False),
    Column("metrics", Text, nullable=False),  # JSON object
    Column("payload", LargeBinary, nullable=True),  # NULL once the round closed
    Column("received_at", Double, nullable=False),
    Column("base_version", Integer, nullable=True),  # since schema version 2
    Column("payload_sha256", String, nullable=True),  # since schema version 3; NULL: released
    ForeignKeyConstraint(["study_id", "round"], [rounds.c.study_id, rounds.c.round]),
)

rejections = Table(
    "alliance_rejections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_id", String, nullable=False, index=True),
    Column("round", Integer, nullable=False),
    Column("sender", String, nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", Double, nullable=False),
)

events = Table(
    "alliance_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_id", String, nullable=False),
    Column("at", Double, nullable=False),
    Column("kind", String, nullable=False),
    Column("message", Text, nullable=False),
    Index("ix_alliance_events_study_id", "study_id", "id"),
)


#: The columns of an update without its payload.
UPDATE_META = (
    updates.c.site,
    updates.c.nonce,
    updates.c.digest,
    updates.c.num_examples,
    updates.c.metrics,
    updates.c.base_version,
)


def round_key(table: Table, study_id: str, round_: int) -> tuple[ColumnElement[bool], ...]:
    """``WHERE`` terms selecting one round's rows of ``table`` (rounds or updates)."""
    return (table.c.study_id == study_id, table.c.round == round_)


def update_key(study_id: str, round_: int, site: str) -> tuple[ColumnElement[bool], ...]:
    """``WHERE`` terms selecting one site's update of a round."""
    return (*round_key(updates, study_id, round_), updates.c.site == site)


def version_key(study_id: str, version: int) -> tuple[ColumnElement[bool], ...]:
    """``WHERE`` terms selecting one model version."""
    return (models.c.study_id == study_id, models.c.version == version)


def newest_round(study_id: str, *columns: Column[Any]) -> Select[Any]:
    """``SELECT`` of a study's newest round (open or closed): ``columns``, or the whole row."""
    query = select(*columns) if columns else select(rounds)
    return query.where(rounds.c.study_id == study_id).order_by(rounds.c.round.desc()).limit(1)


def first_line(exc: BaseException) -> str:
    """The driver's own message of a SQLAlchemy error, first line only (no SQL, no URL)."""
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@contextmanager
def transaction(engine: Engine, shown: str, *, write: bool) -> Iterator[Connection]:
    """One transaction on ``engine``; committed when the block ends, rolled back if it raises.

    Raises
    ------
    ConfigError
        If the database cannot be reached, opened or locked (``shown``: the URL, password
        masked; the password never appears in the message).
    StoreDamaged
        If SQLite reports the file malformed or not a database.
    TransportError
        If the database's disk is full: nothing was written, the caller may retry.
    """
    try:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: write})
            with conn.begin():
                yield conn
    except sa_exc.DatabaseError as exc:
        if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError):
            raise  # a rule of the store, handled by the caller
        detail, password = first_line(exc), engine.url.password
        if _DAMAGED.search(detail):
            raise StoreDamaged(
                f"coordinator store {shown}: the database file is damaged ({detail}); {RESTORE}"
            ) from None
        if not isinstance(exc, sa_exc.OperationalError):
            raise
        if _FULL.search(detail):
            raise TransportError(
                f"coordinator store {shown}: its disk is full ({detail}); nothing was stored. "
                "Free space on the database's disk; the request can be retried"
            ) from None
        if password:  # drivers do not echo passwords, but never risk it
            detail = detail.replace(str(password), "***")
        if engine.dialect.name == "sqlite":
            hint = "that its directory exists and is writable, that the disk is not full"
        else:
            hint = "that the server is running and reachable with these credentials"
        raise ConfigError(
            f"coordinator store {shown}: {detail}; check {hint}, and that no other "
            "program holds a lock on the database"
        ) from None


def make_engine(url: str, shown: str, *, echo: bool) -> Engine:
    """An engine for ``url`` with the settings above (``shown``: the URL, password masked).

    Raises
    ------
    ConfigError
        If the URL does not parse, names a database other than SQLite or PostgreSQL, an
        in-memory SQLite database, or a driver that is not installed.
    """
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise ConfigError(
            f"coordinator store URL {shown!r} is not a database URL; use "
            "sqlite:///path/coordinator.db or postgresql+psycopg://user@host:5432/database"
        ) from None
    backend = parsed.get_backend_name()
    options: dict[str, Any] = {"echo": echo, "hide_parameters": True}
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed.query):
            raise ConfigError(
                f"coordinator store URL {shown!r} names an in-memory SQLite database, which "
                "is not durable; give a file (sqlite:///path/coordinator.db) or use MemoryStore"
            )
    elif backend == "postgresql":
        options["pool_pre_ping"] = True
        if "connect_timeout" not in parsed.query:
            options["connect_args"] = {"connect_timeout": 10}
    else:
        raise ConfigError(
            f"coordinator store URL {shown!r}: database kind {backend!r} is not supported; "
            "use sqlite:///... or postgresql+psycopg://..."
        )
    try:
        engine = create_engine(parsed, **options)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"coordinator store URL {shown!r}: cannot load its database driver ({exc}); "
            "install it or use postgresql+psycopg:// (psycopg 3 ships with this package)"
        ) from None
    if backend == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy, not the sqlite3 module, decides where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                logger.warning("SQLite refused WAL journaling (mode %s); concurrency suffers", mode)
            cursor.execute("PRAGMA synchronous = FULL")
            # Released update payloads are sites' individual model deltas: overwrite them on
            # disk (Debian's SQLite does by default; others may not). It costs one write of
            # every released byte when a round closes (bench/deployment_overhead.py).
            cursor.execute("PRAGMA secure_delete = ON")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def mask_url(url: str) -> str:
    """``url`` with its password hidden, also when it does not parse."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def migrate(conn: Connection, shown: str) -> None:
    """Create the tables if missing, bring an older layout up to :data:`SCHEMA_VERSION` and
    record it; refuse a newer layout.

    Raises
    ------
    ConfigError
        If the database holds a schema version newer than this code knows.
    """
    if conn.dialect.name == "postgresql":  # serialise the first use by several processes
        conn.execute(text("SELECT pg_advisory_xact_lock(7151963)"))
    found = None
    if inspect(conn).has_table(schema_version.name):
        found = conn.execute(select(schema_version.c.version)).scalar()
    if found is not None and found > SCHEMA_VERSION:
        raise ConfigError(
            f"coordinator store {shown} has schema version {found}, this build knows versions "
            f"up to {SCHEMA_VERSION}; upgrade Guardian Alliance to open it"
        )
    if found is not None and found < 2:
        conn.execute(text(f"ALTER TABLE {updates.name} ADD COLUMN base_version INTEGER"))
        logger.info("coordinator store %s: schema version %d upgraded to 2", shown, found)
    if found is not None and found < 3:
        _add_digests(conn, shown)
    metadata.create_all(conn)
    if found is None:
        conn.execute(insert(schema_version).values(id=1, version=SCHEMA_VERSION))
    elif found < SCHEMA_VERSION:
        conn.execute(update(schema_version).values(version=SCHEMA_VERSION))


def _add_digests(conn: Connection, shown: str) -> None:
    """Schema version 3: a SHA-256 beside every blob, computed for the rows already stored."""
    for table, column in (
        (models, "weights_sha256"),
        (models, "state_sha256"),
        (updates, "payload_sha256"),
    ):
        conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column} VARCHAR"))
    done = backfill_digests(
        conn, models, {"weights": "weights_sha256", "strategy_state": "state_sha256"}
    )
    done += backfill_digests(conn, updates, {"payload": "payload_sha256"})
    logger.info(
        "coordinator store %s: schema upgraded to version 3; %d stored blobs now carry a "
        "digest, trusted as they were at the upgrade",
        shown,
        done,
    )
