"""The demo's output folder: what an earlier run left there, and clearing only that.

``alliance demo --out DIR`` writes ``metrics.json``, ``report.html``, ``dashboard.html``,
``model.alliance`` and,
with its hospitals' own files, ``hospitals/<hospital id>/`` (``data.toml``,
``local_codes.csv`` and the ``train`` and ``test`` files or folders of
:func:`~alliance.data.site_files.write_site_files`). Writing a new run over an earlier one
would leave the earlier run's files where the new one writes fewer (a hospital's one file per
patient), and its sites would read both runs' patients back. So :func:`prepare_output` takes
an empty or new folder as it is, refuses any other unless asked to clear it, and then clears
exactly the entries above, and refuses still, naming them, when the folder holds anything
else: nothing the demo did not write is ever deleted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from alliance.core.errors import ConfigError
from alliance.data.synth import DEMO_HOSPITALS

__all__ = ["DEMO_OUTPUTS", "foreign_entries", "prepare_output"]

DEMO_OUTPUTS = ("metrics.json", "report.html", "dashboard.html", "model.alliance")
"""The files a demo run writes at the top of its folder (``hospitals/`` besides)."""

_HOSPITAL_FILES = ("data.toml", "local_codes.csv")
_ROLES = ("train", "test")
# What the formats that keep a role in a folder put there: phenopackets, OMOP CSV tables.
_FOLDER_SUFFIXES = (".json", ".csv")
_NAMED = 5


def foreign_entries(folder: Path) -> list[Path]:
    """Everything in ``folder`` that a demo run did not write, in name order."""
    foreign: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name == "hospitals" and entry.is_dir() and not entry.is_symlink():
            foreign += _foreign_in_hospitals(entry)
        elif entry.name not in DEMO_OUTPUTS or not _plain_file(entry):
            foreign.append(entry)
    return foreign


def _foreign_in_hospitals(folder: Path) -> list[Path]:
    ids = {h.id for h in DEMO_HOSPITALS}
    foreign: list[Path] = []
    for hospital in sorted(folder.iterdir()):
        if hospital.name not in ids or not hospital.is_dir() or hospital.is_symlink():
            foreign.append(hospital)
            continue
        for entry in sorted(hospital.iterdir()):
            if entry.name in _HOSPITAL_FILES and _plain_file(entry):
                continue
            if entry.name.partition(".")[0] in _ROLES and _plain_file(entry):
                continue
            if entry.name in _ROLES and entry.is_dir() and not entry.is_symlink():
                foreign += [
                    inner
                    for inner in sorted(entry.iterdir())
                    if not (_plain_file(inner) and inner.suffix in _FOLDER_SUFFIXES)
                ]
                continue
            foreign.append(entry)
    return foreign


def _plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def prepare_output(folder: Path, *, force: bool) -> None:
    """Make ``folder`` ready for a demo run: new or empty, or cleared of an earlier run's files.

    Parameters
    ----------
    folder
        The demo's ``--out``.
    force
        Clear what an earlier demo run wrote there (``--force``).

    Raises
    ------
    ConfigError
        If ``folder`` is a file; if it is not empty and ``force`` is false; or if it holds
        anything a demo did not write (named, and nothing is deleted).
    """
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file, not a folder; choose a folder")
    entries = sorted(folder.iterdir())
    if not entries:
        return
    foreign = foreign_entries(folder)
    if foreign:
        named = ", ".join(str(p.relative_to(folder)) for p in foreign[:_NAMED])
        more = f" and {len(foreign) - _NAMED} more" if len(foreign) > _NAMED else ""
        raise ConfigError(
            f"--out {folder} holds files a demo did not write ({named}{more}); choose an empty "
            "or new folder" + (" (--force clears only what a demo wrote)" if force else "")
        )
    if not force:
        raise ConfigError(
            f"--out {folder} holds an earlier demo's results; pass --force to replace them, or "
            "choose an empty or new folder"
        )
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
