"""A hospital's received-model store (alliance.site.model_store): where verified models live.

- a model is kept under ``<state>/models/<study>/v<version>/`` with its card and arrival time,
  found again by ``get``, ``models`` (oldest first) and ``newest``;
- a version already kept is never overwritten (a second ``add`` returns the first copy);
- ``replace_card`` swaps the card of a kept model atomically, and refuses a model not kept;
- a half-written model (a crash before the rename) is invisible, and a model whose arrival time
  is unreadable is reported with what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alliance.core.errors import ConfigError
from alliance.site.model_store import ModelStore


def test_a_kept_model_is_found_again(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.models() == []
    assert store.newest() is None
    kept = store.add("study-1", 3, b"model-bytes", b'{"card": 1}')
    assert kept.model_path == tmp_path / "models" / "study-1" / "v3" / "model.alliance"
    assert kept.model_path.read_bytes() == b"model-bytes"
    assert kept.card_path.read_bytes() == b'{"card": 1}'
    assert store.get("study-1", 3) == kept
    assert store.get("study-1", 4) is None
    assert oct(kept.folder.parent.stat().st_mode & 0o777) == "0o700"


def test_a_version_already_kept_is_not_overwritten(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = store.add("study-1", 3, b"first", b"card-1")
    again = store.add("study-1", 3, b"second", b"card-2")
    assert again == first
    assert first.model_path.read_bytes() == b"first"
    assert len(store.models()) == 1


def test_models_are_listed_oldest_first_and_newest_is_the_last(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    a = store.add("study-b", 1, b"a", b"c")
    b = store.add("study-a", 2, b"b", b"c")
    (a.folder / "received").write_text("2026-01-01T00:00:00+00:00")
    (b.folder / "received").write_text("2026-02-01T00:00:00+00:00")
    assert [(m.study, m.version) for m in store.models()] == [("study-b", 1), ("study-a", 2)]
    newest = store.newest()
    assert newest is not None
    assert (newest.study, newest.version) == ("study-a", 2)
    only = store.newest("study-b")
    assert only is not None
    assert only.version == 1


def test_replace_card_swaps_the_card_of_a_kept_model_only(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    kept = store.add("study-1", 3, b"model", b"card-r1")
    store.replace_card("study-1", 3, b"card-r2")
    assert kept.card_path.read_bytes() == b"card-r2"
    assert kept.model_path.read_bytes() == b"model"
    assert sorted(os.listdir(kept.folder)) == ["card.json", "model.alliance", "received"]
    with pytest.raises(ConfigError, match="no model of study 'study-1' version 4"):
        store.replace_card("study-1", 4, b"card")


def test_a_half_written_model_is_invisible_and_a_damaged_one_is_reported(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    incoming = tmp_path / "models" / "study-1" / ".incoming-x"
    incoming.mkdir(parents=True)
    (incoming / "model.alliance").write_bytes(b"partial")
    assert store.models() == []
    kept = store.add("study-1", 1, b"model", b"card")
    (kept.folder / "received").write_text("not a time")
    with pytest.raises(ConfigError, match="remove the folder and ask the coordinator"):
        store.models()
