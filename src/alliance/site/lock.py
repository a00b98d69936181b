"""One site agent per state folder: an operating-system lock on ``<state dir>/agent.lock``.

Two agents on one folder would both train, charge and answer the same tasks. The agent holds an
exclusive ``fcntl.flock`` for its whole life; the operating system releases it when the process
ends, however it ends (``kill -9`` included), so a lock is never stale. The file names the pid
that holds it, for the message the second agent prints. Read-only commands (``alliance site
budget``, ``alliance audit verify``) never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from alliance.core.errors import ConfigError, FederationError

__all__ = ["AgentLock", "AgentRunning"]


class AgentRunning(FederationError):  # noqa: N818 - the state of a folder, like SecAggAbort
    """Another site agent holds the state folder's lock."""


class AgentLock:
    """The exclusive lock of a state folder, taken when made and held until :meth:`release`.

    Parameters
    ----------
    state_dir
        The site's ``[state] dir`` (created if missing).

    Raises
    ------
    AgentRunning
        Another agent (in this process or another) holds the lock.
    ConfigError
        The folder cannot be created or written (a file in its place, no permission).
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "agent.lock"
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            why = (
                "a file is in its place"
                if isinstance(exc, FileExistsError | NotADirectoryError)
                else exc.strerror or str(exc)
            )
            raise ConfigError(
                f"cannot use the state folder {state_dir} ({why}): set [state] dir to a folder "
                "this user can create and write"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise AgentRunning(
                f"another site agent{holder} is running on the state folder {state_dir} (it "
                f"holds {self.path}); stop it before starting this one, or give each agent its "
                "own [state] dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another agent take the folder (safe to call twice)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> AgentLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> str:
    """`` (pid N)`` as the lock's holder wrote it, or nothing if it wrote none yet."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        if text:
            return f" (pid {int(text)})"
    return ""
