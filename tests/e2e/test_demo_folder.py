"""``alliance demo --out DIR`` over an earlier run: refused, or replaced with ``--force``.

An earlier, larger run leaves more patient files in a hospital's folder than a new one writes;
without clearing them the new run's sites read both runs' patients (issue 15: 302 training
cases where there should have been 52). The demo runs as a real process, small and short.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alliance.data.synth import scaled_hospitals

TINY = ("--diseases", "30", "--rounds", "1")
PUMCH = "pumch"  # keeps one phenopacket file per patient


def alliance(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400", "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [sys.executable, "-m", "alliance.cli.app", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def refused(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An earlier demo's folder, at a larger scale than the runs below."""
    out = tmp_path_factory.mktemp("earlier") / "demo"
    done = alliance("demo", "--out", out, "--scale", "0.1", *TINY)
    assert done.returncode == 0, done.stderr
    return out


def copy_of(earlier: Path, tmp_path: Path) -> Path:
    out = tmp_path / "demo"
    shutil.copytree(earlier, out)
    return out


def test_an_earlier_run_is_refused_without_force(earlier: Path, tmp_path: Path) -> None:
    out = copy_of(earlier, tmp_path)
    before = snapshot(out)

    line = refused(alliance("demo", "--out", out, "--scale", "0.05", *TINY))

    assert str(out) in line
    assert "--force" in line
    assert snapshot(out) == before


def test_force_refuses_a_folder_holding_other_files_and_names_them(
    earlier: Path, tmp_path: Path
) -> None:
    out = copy_of(earlier, tmp_path)
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    (out / "hospitals" / PUMCH / "train" / "scan.png").write_bytes(b"\x89PNG")
    before = snapshot(out)

    line = refused(alliance("demo", "--out", out, "--force", "--scale", "0.05", *TINY))

    assert str(out) in line
    assert "notes.txt" in line
    assert f"hospitals/{PUMCH}/train/scan.png" in line
    assert snapshot(out) == before


def test_force_replaces_an_earlier_run_without_mixing_its_patients(
    earlier: Path, tmp_path: Path
) -> None:
    out = copy_of(earlier, tmp_path)
    started = time.time_ns()

    done = alliance("demo", "--out", out, "--force", "--scale", "0.05", *TINY)

    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    expected = {h.id: h.n_cases for h in scaled_hospitals(0.05)}
    for site in metrics["sites"]:
        assert site["n_train"] + site["n_test"] == expected[site["id"]], site
    patients = list((out / "hospitals" / PUMCH / "train").iterdir())
    pumch = next(s for s in metrics["sites"] if s["id"] == PUMCH)
    assert len(patients) == pumch["n_train"]
    assert all(p.stat().st_mtime_ns >= started for p in out.rglob("*") if p.is_file())


def test_a_file_as_the_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")

    line = refused(alliance("demo", "--out", tmp_path / "file", "--scale", "0.05", *TINY))

    assert "is a file" in line
    assert (tmp_path / "file").read_text(encoding="utf-8") == "x"
