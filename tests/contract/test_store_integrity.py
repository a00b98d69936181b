"""Damage to a durable coordinator store is found, named and never used: SQLite and PostgreSQL.

Each blob (model weights, strategy state, update payload) is stored with its SHA-256 and checked
when read. The tests damage a store from outside, as a failing disk or a careless hand would:
one bit flipped inside a stored blob through SQL (both backends), in the SQLite file itself
(where ``PRAGMA integrity_check`` still says "ok"), and whole b-tree pages overwritten.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select, text, update

from alliance.core.errors import StoreDamaged, TransportError
from alliance.store import SqlStore
from alliance.store.sqlschema import models, updates
from tests.contract.test_store import (  # noqa: F401 - pg_admin, pg_url: fixtures of _backend
    Backend,
    _backend,
    assert_same_arrays,
    close,
    meta,
    pg_admin,
    pg_url,
    ready,
    weights,
)
from tests.unit.test_audit_disk_full import fill, small_disk  # noqa: F401 - fixture

durable = pytest.fixture(params=["sqlite", "postgresql"])(_backend)


def flip_bit(blob: bytes, needle: bytes, *, bit: int = 1) -> bytes:
    """``blob`` with one bit flipped in the high byte of the first float of ``needle`` in it."""
    at = blob.index(needle) + 3  # float32, little-endian: byte 3 holds sign and exponent
    damaged = bytearray(blob)
    damaged[at] ^= 1 << bit
    return bytes(damaged)


def damage_column(url: str, table: str, column: str, needle: bytes) -> None:
    """Flip one bit of ``needle`` inside every blob of ``column`` that holds it (digests kept)."""
    target = {"models": models, "updates": updates}[table]
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            keys = list(target.primary_key.columns)
            for row in conn.execute(select(*keys, target.c[column])).all():
                blob = getattr(row, column)
                if blob is None or needle not in blob:
                    continue
                where = [key == getattr(row, key.name) for key in keys]
                values = {column: flip_bit(blob, needle)}
                conn.execute(update(target).where(*where).values(**values))
    finally:
        engine.dispose()


def two_versions(durable: Backend) -> None:
    """Study s1 with model versions 0 and 1, round 2 open holding site-00's update."""
    store = durable.open()
    ready(store)
    close(store, 1)
    store.open_round("s1", 2, model_version=1, participants=["site-00"], deadline=None)
    store.add_update("s1", 2, meta("site-00"), {"emb": np.full((4, 3), 0.5, np.float32)})
    store.close()


@pytest.mark.parametrize("column", ["weights", "strategy_state"])
def test_one_flipped_bit_in_a_model_version_is_refused_naming_it(
    durable: Backend, column: str
) -> None:
    two_versions(durable)
    assert durable.url is not None
    needle = np.full(3, 1.0, np.float32).tobytes()  # in version 1 only (weights and state)
    damage_column(durable.url, "models", column, needle)
    store = durable.open()
    what = "model version 1 of study 's1'"
    with pytest.raises(StoreDamaged, match=rf"{what} is damaged.*restore the store from a backup"):
        store.latest_model("s1")
    with pytest.raises(StoreDamaged, match=what):
        store.verify()  # type: ignore[attr-defined]
    if column == "weights":
        with pytest.raises(StoreDamaged, match=what):
            store.model("s1", 1)
    else:
        assert_same_arrays(store.model("s1", 1), weights(1.0))
    assert_same_arrays(store.model("s1", 0), weights(0.0))  # the undamaged version still reads


def test_one_flipped_bit_in_an_update_payload_is_refused_naming_it(durable: Backend) -> None:
    two_versions(durable)
    assert durable.url is not None
    damage_column(durable.url, "updates", "payload", np.full(3, 0.5, np.float32).tobytes())
    store = durable.open()
    where = "update from site 'site-00' for round 2 of study 's1' is damaged"
    with pytest.raises(StoreDamaged, match=where):
        store.load_delta("s1", 2, "site-00")
    assert [u.site for u in store.updates("s1", 2)] == ["site-00"]


def test_damaged_json_in_a_row_is_refused_naming_it(durable: Backend) -> None:
    two_versions(durable)
    assert durable.url is not None
    engine = create_engine(durable.url)
    with engine.begin() as conn:  # one byte of the metrics text changed: no longer JSON
        conn.execute(text("UPDATE alliance_updates SET metrics = replace(metrics, ',', ';')"))
    engine.dispose()
    store = durable.open()
    where = "metrics of the update from site 'site-00' for round 2 of study 's1'"
    with pytest.raises(StoreDamaged, match=rf"{where} cannot be read back.*restore it"):
        store.updates("s1", 2)


def test_a_version_2_store_is_upgraded_with_digests_that_then_catch_damage(
    durable: Backend,
) -> None:
    two_versions(durable)
    assert durable.url is not None
    engine = create_engine(durable.url)
    with engine.begin() as conn:  # the layout of version 2: no digests
        for table, column in (
            ("alliance_models", "weights_sha256"),
            ("alliance_models", "state_sha256"),
            ("alliance_updates", "payload_sha256"),
        ):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(text("UPDATE alliance_schema_version SET version = 2"))
    store = durable.open()  # upgraded: digests of the rows as they are now
    version, latest, _ = store.latest_model("s1")
    assert version == 1
    assert_same_arrays(latest, weights(1.0))
    assert_same_arrays(
        store.load_delta("s1", 2, "site-00"), {"emb": np.full((4, 3), 0.5, np.float32)}
    )
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM alliance_schema_version")).scalar() == 3
        missing = conn.execute(
            text("SELECT count(*) FROM alliance_models WHERE weights_sha256 IS NULL")
        ).scalar()
    engine.dispose()
    assert missing == 0
    store.close()
    damage_column(durable.url, "models", "weights", np.full(3, 1.0, np.float32).tobytes())
    with pytest.raises(StoreDamaged, match="model version 1 of study 's1' is damaged"):
        durable.open().latest_model("s1")


# ---------------------------------------------------------------------------------------------
# the SQLite file itself


def sqlite_store(tmp_path: Path) -> Path:
    path = tmp_path / "coordinator.db"
    with SqlStore(f"sqlite:///{path}") as store:
        ready(store)
        close(store, 1)
    return path


def test_a_bit_flipped_in_the_sqlite_file_passes_integrity_check_but_not_the_store(
    tmp_path: Path,
) -> None:
    path = sqlite_store(tmp_path)
    data = path.read_bytes()
    path.write_bytes(flip_bit(data, np.full((4, 3), 1.0, np.float32).tobytes(), bit=6))
    with sqlite3.connect(path) as conn:  # what the finding saw: SQLite's own check says ok
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with SqlStore(f"sqlite:///{path}") as store:
        with pytest.raises(StoreDamaged, match="model version 1 of study 's1' is damaged"):
            store.verify()
        with pytest.raises(StoreDamaged, match="model version 1 of study 's1' is damaged"):
            store.latest_model("s1")


@pytest.mark.parametrize("table", ["alliance_studies", "alliance_models", "alliance_rounds"])
def test_an_overwritten_page_of_the_sqlite_file_is_refused_naming_the_file(
    tmp_path: Path, table: str
) -> None:
    path = sqlite_store(tmp_path)
    with sqlite3.connect(path) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    start = (root - 1) * page_size  # the table's b-tree page, in the middle of the file
    data[start : start + page_size] = b"\xa5" * page_size
    path.write_bytes(bytes(data))
    damaged = rf"{path}: the database file is damaged.*backup"
    with pytest.raises(StoreDamaged, match=damaged), SqlStore(f"sqlite:///{path}") as store:
        store.verify()


def test_a_full_disk_stores_nothing_and_says_retry(small_disk: Path) -> None:  # noqa: F811
    with SqlStore(f"sqlite:///{small_disk / 'coordinator.db'}") as store:
        ready(store)
        update = {"emb": np.full(4000, 0.5, np.float32)}
        filler = fill(small_disk)
        with pytest.raises(TransportError, match=r"disk is full.*nothing was stored.*retried"):
            store.add_update("s1", 1, meta("site-00", nonce="a" * 32), update)
        assert store.updates("s1", 1) == []
        filler.unlink()
        store.add_update("s1", 1, meta("site-00", nonce="a" * 32), update)  # the retry lands
        assert [u.site for u in store.updates("s1", 1)] == ["site-00"]
        assert_same_arrays(store.load_delta("s1", 1, "site-00"), update)
