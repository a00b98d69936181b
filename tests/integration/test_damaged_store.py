"""A coordinator whose store is damaged refuses to start, saying which file and what is damaged.

Real parts throughout: the consortium's own provisioning (``alliance consortium init``), a
coordinator store written by :class:`SqlStore`, damage done to the SQLite file's bytes on disk,
and ``alliance coordinator serve`` run as its own process. Before the store was checked at start,
the flipped bit was signed and sent to every hospital, and the overwritten page answered every
request with 500.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alliance.cli.consortium import app as consortium_app
from alliance.store import SqlStore, StudyRecord, StudyStatus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Provisioned bundles of a two-hospital consortium (made once: key generation is slow)."""
    root = tmp_path_factory.mktemp("consortium")
    sites = ["[coordinator]", 'host = "127.0.0.1"', f"port = {free_port()}", ""]
    for site in ("h1", "h2"):
        sites += ["[[site]]", f'id = "{site}"', ""]
    (root / "sites.toml").write_text("\n".join(sites), encoding="utf-8")
    out = root / "out"
    result = CliRunner().invoke(
        consortium_app, ["init", "guardian", "--sites", str(root / "sites.toml"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    toml = out / "coordinator" / "coordinator.toml"
    toml.write_text(toml.read_text().replace('host = "0.0.0.0"', 'host = "127.0.0.1"'))
    return out / "coordinator"


def store_with_a_running_study(folder: Path) -> Path:
    """The coordinator's default store, beside its config: study s1 running at version 1."""
    path = folder / "coordinator.db"
    path.unlink(missing_ok=True)
    with SqlStore(f"sqlite:///{path}") as store:
        store.add_study(StudyRecord("s1", "x", "ab" * 32, "op", StudyStatus.RUNNING, 1.0))
        store.save_initial_model("s1", {"w": np.zeros((8, 8), np.float32)}, {})
        store.open_round("s1", 1, model_version=0, participants=["h1", "h2"], deadline=None)
        store.close_round(
            "s1",
            1,
            new_version=1,
            weights={"w": np.full((8, 8), 0.25, np.float32)},
            strategy_state={},
            summary={},
        )
    return path


def serve(folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400", "PYTHONWARNINGS": "error"}
    command = ["coordinator", "serve", "-c", str(folder / "coordinator.toml")]
    return subprocess.run(
        [sys.executable, "-m", "alliance.cli.app", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def flip_one_bit_of_the_model(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(np.full(8, 0.25, np.float32).tobytes()) + 3
    data[at] ^= 0x40  # 0.25 becomes 8.5e37: still a float, still decodes
    path.write_bytes(bytes(data))


def overwrite_a_page(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = 4096
    start = 2 * page  # page 3: the b-tree of alliance_studies, in the middle of the file
    data[start : start + page] = b"\xa5" * page
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (flip_one_bit_of_the_model, "model version 1 of study 's1' is damaged"),
        (overwrite_a_page, "the database file is damaged"),
    ],
)
def test_a_coordinator_with_a_damaged_store_refuses_to_start(
    consortium: Path, damage: Callable[[Path], None], what: str
) -> None:
    path = store_with_a_running_study(consortium)
    damage(path)
    done = serve(consortium)
    assert done.returncode == 1, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr, done.stderr
    assert f"error: coordinator store sqlite:///{path}: {what}" in message, message
    assert "restore the store from a backup" in message
    assert "listening" not in done.stdout


def test_the_same_store_undamaged_is_served(consortium: Path) -> None:
    """The control: the check passes an intact store (a queued study has no model yet)."""
    path = store_with_a_running_study(consortium)
    with SqlStore(f"sqlite:///{path}") as store:
        store.add_study(StudyRecord("s2", "x", "cd" * 32, "op", StudyStatus.QUEUED, 2.0))
    env = {**os.environ, "COLUMNS": "400", "PYTHONWARNINGS": "error"}
    command = ["coordinator", "serve", "-c", str(consortium / "coordinator.toml")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "alliance.cli.app", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # ends when the process exits
            lines.append(line)
            if "listening on" in line:
                break
        assert "listening on" in lines[-1], "".join(lines)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # closes the pipe
