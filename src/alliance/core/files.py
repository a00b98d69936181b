"""Writing a file so that readers see the old file or the whole new one, never half of one.

Every file the package writes (case files, model files, reports, audit heads, mapping rows) goes
through :func:`atomic_output`: the bytes go to a temporary file in the destination's folder,
are flushed and synced, and the temporary file is renamed over the destination. A failure at
any point removes the temporary file and leaves the previous file as it was. New files are
private to their owner (``0o600``, what :func:`tempfile.mkstemp` creates) unless the caller asks
for other permissions, as a report meant to be shared does.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_output", "write_atomically"]


@contextlib.contextmanager
def atomic_output(path: str | Path, *, permissions: int | None = None) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; moved into place on success.

    Parameters
    ----------
    path
        The destination; its folder must exist.
    permissions
        Mode bits of the new file (default: owner read and write only).
    """
    target = Path(path)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if permissions is not None:
                os.fchmod(handle.fileno(), permissions)
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def write_atomically(path: str | Path, data: bytes, *, permissions: int | None = None) -> None:
    """Replace ``path`` with ``data`` (see :func:`atomic_output`)."""
    with atomic_output(path, permissions=permissions) as handle:
        handle.write(data)
