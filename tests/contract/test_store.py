"""The CoordinatorStore contract, run against every backend: memory, SQLite and PostgreSQL.

One suite, three backends: a rule the coordinator relies on (an update counts once, a round
closes atomically, payloads are released, arrays come back bit for bit) is checked in exactly
the same words for :class:`MemoryStore` and :class:`SqlStore`, so the simulation and the
networked deployment cannot drift apart.

PostgreSQL runs against ``ALLIANCE_TEST_POSTGRES_URL`` (default: ``postgres`` with trust auth
on ``127.0.0.1:5432/test``). Each test gets a database of its own, created from that server and
dropped afterwards (``CREATE DATABASE alliance_test_<random>``). If the server cannot be
reached the PostgreSQL cases are skipped, or fail when ``ALLIANCE_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url

from alliance.core.errors import ConfigError, FederationError, ProtocolError
from alliance.store import (
    CoordinatorStore,
    DuplicateUpdate,
    MemoryStore,
    RoundStatus,
    SqlStore,
    StoredEvent,
    StoredRejection,
    StudyRecord,
    StudyStatus,
    UpdateMeta,
)
from alliance.store.sqlschema import SCHEMA_VERSION
from alliance.store.sqlschema import updates as updates_table

PG_URL = os.environ.get(
    "ALLIANCE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("ALLIANCE_REQUIRE_POSTGRES") == "1"
SITES = tuple(f"site-{i:02d}" for i in range(12))
Arrays = dict[str, npt.NDArray[Any]]

# ---------------------------------------------------------------------------------------------
# backends


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine | str]:
    """An AUTOCOMMIT engine on the PostgreSQL test server, or why there is none."""
    engine = create_engine(
        PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        shown = make_url(PG_URL).render_as_string(hide_password=True)
        yield (
            f"PostgreSQL at {shown} is unreachable ({first}); start it or point "
            "ALLIANCE_TEST_POSTGRES_URL at a server"
        )
        return
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_admin: Engine | str) -> Iterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    if isinstance(pg_admin, str):
        if REQUIRE_PG:
            pytest.fail(f"{pg_admin}; ALLIANCE_REQUIRE_POSTGRES=1 makes this a failure")
        pytest.skip(pg_admin)
    name = f"alliance_test_{uuid.uuid4().hex[:16]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with pg_admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Backend:
    """Opens stores on one backend; every store opened is closed after the test."""

    kind: str
    url: str | None
    opened: list[CoordinatorStore] = field(default_factory=list)

    def open(self) -> CoordinatorStore:
        store: CoordinatorStore = MemoryStore() if self.url is None else SqlStore(self.url)
        self.opened.append(store)
        return store


def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind: str = request.param
    url: str | None = None
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'c.db'}"
    elif kind == "postgresql":  # requested only here, so other backends never need a server
        url = request.getfixturevalue("pg_url")
    backend = Backend(kind, url)
    yield backend
    for store in backend.opened:
        store.close()


backend = pytest.fixture(params=["memory", "sqlite", "postgresql"])(_backend)
durable = pytest.fixture(params=["sqlite", "postgresql"])(_backend)


@pytest.fixture
def store(backend: Backend) -> CoordinatorStore:
    return backend.open()


# ---------------------------------------------------------------------------------------------
# helpers


def study(study_id: str = "s1", created_at: float = 1_700_000_000.25) -> StudyRecord:
    return StudyRecord(
        study_id, 'name = "x"\n', "ab" * 32, "dr.who", StudyStatus.QUEUED, created_at
    )


def weights(value: float = 0.0) -> Arrays:
    return {
        "emb": np.full((4, 3), value, dtype=np.float32),
        "bias": np.full(3, value, dtype=np.float32),
    }


def meta(site: str, *, nonce: str | None = None, digest: str | None = None) -> UpdateMeta:
    return UpdateMeta(
        site,
        nonce or uuid.uuid4().hex,
        digest or f"digest-{site}",
        17,
        {"loss": 0.25, "top1": 0.5},
    )


def delta(seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    return {
        "emb": rng.standard_normal((4, 3)).astype(np.float32),
        "bias": rng.standard_normal(3).astype(np.float32),
    }


def ready(store: CoordinatorStore, study_id: str = "s1", *, sites: tuple[str, ...] = SITES) -> None:
    """A study with model version 0 and round 1 open."""
    store.add_study(study(study_id))
    store.save_initial_model(study_id, weights(0.0), {"momentum": np.zeros(3, np.float32)})
    store.open_round(study_id, 1, model_version=0, participants=sites, deadline=None)


def close(store: CoordinatorStore, round_: int, study_id: str = "s1") -> None:
    store.close_round(
        study_id,
        round_,
        new_version=round_,
        weights=weights(float(round_)),
        strategy_state={"momentum": np.full(3, round_, np.float32)},
        summary={"round": round_, "contributors": ["site-00"]},
    )


def assert_same_arrays(got: Arrays, want: Arrays) -> None:
    """Same names; per name the same dtype, shape and raw bytes (so NaN payloads and -0.0)."""
    assert set(got) == set(want)
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype, name
        assert got[name].shape == arr.shape, name
        assert got[name].tobytes() == np.ascontiguousarray(arr).tobytes(), name


def run_threads(n: int, work: Callable[[int], object]) -> list[object]:
    """``work(i)`` on ``n`` threads released together; each result or raised exception."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a store call hung"
    return results


# ---------------------------------------------------------------------------------------------
# studies


def test_store_satisfies_the_protocol(store: CoordinatorStore) -> None:
    assert isinstance(store, CoordinatorStore)


def test_study_add_get_list(store: CoordinatorStore) -> None:
    assert store.study("s1") is None
    assert store.studies() == []
    store.add_study(study("s2", created_at=30.5))
    store.add_study(study("s1", created_at=10.125))
    store.add_study(study("s0", created_at=30.5))
    assert store.study("s1") == study("s1", created_at=10.125)
    assert [s.study_id for s in store.studies()] == ["s1", "s0", "s2"]


def test_duplicate_study_id_is_refused(store: CoordinatorStore) -> None:
    store.add_study(study("s1"))
    with pytest.raises(ConfigError, match="'s1' already exists"):
        store.add_study(study("s1", created_at=5.0))
    assert store.study("s1") == study("s1")


def test_study_status_stamps_finished_at(store: CoordinatorStore) -> None:
    store.add_study(study("s1"))
    store.set_study_status("s1", StudyStatus.RUNNING)
    running = store.study("s1")
    assert running is not None
    assert (running.status, running.finished_at, running.error) == (StudyStatus.RUNNING, None, None)
    before = time.time()
    store.set_study_status("s1", StudyStatus.FAILED, error="no quorum in round 3")
    failed = store.study("s1")
    assert failed is not None
    assert failed.finished_at is not None
    assert failed.status is StudyStatus.FAILED
    assert failed.error == "no quorum in round 3"
    assert before <= failed.finished_at <= time.time()
    store.set_study_status("s1", StudyStatus.FINISHED)
    finished = store.study("s1")
    assert finished is not None
    assert finished.finished_at is not None
    assert finished.error is None
    with pytest.raises(ConfigError, match="unknown study 'nope'"):
        store.set_study_status("nope", StudyStatus.RUNNING)


def test_an_id_with_a_nul_character_is_never_stored_and_never_found(
    store: CoordinatorStore,
) -> None:
    # PostgreSQL cannot hold NUL in text; it used to answer such ids with a driver error (500).
    ready(store)
    store.add_update("s1", 1, meta("site-00"), delta(0))
    nul = "s1\x00"
    with pytest.raises(ConfigError, match="study id 's1\\\\x00' contains a NUL character"):
        store.add_study(study(nul))
    assert store.study(nul) is None
    assert (store.current_round(nul), store.rounds(nul), store.updates(nul, 1)) == (None, [], [])
    assert (store.rejections(nul), store.events(nul), store.nonce_seen("\x00")) == ([], [], False)
    with pytest.raises(ConfigError, match="unknown study"):
        store.latest_model(nul)
    with pytest.raises(ConfigError, match="unknown study"):
        store.set_study_status(nul, StudyStatus.RUNNING)
    with pytest.raises(ConfigError, match="unknown study"):
        store.save_initial_model(nul, weights(), {})
    with pytest.raises(ConfigError, match="has no model version 0"):
        store.model(nul, 0)
    with pytest.raises(ConfigError, match="unknown study"):
        store.open_round(nul, 1, model_version=0, participants=SITES, deadline=None)
    with pytest.raises(FederationError, match="not open"):
        store.set_deadline(nul, 1, None)
    with pytest.raises(ProtocolError, match="never opened"):
        store.add_update(nul, 1, meta("site-01"), delta(1))
    with pytest.raises(FederationError, match="no update"):
        store.load_delta("s1", 1, "site-00\x00")
    with pytest.raises(FederationError, match="not open"):
        close(store, 1, nul)
    assert [u.site for u in store.updates("s1", 1)] == ["site-00"]


def test_a_cancelled_study_has_ended(store: CoordinatorStore) -> None:
    store.add_study(study("s1"))
    store.set_study_status("s1", StudyStatus.RUNNING)
    store.set_study_status("s1", StudyStatus.CANCELLED, error="cancelled by operator")
    cancelled = store.study("s1")
    assert cancelled is not None
    assert cancelled.status is StudyStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert cancelled.error == "cancelled by operator"
    assert [r.status for r in store.studies()] == [StudyStatus.CANCELLED]


# ---------------------------------------------------------------------------------------------
# model versions


def test_initial_model_is_saved_once(store: CoordinatorStore) -> None:
    store.add_study(study("s1"))
    with pytest.raises(ConfigError, match="no model yet"):
        store.latest_model("s1")
    store.save_initial_model("s1", weights(1.0), {"m": np.ones(2, np.float64)})
    store.save_initial_model("s1", weights(9.0), {"m": np.zeros(2, np.float64)})  # a restart
    version, w, state = store.latest_model("s1")
    assert version == 0
    assert_same_arrays(w, weights(1.0))
    assert_same_arrays(state, {"m": np.ones(2, np.float64)})
    with pytest.raises(ConfigError, match="unknown study 'ghost'"):
        store.save_initial_model("ghost", weights(), {})


def test_latest_model_follows_closed_rounds(store: CoordinatorStore) -> None:
    ready(store)
    close(store, 1)
    store.open_round("s1", 2, model_version=1, participants=SITES, deadline=None)
    close(store, 2)
    version, w, state = store.latest_model("s1")
    assert version == 2
    assert_same_arrays(w, weights(2.0))
    assert_same_arrays(state, {"momentum": np.full(3, 2, np.float32)})
    assert_same_arrays(store.model("s1", 1), weights(1.0))
    assert_same_arrays(store.model("s1", 0), weights(0.0))
    with pytest.raises(ConfigError, match="no model version 7"):
        store.model("s1", 7)


# ---------------------------------------------------------------------------------------------
# rounds


def test_round_numbers_and_one_open_round(store: CoordinatorStore) -> None:
    store.add_study(study("s1"))
    store.save_initial_model("s1", weights(), {})
    assert store.current_round("s1") is None
    for bad in (0, 2):
        with pytest.raises(FederationError, match="next one is 1"):
            store.open_round("s1", bad, model_version=0, participants=SITES, deadline=None)
    with pytest.raises(FederationError, match="model version 5"):
        store.open_round("s1", 1, model_version=5, participants=SITES, deadline=None)
    store.open_round("s1", 1, model_version=0, participants=("b", "a"), deadline=1234.5)
    with pytest.raises(FederationError, match="round 1 is still open"):
        store.open_round("s1", 2, model_version=0, participants=SITES, deadline=None)
    close(store, 1)
    with pytest.raises(FederationError, match="round 1 already exists"):
        store.open_round("s1", 1, model_version=1, participants=SITES, deadline=None)
    store.open_round("s1", 2, model_version=1, participants=SITES, deadline=None)
    with pytest.raises(ConfigError, match="unknown study"):
        store.open_round("ghost", 1, model_version=0, participants=SITES, deadline=None)
    first, second = store.rounds("s1")
    assert (first.round, first.model_version, first.participants) == (1, 0, ("b", "a"))
    assert (first.deadline, first.status) == (1234.5, RoundStatus.CLOSED)
    assert first.summary == {"round": 1, "contributors": ["site-00"]}
    assert (second.round, second.status, second.summary) == (2, RoundStatus.OPEN, {})
    assert store.current_round("s1") == second
    assert store.rounds("ghost") == []


def test_deadline_moves_only_on_the_open_round(store: CoordinatorStore) -> None:
    ready(store)
    store.set_deadline("s1", 1, 99.5)
    current = store.current_round("s1")
    assert current is not None
    assert current.deadline == 99.5
    store.set_deadline("s1", 1, None)
    current = store.current_round("s1")
    assert current is not None
    assert current.deadline is None
    close(store, 1)
    with pytest.raises(FederationError, match="not open"):
        store.set_deadline("s1", 1, 5.0)


# ---------------------------------------------------------------------------------------------
# updates


def test_add_update_happy_path(store: CoordinatorStore) -> None:
    ready(store)
    m = meta("site-03", nonce="n" * 32)
    assert not store.nonce_seen(m.nonce)
    store.add_update("s1", 1, m, delta(3))
    assert store.updates("s1", 1) == [m]
    assert store.nonce_seen(m.nonce)
    assert_same_arrays(store.load_delta("s1", 1, "site-03"), delta(3))
    assert store.updates("s1", 2) == []


def test_duplicate_with_same_digest_counts_once(store: CoordinatorStore) -> None:
    ready(store)
    m = meta("site-01")
    store.add_update("s1", 1, m, delta(1))
    with pytest.raises(DuplicateUpdate, match="already received"):
        store.add_update("s1", 1, m, delta(1))
    resent = UpdateMeta("site-01", uuid.uuid4().hex, m.digest, 99, {"loss": 9.0})
    with pytest.raises(DuplicateUpdate):
        store.add_update("s1", 1, resent, delta(2))
    assert store.updates("s1", 1) == [m]
    assert not store.nonce_seen(resent.nonce)
    assert_same_arrays(store.load_delta("s1", 1, "site-01"), delta(1))


def test_second_different_update_from_a_site_is_refused(store: CoordinatorStore) -> None:
    ready(store)
    m = meta("site-01", digest="first")
    store.add_update("s1", 1, m, delta(1))
    other = meta("site-01", digest="second")
    with pytest.raises(ProtocolError, match="different update"):
        store.add_update("s1", 1, other, delta(2))
    assert store.updates("s1", 1) == [m]
    assert not store.nonce_seen(other.nonce)
    assert_same_arrays(store.load_delta("s1", 1, "site-01"), delta(1))


def test_a_nonce_is_accepted_once_ever(store: CoordinatorStore) -> None:
    ready(store)
    store.add_update("s1", 1, meta("site-00", nonce="a" * 32), delta(0))
    with pytest.raises(ProtocolError, match=r"nonce a{32} was already used"):
        store.add_update("s1", 1, meta("site-01", nonce="a" * 32), delta(1))
    close(store, 1)
    store.open_round("s1", 2, model_version=1, participants=SITES, deadline=None)
    with pytest.raises(ProtocolError, match="already used"):
        store.add_update("s1", 2, meta("site-00", nonce="a" * 32, digest="new"), delta(2))
    assert [u.site for u in store.updates("s1", 1)] == ["site-00"]
    assert store.updates("s1", 2) == []


def test_updates_need_an_open_round(store: CoordinatorStore) -> None:
    ready(store)
    with pytest.raises(ProtocolError, match="never opened"):
        store.add_update("s1", 2, meta("site-00"), delta(0))
    with pytest.raises(ProtocolError, match="never opened"):
        store.add_update("ghost", 1, meta("site-00"), delta(0))
    accepted = meta("site-00")
    store.add_update("s1", 1, accepted, delta(0))
    close(store, 1)
    late = meta("site-01")
    with pytest.raises(ProtocolError, match="is closed"):
        store.add_update("s1", 1, late, delta(1))
    # A site retrying an update that was counted is told "already received", not refused.
    with pytest.raises(DuplicateUpdate):
        store.add_update("s1", 1, accepted, delta(0))
    assert store.updates("s1", 1) == [accepted]
    assert not store.nonce_seen(late.nonce)


def test_the_model_version_an_update_was_trained_on_is_kept(store: CoordinatorStore) -> None:
    ready(store)
    close(store, 1)
    store.open_round("s1", 2, model_version=1, participants=SITES, deadline=None)
    fresh, late = replace(meta("site-00"), base_version=1), replace(meta("site-05"), base_version=0)
    unknown = meta("site-09")
    for i, m in enumerate((fresh, late, unknown)):
        store.add_update("s1", 2, m, delta(i))
    assert store.updates("s1", 2) == [fresh, late, unknown]
    assert [u.base_version for u in store.updates("s1", 2)] == [1, 0, None]


def test_updates_are_listed_in_site_order(store: CoordinatorStore) -> None:
    ready(store)
    for i, site in enumerate(["site-07", "site-00", "site-11", "site-03"]):
        store.add_update("s1", 1, meta(site), delta(i))
    assert [u.site for u in store.updates("s1", 1)] == ["site-00", "site-03", "site-07", "site-11"]


def test_unstorable_updates_store_nothing(store: CoordinatorStore) -> None:
    ready(store)
    with pytest.raises(ProtocolError, match="dtype"):
        store.add_update("s1", 1, meta("site-00"), {"w": np.array(["text"], dtype=object)})
    bad_metrics = UpdateMeta("site-01", uuid.uuid4().hex, "d", 1, {"loss": float("nan")})
    with pytest.raises(ProtocolError, match="metrics"):
        store.add_update("s1", 1, bad_metrics, delta(1))
    assert store.updates("s1", 1) == []
    assert not store.nonce_seen(bad_metrics.nonce)


def test_load_delta_is_bit_exact(store: CoordinatorStore) -> None:
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1.5], dtype=np.float32)
    special.view(np.uint32)[4] = 0x7FC0_1234  # a NaN with a payload
    arrays: Arrays = {
        "special": special,
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        "ids": np.arange(5, dtype=np.int64),
        "ünïcode name": np.ones((2, 1, 2), dtype=np.float64),
    }
    ready(store)
    store.add_update("s1", 1, meta("site-00"), arrays)
    got = store.load_delta("s1", 1, "site-00")
    assert_same_arrays(got, arrays)
    assert all(a.flags.writeable for a in got.values())


_DTYPES = st.sampled_from(["<f4", "<f4", "<f8", "<f2", "<i4", "<i8", "|u1", "|b1"])
_NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=10)


@st.composite
def named_arrays(draw: st.DrawFn) -> Arrays:
    names = draw(st.lists(_NAMES, max_size=4, unique=True))
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
    return {name: draw(hnp.arrays(np.dtype(draw(_DTYPES)), shapes)) for name in names}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one store for all examples
)
@given(arrays=named_arrays())
def test_any_arrays_round_trip(store: CoordinatorStore, arrays: Arrays) -> None:
    if store.study("s1") is None:
        ready(store)
    site = f"site-{uuid.uuid4().hex}"
    store.add_update("s1", 1, meta(site), arrays)
    assert_same_arrays(store.load_delta("s1", 1, site), arrays)


def test_returned_and_given_arrays_are_copies(store: CoordinatorStore) -> None:
    ready(store)
    given_delta = delta(5)
    store.add_update("s1", 1, meta("site-00"), given_delta)
    given_delta["emb"][:] = 42.0  # the caller reuses its buffer
    loaded = store.load_delta("s1", 1, "site-00")
    loaded["emb"][:] = -1.0
    loaded["extra"] = np.zeros(1)
    assert_same_arrays(store.load_delta("s1", 1, "site-00"), delta(5))
    _, w, state = store.latest_model("s1")
    w["emb"][0, 0] = 123.0
    state["momentum"][:] = 7.0
    _, w2, state2 = store.latest_model("s1")
    assert_same_arrays(w2, weights(0.0))
    assert_same_arrays(state2, {"momentum": np.zeros(3, np.float32)})
    m = store.model("s1", 0)
    m["bias"][:] = 1.0
    assert_same_arrays(store.model("s1", 0), weights(0.0))
    summary: dict[str, Any] = {"sites": ["site-00"]}
    store.close_round(
        "s1", 1, new_version=1, weights=weights(1.0), strategy_state={}, summary=summary
    )
    summary["sites"].append("forged")
    rounds = store.rounds("s1")
    rounds[0].summary["sites"].append("also forged")  # type: ignore[index]
    assert store.rounds("s1")[0].summary == {"sites": ["site-00"]}


# ---------------------------------------------------------------------------------------------
# closing a round


def test_close_round_is_one_step(store: CoordinatorStore) -> None:
    ready(store)
    metas = [meta(site) for site in SITES[:3]]
    for i, m in enumerate(metas):
        store.add_update("s1", 1, m, delta(i))
    store.close_round(
        "s1",
        1,
        new_version=1,
        weights=weights(0.5),
        strategy_state={"momentum": np.full(3, 0.5, np.float32)},
        summary={"contributors": ("site-00", "site-01"), "examples": 51, "loss": 0.125},
    )
    version, w, _ = store.latest_model("s1")
    assert version == 1
    assert_same_arrays(w, weights(0.5))
    current = store.current_round("s1")
    assert current is not None
    assert current.status is RoundStatus.CLOSED
    # JSON normalises tuples to lists, on every backend alike.
    assert current.summary == {
        "contributors": ["site-00", "site-01"],
        "examples": 51,
        "loss": 0.125,
    }
    for m in metas:
        with pytest.raises(FederationError, match="released"):
            store.load_delta("s1", 1, m.site)
        assert store.nonce_seen(m.nonce)
    assert store.updates("s1", 1) == metas
    with pytest.raises(FederationError, match="no update from site 'site-09'"):
        store.load_delta("s1", 1, "site-09")
    with pytest.raises(FederationError, match="not open"):
        close(store, 1)


def test_a_refused_close_changes_nothing(store: CoordinatorStore) -> None:
    ready(store)
    store.add_update("s1", 1, meta("site-00"), delta(0))
    with pytest.raises(FederationError, match="not newer"):
        store.close_round("s1", 1, new_version=0, weights=weights(), strategy_state={}, summary={})
    with pytest.raises(ProtocolError, match="summary"):
        store.close_round(
            "s1", 1, new_version=1, weights=weights(), strategy_state={}, summary={"x": np.inf}
        )
    current = store.current_round("s1")
    assert current is not None
    assert current.status is RoundStatus.OPEN
    assert store.latest_model("s1")[0] == 0
    assert_same_arrays(store.load_delta("s1", 1, "site-00"), delta(0))


# ---------------------------------------------------------------------------------------------
# log


def test_rejections_in_order(store: CoordinatorStore) -> None:
    refused = [
        StoredRejection("s1", 1, "site-02", "bad signature", 10.0),
        StoredRejection("other", 1, "site-02", "unknown study", 11.0),
        StoredRejection("s1", 2, "site-01", "stale round 1", 9.0),
    ]
    for r in refused:
        store.add_rejection(r)
    assert store.rejections("s1") == [refused[0], refused[2]]
    assert store.rejections("other") == [refused[1]]
    assert store.rejections("none") == []


def test_events_in_order_and_after(store: CoordinatorStore) -> None:
    lines = [
        StoredEvent("s1" if i % 3 else "s2", 100.0 + i, "round", f"line {i}") for i in range(9)
    ]
    for line in lines:
        store.add_event(line)
    got = store.events("s1")
    assert [e for _, e in got] == [e for e in lines if e.study_id == "s1"]
    seqs = [n for n, _ in got]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert seqs[0] >= 1
    assert [e for _, e in store.events("s1", after=seqs[2])] == [e for _, e in got[3:]]
    assert store.events("s1", after=seqs[-1]) == []
    assert [e.message for _, e in store.events("s2")] == ["line 0", "line 3", "line 6"]


# ---------------------------------------------------------------------------------------------
# concurrency


def test_concurrent_updates_from_every_site_all_land(store: CoordinatorStore) -> None:
    ready(store)
    metas = [meta(site) for site in SITES]
    results = run_threads(len(SITES), lambda i: store.add_update("s1", 1, metas[i], delta(i)))
    assert results == [None] * len(SITES)
    assert store.updates("s1", 1) == metas
    for i, site in enumerate(SITES):
        assert_same_arrays(store.load_delta("s1", 1, site), delta(i))


def test_concurrent_copies_of_one_update_count_once(store: CoordinatorStore) -> None:
    ready(store)
    m = meta("site-04")
    results = run_threads(16, lambda _: store.add_update("s1", 1, m, delta(4)))
    assert results.count(None) == 1
    assert all(isinstance(r, DuplicateUpdate) for r in results if r is not None), results
    assert store.updates("s1", 1) == [m]


def test_updates_racing_the_close_land_before_it_or_not_at_all(store: CoordinatorStore) -> None:
    ready(store)
    metas = [meta(site) for site in SITES]

    def work(i: int) -> object:
        if i == len(SITES):  # close once a few updates landed, while the others are in flight
            give_up = time.monotonic() + 10
            while len(store.updates("s1", 1)) < 3 and time.monotonic() < give_up:
                time.sleep(0.0005)
            close(store, 1)
            return "closed"
        time.sleep(0.006 * i)  # spread the submissions over the close
        return store.add_update("s1", 1, metas[i], delta(i))

    results = run_threads(len(SITES) + 1, work)
    assert results[-1] == "closed"
    landed = {u.site for u in store.updates("s1", 1)}
    for m, result in zip(metas, results, strict=False):
        if result is None:
            assert m.site in landed
        else:
            assert isinstance(result, ProtocolError), result
            assert m.site not in landed
        with pytest.raises(FederationError):  # no payload survives the close
            store.load_delta("s1", 1, m.site)


# ---------------------------------------------------------------------------------------------
# durability (SQL backends)


def test_a_reopened_store_sees_everything(durable: Backend) -> None:
    first = durable.open()
    ready(first)
    kept = meta("site-00")
    first.add_update("s1", 1, kept, delta(0))
    close(first, 1)
    first.open_round("s1", 2, model_version=1, participants=SITES, deadline=77.0)
    pending = meta("site-05")
    first.add_update("s1", 2, pending, delta(5))
    first.set_study_status("s1", StudyStatus.RUNNING)
    first.add_rejection(StoredRejection("s1", 2, "site-09", "late", 5.0))
    first.add_event(StoredEvent("s1", 6.0, "round", "round 2 opened"))
    before = (first.studies(), first.rounds("s1"), first.events("s1"), first.rejections("s1"))
    first.close()  # the coordinator stops (or dies) ...

    again = durable.open()  # ... and restarts on the same database
    assert (again.studies(), again.rounds("s1"), again.events("s1"), again.rejections("s1")) == (
        before
    )
    assert again.latest_model("s1")[0] == 1
    assert again.updates("s1", 1) == [kept]
    assert again.updates("s1", 2) == [pending]
    assert_same_arrays(again.load_delta("s1", 2, "site-05"), delta(5))
    assert again.nonce_seen(kept.nonce)
    with pytest.raises(DuplicateUpdate):
        again.add_update("s1", 2, pending, delta(5))


def test_closing_a_round_nulls_its_payloads_in_the_table(durable: Backend) -> None:
    store = durable.open()
    ready(store)
    for i, site in enumerate(SITES[:3]):
        store.add_update("s1", 1, meta(site), delta(i))
    close(store, 1)
    assert durable.url is not None
    engine = create_engine(durable.url)
    try:
        with engine.connect() as conn:
            payloads = conn.execute(select(updates_table.c.payload)).scalars().all()
    finally:
        engine.dispose()
    assert payloads == [None, None, None]


def test_sqlite_runs_in_wal_mode_with_the_current_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    SqlStore(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT version FROM alliance_schema_version").fetchall() == [
            (SCHEMA_VERSION,)
        ]
    conn.close()
    assert SCHEMA_VERSION == 3


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with SqlStore(f"sqlite:///{path}") as first:
        first.add_study(study("s1"))
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(f"UPDATE alliance_schema_version SET version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        SqlStore(f"sqlite:///{path}")


def test_a_schema_version_1_database_is_upgraded_and_keeps_its_updates(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with SqlStore(f"sqlite:///{path}") as first:
        ready(first)
        first.add_update("s1", 1, meta("site-00", digest="old"), delta(1))
    conn = sqlite3.connect(path)
    with conn:  # the layout of version 1: no base_version column, no digests
        conn.execute("ALTER TABLE alliance_updates DROP COLUMN base_version")
        conn.execute("ALTER TABLE alliance_updates DROP COLUMN payload_sha256")
        conn.execute("ALTER TABLE alliance_models DROP COLUMN weights_sha256")
        conn.execute("ALTER TABLE alliance_models DROP COLUMN state_sha256")
        conn.execute("UPDATE alliance_schema_version SET version = 1")
    conn.close()
    with SqlStore(f"sqlite:///{path}") as upgraded:
        (old,) = upgraded.updates("s1", 1)
        assert (old.site, old.digest, old.base_version) == ("site-00", "old", None)
        assert_same_arrays(upgraded.load_delta("s1", 1, "site-00"), delta(1))
        upgraded.add_update("s1", 1, replace(meta("site-01"), base_version=0), delta(2))
        assert [u.base_version for u in upgraded.updates("s1", 1)] == [None, 0]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM alliance_schema_version").fetchall() == [(3,)]
    conn.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("definitely not a url", "not a database URL"),
        ("mysql://root:pw@localhost/x", "not supported"),
        ("sqlite://", "in-memory"),
        ("sqlite:////nonexistent-dir/sub/c.db", "unable to open database file"),
    ],
)
def test_bad_urls_are_config_errors(url: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        SqlStore(url)


def test_an_unreachable_server_is_a_config_error_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as info:
        SqlStore("postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:1/coordinator")
    message = str(info.value)
    assert "alice:***@127.0.0.1:1/coordinator" in message
    assert "check that" in message
    assert "s3cr3t-pw" not in message
    assert "s3cr3t-pw" not in caplog.text


def test_the_password_is_never_logged(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # Whatever level an entry point left on the package's logger, this test reads its lines.
    caplog.set_level(logging.DEBUG, logger="alliance")
    url = make_url(pg_url).set(password="hunter2-secret").render_as_string(hide_password=False)
    with SqlStore(url, echo=True) as store:  # trust auth: the password is not checked
        ready(store)
        store.add_update("s1", 1, meta("site-00"), delta(0))
        assert "hunter2-secret" not in repr(store)
    assert "***" in caplog.text
    assert "hunter2-secret" not in caplog.text


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from alliance.store.sql import SqlStore
    from alliance.store.state import StudyRecord, StudyStatus, UpdateMeta

    store = SqlStore(sys.argv[1])
    store.add_study(StudyRecord("s", "spec", "h", "t", StudyStatus.RUNNING, 0.0))
    store.save_initial_model("s", {"w": np.zeros(20_000, np.float32)}, {})
    r = 0
    while True:
        r += 1
        store.open_round("s", r, model_version=r - 1, participants=["a", "b", "c"], deadline=None)
        for site in "abc":
            value = np.full(20_000, r, np.float32)
            store.add_update("s", r, UpdateMeta(site, f"{r}{site}", site, 1, {}), {"w": value})
        full = {"w": np.full(20_000, r, np.float32)}
        store.close_round("s", r, new_version=r, weights=full, strategy_state={}, summary={"r": r})
        print(r, flush=True)
    """
)


def test_sqlite_survives_sigkill_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, f"sqlite:///{path}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        committed = 0
        while committed < 5:
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            committed = int(line)
        time.sleep(0.013)  # somewhere inside a later round's transactions
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with SqlStore(f"sqlite:///{path}") as store:
        rounds = store.rounds("s")
        assert [r.round for r in rounds] == list(range(1, len(rounds) + 1))
        closed = [r for r in rounds if r.status is RoundStatus.CLOSED]
        assert len(closed) >= committed
        assert len(rounds) - len(closed) <= 1
        version, w, _ = store.latest_model("s")
        assert version == len(closed)
        assert np.all(w["w"] == version)
        for r in closed:
            assert r.summary == {"r": r.round}
            assert [u.site for u in store.updates("s", r.round)] == ["a", "b", "c"]
            with pytest.raises(FederationError):
                store.load_delta("s", r.round, "a")
        if len(rounds) > len(closed):  # killed inside a round: what landed is whole
            for u in store.updates("s", rounds[-1].round):
                assert np.all(store.load_delta("s", rounds[-1].round, u.site)["w"] == len(rounds))
