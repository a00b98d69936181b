"""The hospital's own record of every privacy-costing release computed on its patients.

A :class:`PrivacyLedger` holds one row per study round the site trained with differential
privacy: the round's event, ``SampledGaussian(q, σ, steps)``. The hospital's spend is the
composition of *all* rows, across all studies, because every study sees the same patients; that
total (PLD ε at the hospital's fixed δ, see :mod:`alliance.privacy.accountant`) is what the
budget limits. A round is charged before any record is read for it, and a round whose event
would push the total above the budget is refused with
:class:`~alliance.core.errors.BudgetExceeded`; nothing is charged then.

Threat model
------------
The ledger protects the hospital's patients against the consortium using them more than the
hospital agreed to. It belongs to the site: a SQLite file on the site's disk, written only by
the site's own processes. The coordinator never sees it (it learns only that a round was
refused for "budget"), so a dishonest or buggy coordinator cannot lower what was spent, and a
site does not depend on anyone else's arithmetic. The site's operator is trusted, as they are
with the patient data itself: the ledger does not defend against someone with write access to
the site's disk. What it does defend against is *accidental* loss of the accounting. A deleted,
replaced or re-created ledger would silently reset the spend to zero, so at creation the ledger
writes an **anchor** (:mod:`alliance.privacy.anchor`), ``<ledger>.anchor`` next to it (or a
path given to :meth:`open`; a deployment can keep it on another volume), naming the ledger's
random id and creation time. :meth:`PrivacyLedger.open` then refuses, with
:class:`~alliance.core.errors.PrivacyError`,

* a missing ledger file when its anchor exists (restore the ledger from backup; only if the
  privacy officer decides to start the accounting afresh, delete the anchor as well), and
* a ledger whose id differs from its anchor's (a different ledger was put in its place).

A ledger that exists without an anchor (a crash between creating the two, or an anchor lost)
gets its anchor rewritten from the ledger's own record, with a warning.

Storage
-------
Standard-library ``sqlite3``; WAL journal with ``synchronous=FULL``, so a committed charge
survives power loss; one ``BEGIN IMMEDIATE`` transaction per change, so checking the budget and
recording the charge are atomic even with several site processes on one ledger (the second
waits for the first, up to :data:`BUSY_TIMEOUT_S`). Plain columns only, no pickle. The schema
version is kept in ``PRAGMA user_version``; a ledger written by a newer version is refused.
The hospital's δ is fixed when the ledger is created, and opening it with another δ is an
error; budget changes (from ``site.toml``) are recorded with their time, for the privacy
officer's audit.

Idempotence and releases
------------------------
Charging the same ``(study, round)`` twice with the same event charges once (a site restarted
mid-round records it again harmlessly); a *different* event for an already charged round is a
:class:`~alliance.core.errors.PrivacyError`, since the round's data was already released under
the first. A charge pays for one release only: the reply a round released is recorded with
:meth:`PrivacyLedger.record_release` before it leaves the site, and a round asked for again is
answered with those bytes (:meth:`PrivacyLedger.release`), never trained again; see
:mod:`alliance.privacy.releases`. Schema 2 added that table; a schema-1 ledger gains it when
opened.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from alliance.core.errors import BudgetExceeded, ConfigError, PrivacyError, ProtocolError
from alliance.privacy.accountant import Epsilon, SampledGaussian, epsilon
from alliance.privacy.anchor import (
    LedgerIdentity,
    default_anchor_path,
    refuse_if_anchored,
    verify_or_write_anchor,
)
from alliance.privacy.releases import RELEASES_SCHEMA, Release, find_release, record_release

__all__ = [
    "BUSY_TIMEOUT_S",
    "SCHEMA_VERSION",
    "BudgetCheck",
    "Charge",
    "PrivacyLedger",
    "ReleaseKind",
    "StudySpend",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""Version of the ledger's tables, kept in ``PRAGMA user_version``."""

BUSY_TIMEOUT_S = 60.0
"""How long a charge waits for another process holding the ledger's write lock."""

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE charges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    study TEXT NOT NULL CHECK (length(study) > 0),
    round INTEGER NOT NULL CHECK (round >= 0),
    kind TEXT NOT NULL,
    sample_rate REAL NOT NULL CHECK (sample_rate >= 0 AND sample_rate <= 1),
    noise_multiplier REAL NOT NULL CHECK (noise_multiplier >= 0),
    steps INTEGER NOT NULL CHECK (steps >= 0),
    epsilon_after REAL NOT NULL,
    charged_at TEXT NOT NULL,
    UNIQUE (study, round)
) STRICT;
CREATE TABLE budgets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    budget_epsilon REAL NOT NULL,
    set_at TEXT NOT NULL
) STRICT;
"""
_SCHEMA += RELEASES_SCHEMA

_SELECT_CHARGES = (
    "SELECT study, round, kind, sample_rate, noise_multiplier, steps, charged_at FROM charges"
)
_INSERT_CHARGE = (
    "INSERT INTO charges (study, round, kind, sample_rate, noise_multiplier, steps, charged_at, "
    "epsilon_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class ReleaseKind(StrEnum):
    """What kind of release a charge records (all are accounted as sampled Gaussians)."""

    DP_SGD = "dp-sgd"
    """Patient-level DP-SGD at the site."""
    CLIENT_DP = "client-dp"
    """Client-level clipping and noise of the site's whole update."""


@dataclass(frozen=True)
class Charge:
    """One charged study round.

    Attributes
    ----------
    study, round
        The round charged.
    event
        What was released.
    kind
        How it was released.
    charged_at
        When it was first charged (UTC, ISO 8601).
    total
        The hospital's total spend after the charge, when returned by :meth:`PrivacyLedger.charge`
        (``None`` in :meth:`PrivacyLedger.entries`).
    new
        ``False`` when the round had already been charged (nothing was added).
    """

    study: str
    round: int
    event: SampledGaussian
    kind: ReleaseKind
    charged_at: str
    total: Epsilon | None = None
    new: bool = True


@dataclass(frozen=True)
class BudgetCheck:
    """Whether some rounds still fit in the budget, and what they would cost.

    Attributes
    ----------
    spent
        The hospital's total so far.
    after
        The total if the rounds were charged (equal to ``spent`` if they already were).
    remaining
        ``budget − after.epsilon``: ε left afterwards, negative when refused.
    allowed
        ``after.epsilon <= budget``.
    """

    spent: Epsilon
    after: Epsilon
    remaining: float
    allowed: bool


@dataclass(frozen=True)
class StudySpend:
    """What one study has cost the hospital on its own.

    Attributes
    ----------
    study
        The study.
    rounds
        Rounds charged.
    epsilon
        ε of the study's rounds composed (the hospital total composes all studies; it is
        usually well below the sum of these).
    """

    study: str
    rounds: int
    epsilon: Epsilon


class PrivacyLedger:
    """The site's persistent privacy accounting; use :meth:`open`, then :meth:`close`.

    Not to be shared between threads; every process (or thread) opens its own, and charges from
    all of them are serialised by the database.
    """

    def __init__(
        self, conn: sqlite3.Connection, *, path: Path, budget_epsilon: float, delta: float
    ) -> None:
        self._conn = conn
        self._path = path
        self._budget = budget_epsilon
        self._delta = delta

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        budget_epsilon: float,
        delta: float,
        anchor: Path | None = None,
    ) -> PrivacyLedger:
        """Open the ledger at ``path``, creating it (and its anchor) on first use.

        Parameters
        ----------
        path
            The ledger's SQLite file.
        budget_epsilon
            The hospital's total ε budget (from ``site.toml``); may change between openings.
        delta
            The hospital's δ; fixed when the ledger is created.
        anchor
            Where the anchor lives; ``<path>.anchor`` by default.

        Returns
        -------
        PrivacyLedger
            Open ledger; close it (or use it as a context manager).

        Raises
        ------
        ConfigError
            Budget or δ out of range, or δ differs from the one the ledger was created with.
        PrivacyError
            The ledger is missing but its anchor says one was created, or it is not the ledger
            its anchor names.
        ProtocolError
            The file is not a ledger, or was written by a newer version.
        """
        if not (budget_epsilon >= 0 and not math.isnan(budget_epsilon)):
            raise ConfigError(f"budget_epsilon must be >= 0, got {budget_epsilon}")
        if not 0.0 < delta < 1.0:
            raise ConfigError(f"delta must be in (0, 1), got {delta}")
        path = Path(path)
        anchor = Path(anchor) if anchor is not None else default_anchor_path(path)
        existed = path.exists()
        if not existed:
            refuse_if_anchored(path, anchor)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        try:
            identity = _initialise(conn, path, anchor=anchor, delta=delta, budget=budget_epsilon)
            verify_or_write_anchor(path, anchor, identity, existed=existed)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path=path, budget_epsilon=budget_epsilon, delta=delta)

    def close(self) -> None:
        """Close the database connection (safe to call twice)."""
        self._conn.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The ledger file."""
        return self._path

    @property
    def budget_epsilon(self) -> float:
        """The hospital's total ε budget."""
        return self._budget

    @property
    def delta(self) -> float:
        """The hospital's δ."""
        return self._delta

    # --- charging -----------------------------------------------------------------------------

    def charge(
        self,
        *,
        study: str,
        round: int,
        event: SampledGaussian,
        kind: ReleaseKind | str = ReleaseKind.DP_SGD,
    ) -> Charge:
        """Record the release of ``event`` for ``(study, round)``, within the budget.

        Parameters
        ----------
        study, round
            The study round being released (``round`` ≥ 0).
        event
            What the round releases.
        kind
            How it is released.

        Returns
        -------
        Charge
            The charge, with the hospital's total afterwards; ``new`` is ``False`` if the round
            was already charged with this event (nothing is added).

        Raises
        ------
        BudgetExceeded
            The total would exceed the budget; nothing was charged.
        PrivacyError
            The round was already charged with a different event or kind.
        """
        _check_round(study, round, event)
        kind = _kind(kind)
        with self._write() as db:
            existing = _charged(db, study, round)
            rows = _all_events(db)
            if existing is not None:
                _same_or_fail(existing, event, kind)
                total = epsilon(rows, delta=self._delta)
                return Charge(study, round, event, kind, existing.charged_at, total, new=False)
            spent = epsilon(rows, delta=self._delta)
            after = epsilon([*rows, event], delta=self._delta)
            if after.epsilon > self._budget:
                raise BudgetExceeded(self._refusal(study, [round], event, spent, after))
            now = _now()
            q, sigma, steps = event.sample_rate, event.noise_multiplier, event.steps
            db.execute(
                _INSERT_CHARGE, (study, round, kind.value, q, sigma, steps, now, after.epsilon)
            )
        logger.info(
            "charged study %s round %d: ε %.4g -> %.4g of %.4g",
            study,
            round,
            spent.epsilon,
            after.epsilon,
            self._budget,
        )
        return Charge(study, round, event, kind, now, after, new=True)

    def check(
        self, *, study: str, round: int, event: SampledGaussian, rounds: int = 1
    ) -> BudgetCheck:
        """Whether rounds ``round … round + rounds − 1`` of ``study``, each releasing ``event``,
        fit in the budget. Rounds already charged are not counted again.

        Parameters
        ----------
        study, round
            The first round to check.
        event
            What each round would release.
        rounds
            How many consecutive rounds (the rest of the study, for a site deciding up front).

        Returns
        -------
        BudgetCheck
            Spend before and after, ε left, and whether it is allowed.
        """
        _check_round(study, round, event)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"rounds must be an int >= 1, got {rounds!r}")
        rows, charged = self._read(lambda db: (_all_events(db), _rounds_of(db, study)))
        new = [event for r in range(round, round + rounds) if r not in charged]
        spent = epsilon(rows, delta=self._delta)
        after = epsilon([*rows, *new], delta=self._delta) if new else spent
        remaining = self._budget - after.epsilon
        return BudgetCheck(spent, after, remaining, after.epsilon <= self._budget)

    def ensure_within_budget(
        self, *, study: str, round: int, event: SampledGaussian, rounds: int = 1
    ) -> BudgetCheck:
        """:meth:`check`, raising when the rounds do not fit.

        Raises
        ------
        BudgetExceeded
            Naming the spend so far, the request and the budget, and what to do.
        """
        result = self.check(study=study, round=round, event=event, rounds=rounds)
        if not result.allowed:
            span = list(range(round, round + rounds))
            raise BudgetExceeded(self._refusal(study, span, event, result.spent, result.after))
        return result

    def record_release(
        self, *, study: str, round: int, model_version: int, reply: bytes
    ) -> Release:
        """Durably record ``reply`` as the one release of a charged round, before it is sent.

        Raises
        ------
        PrivacyError
            The round was not charged, or a different reply was released for it already.
        """
        with self._write() as db:
            return record_release(
                db, study=study, round_=round, model_version=model_version, reply=reply
            )

    def release(self, *, study: str, round: int) -> Release | None:
        """What ``(study, round)`` released, or ``None`` if nothing left the site for it."""
        return self._read(lambda db: find_release(db, study, round))

    def would_exceed(self, events: Iterable[SampledGaussian]) -> bool:
        """Whether charging ``events`` on top of everything spent would exceed the budget."""
        after = epsilon([*self._read(_all_events), *events], delta=self._delta)
        return after.epsilon > self._budget

    # --- reading ------------------------------------------------------------------------------

    def spent(self) -> Epsilon:
        """The hospital's total spend: every charged round of every study, composed."""
        return epsilon(self._read(_all_events), delta=self._delta)

    def remaining(self) -> float:
        """ε left in the budget (0 when it is used up)."""
        return max(0.0, self._budget - self.spent().epsilon)

    def by_study(self) -> list[StudySpend]:
        """Each study's own spend, by study name (the budget limits :meth:`spent`, not these)."""
        events: dict[str, list[SampledGaussian]] = {}
        for charge in self.entries():
            events.setdefault(charge.study, []).append(charge.event)
        return [
            StudySpend(study, len(evs), epsilon(evs, delta=self._delta))
            for study, evs in sorted(events.items())
        ]

    def entries(self) -> list[Charge]:
        """Every charge, in the order they were made."""
        rows = self._read(lambda db: db.execute(_SELECT_CHARGES + " ORDER BY seq").fetchall())
        return [_charge_of(row) for row in rows]

    # --- internals ----------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction holding the write lock from the first read: check-then-insert."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``query(db)`` in one read transaction (a consistent snapshot)."""
        self._conn.execute("BEGIN")
        try:
            return query(self._conn)
        finally:
            self._conn.execute("COMMIT")

    def _refusal(
        self,
        study: str,
        rounds: Sequence[int],
        event: SampledGaussian,
        spent: Epsilon,
        after: Epsilon,
    ) -> str:
        which = f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {rounds[0]}–{rounds[-1]}"
        alone = epsilon(event, delta=self._delta).epsilon
        return (
            f"privacy budget exceeded: {which} of study {study!r} would bring this hospital's "
            f"spend to ε = {after.epsilon:.4g} (δ = {self._delta:g}), above its budget of "
            f"ε = {self._budget:g}. Already spent: ε = {spent.epsilon:.4g}; requested per round: "
            f"q = {event.sample_rate:g}, noise multiplier = {event.noise_multiplier:g}, "
            f"{event.steps} steps (ε = {alone:.4g} on its own). Nothing was charged. To go on, "
            "either raise the budget in site.toml after the privacy officer agrees, or ask the "
            "consortium for fewer rounds or more noise (a larger noise multiplier or a smaller "
            "sampling rate)."
        )


# --- module internals ---------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _initialise(
    conn: sqlite3.Connection, path: Path, *, anchor: Path, delta: float, budget: float
) -> LedgerIdentity:
    """Set the pragmas, create the schema on a fresh file, check δ and record the budget."""
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.DatabaseError as exc:
        raise ProtocolError(f"{path} is not a privacy ledger (SQLite says: {exc})") from exc
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version == 0:
            if conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
                raise ProtocolError(f"{path} is an SQLite database but not a privacy ledger")
            refuse_if_anchored(path, anchor)
            for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT first
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("ledger_id", uuid.uuid4().hex), ("created_at", _now()), ("delta", repr(delta))],
            )
        elif version < SCHEMA_VERSION:
            conn.execute(RELEASES_SCHEMA)  # schema 1 -> 2: the record of releases
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version > SCHEMA_VERSION:
            raise ProtocolError(
                f"{path} was written by a newer Guardian Alliance (ledger schema {version}, this "
                f"version reads {SCHEMA_VERSION}); upgrade this site's software"
            )
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        stored = float(meta["delta"])
        if stored != delta:
            raise ConfigError(
                f"the privacy ledger {path} was created with δ = {stored:g}, but δ = {delta:g} "
                "was given; δ is fixed for a hospital, so set it back to "
                f"{stored:g} in site.toml"
            )
        last = conn.execute("SELECT budget_epsilon FROM budgets ORDER BY seq DESC LIMIT 1")
        row = last.fetchone()
        if row is None or row[0] != budget:
            conn.execute(
                "INSERT INTO budgets (budget_epsilon, set_at) VALUES (?, ?)", (budget, _now())
            )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return LedgerIdentity(meta["ledger_id"], meta["created_at"], stored)


def _check_round(study: str, round: int, event: SampledGaussian) -> None:
    if not isinstance(study, str) or not study:
        raise ConfigError(f"study must be a non-empty string, got {study!r}")
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise ConfigError(f"round must be an int >= 0, got {round!r}")
    if not isinstance(event, SampledGaussian):
        raise ConfigError(f"event must be a SampledGaussian, got {event!r}")


def _kind(kind: ReleaseKind | str) -> ReleaseKind:
    try:
        return ReleaseKind(kind)
    except ValueError:
        accepted = ", ".join(repr(k.value) for k in ReleaseKind)
        raise ConfigError(f"release kind must be one of {accepted}, got {kind!r}") from None


def _charge_of(row: tuple[str, int, str, float, float, int, str]) -> Charge:
    study, round_, kind, q, sigma, steps, charged_at = row
    return Charge(study, round_, SampledGaussian(q, sigma, steps), ReleaseKind(kind), charged_at)


def _charged(db: sqlite3.Connection, study: str, round: int) -> Charge | None:
    row = db.execute(_SELECT_CHARGES + " WHERE study = ? AND round = ?", (study, round)).fetchone()
    return None if row is None else _charge_of(row)


def _all_events(db: sqlite3.Connection) -> list[SampledGaussian]:
    rows = db.execute("SELECT sample_rate, noise_multiplier, steps FROM charges ORDER BY seq")
    return [SampledGaussian(q, sigma, steps) for q, sigma, steps in rows.fetchall()]


def _rounds_of(db: sqlite3.Connection, study: str) -> set[int]:
    return {r for (r,) in db.execute("SELECT round FROM charges WHERE study = ?", (study,))}


def _same_or_fail(existing: Charge, event: SampledGaussian, kind: ReleaseKind) -> None:
    if existing.event != event or existing.kind is not kind:
        raise PrivacyError(
            f"study {existing.study!r} round {existing.round} was already charged on "
            f"{existing.charged_at} as {existing.kind.value} {existing.event}, and is now "
            f"charged as {kind.value} {event}; the round's data was released under the first. "
            "Re-run the round under its original settings, or as a new round"
        )
