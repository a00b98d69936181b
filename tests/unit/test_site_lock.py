"""One site agent per state folder (alliance.site.lock): an OS lock, released however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from alliance.core.errors import FederationError
from alliance.site.lock import AgentLock, AgentRunning

HOLD = (
    "import sys, time; from pathlib import Path; from alliance.site.lock import AgentLock\n"
    "lock = AgentLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)\n"
)


def test_a_second_lock_on_a_folder_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = AgentLock(state)  # creates the folder
    with pytest.raises(AgentRunning) as refused:
        AgentLock(state)
    message = str(refused.value)
    assert (
        f"another site agent (pid {os.getpid()}) is running on the state folder {state}" in message
    )
    assert "give each agent its own [state] dir" in message
    assert isinstance(refused.value, FederationError)  # the CLI exits 1
    first.release()
    first.release()  # twice is harmless
    with AgentLock(state):
        pass


def test_a_lock_held_by_a_killed_process_is_free_again(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AgentRunning, match=rf"\(pid {holder.pid}\)"):
            AgentLock(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)
    with AgentLock(tmp_path) as lock:
        assert lock.path.read_text() == f"{os.getpid()}\n"
