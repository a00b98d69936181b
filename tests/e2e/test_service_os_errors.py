"""Long-running commands that meet an operating-system refusal end in one clear line.

``alliance coordinator serve`` on a port another program holds, and ``alliance site run`` with a
file where its state folder should be, each run as a real process: the README promises exit
code 2 for bad input with a message naming what was wrong and what to do, never a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alliance.cli.consortium import app as consortium_app


def alliance(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400", "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [sys.executable, "-m", "alliance.cli.app", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("consortium")
    sites = root / "sites.toml"
    sites.write_text(
        '[coordinator]\nhost = "127.0.0.1"\nport = 8443\n\n[[site]]\nid = "h1"\nname = "H1"\n',
        encoding="utf-8",
    )
    done = CliRunner().invoke(
        consortium_app, ["init", "guardian", "--sites", str(sites), "--out", str(root / "c")]
    )
    assert done.exit_code == 0, done.output
    return root / "c"


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert not [line for line in done.stderr.splitlines() if " ERROR" in line], done.stderr
    return errors[0]


def test_coordinator_on_a_port_in_use_says_so_in_one_line(consortium: Path) -> None:
    folder = consortium / "coordinator"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = folder / "coordinator.toml"
        config.write_text(
            config.read_text(encoding="utf-8")
            .replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
            .replace("port = 8443", f"port = {port}"),
            encoding="utf-8",
        )

        done = alliance("coordinator", "serve", "--config", config, cwd=folder)

    line = one_line_error(done)
    assert f"127.0.0.1:{port}" in line
    assert "already in use" in line
    assert "[server] port" in line


def test_site_agent_with_a_file_for_its_state_folder_says_so_in_one_line(
    consortium: Path,
) -> None:
    folder = consortium / "sites" / "h1"
    (folder / "cases.train.jsonl").write_text(
        '{"id": "a", "observed": ["HP:0001250"], "disease_ids": ["OMIM:301013"]}\n',
        encoding="utf-8",
    )
    (folder / "state").write_text("not a folder\n", encoding="utf-8")

    done = alliance("site", "run", "--config", folder / "site.toml", cwd=folder)

    line = one_line_error(done)
    assert f"state folder {folder / 'state'}" in line
    assert "a file is in its place" in line
    assert "[state] dir" in line
