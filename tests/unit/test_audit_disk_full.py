"""An audit log whose disk refuses a write: the append fails cleanly, the log stays verifiable.

Two real mechanisms, no patched ``write``: a file-size limit (``RLIMIT_FSIZE`` in a child
process, ``SIGXFSZ`` ignored) makes the kernel cut the line part-way with ``EFBIG``; a small
tmpfs (mounted when the tests run as root) fills up, so that the line fits in the log's last
page but the head file can no longer be written (``ENOSPC``). Before, the first left a torn
line that ``alliance audit verify`` reported as damage until the next write repaired it, and
both raised a bare ``OSError`` (500 at the coordinator).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from alliance.core.errors import TransportError
from alliance.store.audit import AuditLog, read_audit_log, verify_audit_log

_CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from alliance.core.errors import TransportError
    from alliance.store.audit import AuditLog

    path = Path(sys.argv[1])
    log = AuditLog(path, actor="coordinator")
    log.append("study_submitted", study="s1")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 40, hard))
    try:
        log.append("update_received", site="h1", study="s1", round=1, bytes=123456)
    except TransportError as exc:
        print("refused:", exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    log.append("update_received", site="h1", study="s1", round=1, bytes=123456)
    """
)


def test_a_file_size_limit_cuts_no_line_into_the_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    refused = done.stdout.strip()
    assert refused.startswith(f"refused: audit log {path}: could not append 'update_received'")
    assert "File too large" in refused
    assert "nothing was recorded and the log is intact" in refused
    assert "retried" in refused
    assert verify_audit_log(path).ok, verify_audit_log(path).problems
    # the retry after the limit was lifted is the second entry: nothing torn, nothing repaired
    assert [e.event for e in read_audit_log(path)] == ["study_submitted", "update_received"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, mounted for the test (root only; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(folder: Path) -> Path:
    """Write a file into ``folder`` until its disk is full; the file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 1024)
    with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as handle:
        while True:  # the last partial kilobyte too
            handle.write(b"\0")
    return filler


def test_a_full_disk_fails_the_append_and_keeps_log_and_head_together(small_disk: Path) -> None:
    path = small_disk / "audit.log"
    log = AuditLog(path, actor="coordinator")
    log.append("study_submitted", study="s1")
    filler = fill(small_disk)
    with pytest.raises(TransportError) as info:
        log.append("update_received", site="h1", study="s1", round=1)
    assert f"audit log {path}: could not append 'update_received'" in str(info.value)
    assert os.strerror(errno.ENOSPC) in str(info.value)
    report = verify_audit_log(path)
    assert report.ok, report.problems
    assert json.loads(path.with_name("audit.log.head").read_text())["seq"] == 1
    assert [e.event for e in read_audit_log(path)] == ["study_submitted"]
    filler.unlink()
    log.append("update_received", site="h1", study="s1", round=1)  # space again: it goes on
    assert [e.event for e in read_audit_log(path)] == ["study_submitted", "update_received"]
    assert verify_audit_log(path).ok
