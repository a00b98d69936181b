"""The models a hospital has received, kept in its own state folder.

At a study's end the coordinator sends each participating hospital the final model with its
signed model card (:mod:`alliance.protocol.model_card`). The hospital verifies both before it
keeps them; this module is only where verified models live and how they are found again::

    <state>/models/<study>/v<version>/model.alliance   the model file, as received
    <state>/models/<study>/v<version>/card.json        its signed card, as received
    <state>/models/<study>/v<version>/received         when it was kept (ISO 8601, UTC)

A model is written into a temporary folder beside its place, synced, then renamed into place, so
a reader (``alliance site models``, ``alliance diagnose --config``, the clinic) sees a whole model
or none; a model already kept is never overwritten. Nothing here verifies signatures: callers
store only what they verified, and readers that must trust a file verify its card again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alliance.core.errors import ConfigError

__all__ = ["ModelStore", "StoredModel"]

MODEL_FILE = "model.alliance"
CARD_FILE = "card.json"
RECEIVED_FILE = "received"
_VERSION = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class StoredModel:
    """One model a hospital kept: where its files are and when it arrived."""

    study: str
    version: int
    folder: Path
    received_at: dt.datetime

    @property
    def model_path(self) -> Path:
        """The model file (``model.alliance``)."""
        return self.folder / MODEL_FILE

    @property
    def card_path(self) -> Path:
        """The signed model card (``card.json``)."""
        return self.folder / CARD_FILE


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """The models kept under ``<state>/models``.

    Parameters
    ----------
    state_dir
        The hospital's state folder (``[state] dir`` of ``site.toml``).
    """

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "models"

    def add(self, study: str, version: int, model: bytes, card: bytes) -> StoredModel:
        """Keep ``model`` and ``card`` (already verified) as ``study``'s version ``version``.

        A version already kept is left as it is and returned (a coordinator that tells a
        hospital twice changes nothing).
        """
        found = self.get(study, version)
        if found is not None:
            return found
        folder = self.root / study
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = Path(tempfile.mkdtemp(dir=folder, prefix=".incoming-"))
        try:
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            for name, data in ((MODEL_FILE, model), (CARD_FILE, card), (RECEIVED_FILE, now)):
                raw = data.encode() if isinstance(data, str) else data
                with open(temp / name, "wb") as handle:
                    handle.write(raw)
                    handle.flush()
                    os.fsync(handle.fileno())
            _sync_dir(temp)
            os.rename(temp, folder / f"v{version}")
            _sync_dir(folder)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(temp)
            raise
        kept = self.get(study, version)
        assert kept is not None
        return kept

    def replace_card(self, study: str, version: int, card: bytes) -> StoredModel:
        """Replace a kept model's card (already verified, for the same model) atomically: a
        newer revision of the card, with the hospitals' evaluation on it.

        Raises
        ------
        ConfigError
            ``study``'s version ``version`` is not kept.
        """
        found = self.get(study, version)
        if found is None:
            raise ConfigError(
                f"no model of study {study!r} version {version} is kept in {self.root}"
            )
        temp = found.folder / f".{CARD_FILE}.incoming"
        with open(temp, "wb") as handle:
            handle.write(card)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, found.card_path)
        _sync_dir(found.folder)
        return found

    def get(self, study: str, version: int) -> StoredModel | None:
        """``study``'s version ``version``, if kept."""
        folder = self.root / study / f"v{version}"
        if not (folder / MODEL_FILE).is_file():
            return None
        return StoredModel(study, version, folder, self._received(folder))

    def models(self) -> list[StoredModel]:
        """Every kept model, oldest first (by arrival, then study and version)."""
        if not self.root.is_dir():
            return []
        found: list[StoredModel] = []
        for study_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if study_dir.name.startswith("."):
                continue
            for folder in study_dir.iterdir():
                match = _VERSION.match(folder.name)
                if match and (folder / MODEL_FILE).is_file():
                    found.append(
                        StoredModel(study_dir.name, int(match[1]), folder, self._received(folder))
                    )
        return sorted(found, key=lambda m: (m.received_at, m.study, m.version))

    def newest(self, study: str | None = None) -> StoredModel | None:
        """The model that arrived last (of ``study`` if given), or ``None``."""
        kept = [m for m in self.models() if study is None or m.study == study]
        return kept[-1] if kept else None

    @staticmethod
    def _received(folder: Path) -> dt.datetime:
        try:
            return dt.datetime.fromisoformat((folder / RECEIVED_FILE).read_text().strip())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the model kept in {folder} has no readable arrival time ({exc}); "
                "remove the folder and ask the coordinator to send the model again"
            ) from None
