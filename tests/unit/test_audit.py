"""The hash-chained audit log: format, tamper detection, crash recovery and concurrent writers.

Hashes are recomputed here from the documented format (SHA-256 of the canonical JSON without
``hash``), not with the module's own helper, so the file format is pinned by the tests.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alliance.core.errors import ConfigError, DataError, IntegrityError
from alliance.store.audit import (
    GENESIS,
    AuditEntry,
    AuditLog,
    read_audit_log,
    verify_audit_log,
)

N = 20
KEYS = ["seq", "time", "actor", "event", "details", "prev", "hash"]

# ---------------------------------------------------------------------------------------------
# helpers


def entry_hash(obj: dict[str, Any]) -> str:
    body = {k: v for k, v in obj.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def head_of(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def write_log(path: Path, n: int = N) -> AuditLog:
    log = AuditLog(path, actor="coordinator")
    for i in range(n):
        log.append(
            "round_sent" if i % 3 else "study_submitted",
            site=f"site-{'abc'[i % 3]}",
            round=i,
            bytes=1000 + 7 * i,
            note=f"update {i} für Zürich",
        )
    return log


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def save(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def forged(seq: int, prev: str) -> bytes:
    body = {
        "seq": seq,
        "time": "2026-11-24T10:00:00.000000Z",
        "actor": "coordinator",
        "event": "round_sent",
        "details": {"bytes": 1},
        "prev": prev,
    }
    return json.dumps({**body, "hash": entry_hash(body)}).encode()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "audit.jsonl"
    write_log(path)
    return path


# ---------------------------------------------------------------------------------------------
# format and round trip


def test_round_trip_and_format(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "audit.jsonl"
    log = AuditLog(path, actor="site-a")
    assert path.exists()
    assert json.loads(head_of(path).read_text()) == {"seq": 0, "hash": GENESIS}
    written = [
        log.append("site_joined", site="site-a", tags=("x", "y")),
        log.append("update_sent", round=3, bytes=123_456, norm=0.25, ok=True, extra=None),
        log.append("note", event="a detail may be called event", nested={"a": [1, {"b": "ü"}]}),
    ]
    assert written[0].details == {"site": "site-a", "tags": ["x", "y"]}  # tuples become lists
    assert log.entries() == written == read_audit_log(path)
    assert log.head == written[-1].hash
    prev = GENESIS
    for seq, raw in enumerate(lines_of(path), 1):
        obj = json.loads(raw)
        assert list(obj) == KEYS
        assert (obj["seq"], obj["actor"], obj["prev"]) == (seq, "site-a", prev)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", obj["time"])
        assert obj["hash"] == entry_hash(obj)
        assert AuditEntry(**obj) == written[seq - 1]
        prev = obj["hash"]
    assert "ü" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    assert json.loads(head_of(path).read_text()) == {"seq": 3, "hash": prev}
    report = verify_audit_log(path)
    assert (report.ok, report.entries, report.head, report.problems) == (True, 3, prev, ())


def test_reopening_continues_the_chain(log_path: Path) -> None:
    log = AuditLog(log_path, actor="coordinator")
    entry = log.append("restart", reason="upgrade")
    assert (entry.seq, entry.prev) == (N + 1, json.loads(lines_of(log_path)[N - 1])["hash"])
    assert verify_audit_log(log_path).ok


def test_empty_log_verifies(tmp_path: Path) -> None:
    AuditLog(tmp_path / "a.jsonl", actor="coordinator")
    report = verify_audit_log(tmp_path / "a.jsonl")
    assert (report.ok, report.entries, report.head) == (True, 0, None)


@pytest.mark.parametrize(
    ("details", "named"),
    [
        ({"loss": float("nan")}, "details.loss is nan"),
        ({"x": [1, float("inf")]}, "details.x[1] is inf"),
        ({"x": {"y": -float("inf")}}, "details.x.y is -inf"),
        ({"blob": b"raw"}, "details.blob is bytes"),
        ({"s": {1, 2}}, "details.s is set"),
        ({"o": object()}, "details.o is object"),
        ({"d": {1: "a"}}, "details.d is a dict with non-string keys"),
        ({"t": "\ud800"}, "details.t is a lone surrogate"),
    ],
)
def test_non_json_details_are_rejected(log_path: Path, details: dict[str, Any], named: str) -> None:
    before = log_path.read_bytes()
    log = AuditLog(log_path, actor="coordinator")
    with pytest.raises(ConfigError, match=re.escape(named)) as info:
        log.append("update_sent", **details)
    assert str(log_path) in str(info.value)
    assert "'update_sent'" in str(info.value)
    assert log_path.read_bytes() == before


@pytest.mark.parametrize("event", ["", "Upper", "with space", "1st", "x" * 65, "a\nb"])
def test_bad_event_names_are_rejected(log_path: Path, event: str) -> None:
    with pytest.raises(ConfigError, match="event name"):
        AuditLog(log_path, actor="coordinator").append(event)


def test_unopenable_path_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(ConfigError, match=r"cannot open audit log .*dir\.jsonl"):
        AuditLog(tmp_path / "dir.jsonl", actor="coordinator")


@pytest.mark.parametrize("actor", ["", " padded", "a\nb", "x" * 129])
def test_bad_actors_are_rejected(tmp_path: Path, actor: str) -> None:
    with pytest.raises(ConfigError, match="actor"):
        AuditLog(tmp_path / "a.jsonl", actor=actor)


# ---------------------------------------------------------------------------------------------
# tampering: named cases with the officer's wording


def messages(path: Path) -> list[str]:
    report = verify_audit_log(path)
    assert not report.ok
    return [f"{p.line}: {p.message}" for p in report.problems]


def test_deleted_middle_line_is_named(log_path: Path) -> None:
    lines = lines_of(log_path)
    save(log_path, lines[:3] + lines[4:])
    assert messages(log_path) == [
        "4: entry 5 (line 4) follows entry 3 (line 3): entry 4 was deleted"
    ]


def test_deleted_lines_are_counted(log_path: Path) -> None:
    lines = lines_of(log_path)
    save(log_path, lines[1:2] + lines[5:])
    found = messages(log_path)
    assert found[0] == "1: entry 2 (line 1) follows the start of the log: entry 1 was deleted"
    assert found[1] == "2: entry 6 (line 2) follows entry 2 (line 1): entries 3-5 were deleted"


def test_truncated_tail_is_caught_by_the_head_file(log_path: Path) -> None:
    save(log_path, lines_of(log_path)[:-2])
    [found] = messages(log_path)
    assert "ends at entry 18 (line 18) but the head file records entry 20" in found
    assert "last 2 entries were deleted" in found


def test_swapped_lines_are_reordered(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[4], lines[5] = lines[5], lines[4]
    save(log_path, lines)
    found = messages(log_path)
    assert found[0].startswith("5: line 5 (entry 6, 'round_sent') comes after entry 4 (line 4)")
    assert all("reordered" in m for m in found)


def test_edited_line_no_longer_matches_its_hash(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[6] = lines[6].replace(b'"bytes": 1042', b'"bytes": 9042')
    save(log_path, lines)
    assert messages(log_path) == [
        "7: line 7 (entry 7, 'study_submitted') was changed after it was written: it no longer "
        "matches its hash"
    ]


def test_rehashed_edit_breaks_the_next_link(log_path: Path) -> None:
    lines = lines_of(log_path)
    obj = json.loads(lines[6])
    obj["details"]["bytes"] = 1
    obj["hash"] = entry_hash(obj)
    lines[6] = json.dumps(obj).encode()
    save(log_path, lines)
    [found] = messages(log_path)
    assert found.startswith("8: line 8 (entry 8, 'round_sent') does not link to entry 7 (line 7)")
    assert "an entry not in the log" in found


def test_inserted_duplicate_is_named(log_path: Path) -> None:
    lines = lines_of(log_path)
    save(log_path, [*lines[:9], forged(10, json.loads(lines[8])["hash"]), *lines[9:]])
    [found] = messages(log_path)
    assert found.startswith("11: line 11 (entry 10, 'study_submitted') repeats entry 10 of line 10")


@pytest.mark.parametrize(
    ("line", "found"),
    [
        (b"not json", "line 5 is not valid JSON (Expecting value at column 1)"),
        (b"", "line 5 is empty"),
        (b"[1, 2]", "line 5 is JSON but not an entry"),
        (b'{"seq": 5, "seq": 5}', "a key appears twice"),
        (b'{"seq": NaN}', "NaN is not a JSON number"),
        (b"\xff\xfe", "can't decode byte 0xff"),
        (b'{"seq": 5, "time": 1, "x": 2}', "missing, invalid or unknown: time, actor"),
    ],
)
def test_malformed_lines_are_named(log_path: Path, line: bytes, found: str) -> None:
    lines = lines_of(log_path)
    lines[4] = line
    save(log_path, lines)
    first = messages(log_path)[0]
    assert first.startswith("5: line 5")
    assert found in first
    assert len(messages(log_path)) == 1  # the next entry still links to the one before


def test_missing_head_file_says_the_chain_is_intact(log_path: Path) -> None:
    head_of(log_path).unlink()
    [found] = messages(log_path)
    assert "head file is missing: the log itself chains correctly (20 entries)" in found
    with pytest.raises(IntegrityError, match="head file is missing"):
        AuditLog(log_path, actor="coordinator")


def test_head_file_that_disagrees_is_named(log_path: Path) -> None:
    head_of(log_path).write_text(json.dumps({"seq": N, "hash": "ab" * 32}))
    assert messages(log_path) == [
        "0: the head file's hash for entry 20 is wrong: its entry 20 was replaced, or the head "
        "file edited"
    ]
    head_of(log_path).write_text("{oops")
    assert "cannot be read" in messages(log_path)[0]


def test_missing_log_or_both_files(log_path: Path) -> None:
    log_path.unlink()
    assert "missing but its head file exists" in messages(log_path)[0]
    head_of(log_path).unlink()
    with pytest.raises(DataError, match="does not exist"):
        verify_audit_log(log_path)
    with pytest.raises(DataError, match="does not exist"):
        read_audit_log(log_path)


def test_tampered_log_is_not_opened_for_appending(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[6] = lines[6].replace(b"site-a", b"site-x")
    save(log_path, lines)
    before = log_path.read_bytes()
    with pytest.raises(IntegrityError, match=r"was altered: line 7 \(entry 7") as info:
        AuditLog(log_path, actor="coordinator")
    assert f"alliance audit verify {log_path}" in str(info.value)
    assert log_path.read_bytes() == before


def test_tampering_while_open_stops_the_writer(log_path: Path) -> None:
    log = AuditLog(log_path, actor="coordinator")
    lines = lines_of(log_path)
    lines[2] = lines[2].replace(b"site-c", b"site-x")
    save(log_path, lines)  # same size: only a full check sees it
    with pytest.raises(IntegrityError, match="line 3"):
        log.entries()
    save(log_path, lines_of(log_path)[:-1])
    with pytest.raises(IntegrityError, match="was altered"):
        log.append("round_sent")


# ---------------------------------------------------------------------------------------------
# tampering: any line, any mutation


MUTATIONS = ["edit", "delete", "swap", "insert_wrong_prev", "insert_linked"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    write_log(path)
    return path.read_bytes(), head_of(path).read_bytes()


def mutate(data: st.DataObject, lines: list[bytes]) -> tuple[str, int, list[bytes]]:
    """A mutated copy of ``lines``, the kind of mutation and the first line it touches."""
    kind = data.draw(st.sampled_from(MUTATIONS), label="kind")
    out = list(lines)
    if kind == "edit":
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        start = lines[i].index(b'"details"') + 11
        spots = [
            k for k in range(start, lines[i].index(b', "prev"')) if lines[i][k : k + 1].isalnum()
        ]
        k = data.draw(st.sampled_from(spots), label="position")
        old = chr(lines[i][k])
        new = data.draw(st.sampled_from([c for c in "aqzXQ0159" if c.lower() != old.lower()]))
        out[i] = lines[i][:k] + new.encode() + lines[i][k + 1 :]
        return kind, i, out
    if kind == "delete":
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        del out[i]
        return kind, i, out
    if kind == "swap":
        i, j = sorted(
            data.draw(
                st.lists(st.integers(0, len(lines) - 1), min_size=2, max_size=2, unique=True),
                label="lines",
            )
        )
        out[i], out[j] = out[j], out[i]
        return kind, i, out
    i = data.draw(st.integers(0, len(lines)), label="position")  # insert before line i
    before: dict[str, Any] = json.loads(lines[i - 1]) if i else {"seq": 0, "hash": GENESIS}
    prev = (
        before["hash"]
        if kind == "insert_linked"
        else data.draw(
            st.text("0123456789abcdef", min_size=64, max_size=64).filter(
                lambda h: h != before["hash"]
            )
        )
    )
    out.insert(i, forged(before["seq"] + 1, prev))
    return kind, i, out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_mutation_is_detected(pristine: tuple[bytes, bytes], data: st.DataObject) -> None:
    log_bytes, head_bytes = pristine
    kind, i, lines = mutate(data, log_bytes[:-1].split(b"\n"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.jsonl"
        save(path, lines)
        head_of(path).write_bytes(head_bytes)
        report = verify_audit_log(path)
        assert not report.ok, (kind, i)
        first = report.problems[0]
        if kind == "delete" and i == N - 1:
            assert "the last entry was deleted" in first.message
        elif kind == "delete":
            assert first.line == i + 1
            assert f"entry {i + 1} was deleted" in first.message
        elif kind == "swap":
            assert first.line == i + 1
            assert "reordered" in first.message
        elif kind == "edit":
            assert first.line == i + 1
        else:
            assert first.line in (i + 1, i + 2)
        tampered = path.read_bytes()
        if kind == "insert_linked" and i == N:
            # Indistinguishable from a crash between the line and the head update: a writer
            # repairs it, and says so in the log.
            entries = AuditLog(path, actor="coordinator").entries()
            assert entries[-1].event == "audit_recovered"
            assert entries[-1].details["reason"] == "head_behind"
        else:
            with pytest.raises(IntegrityError):
                AuditLog(path, actor="coordinator")
            assert path.read_bytes() == tampered


# ---------------------------------------------------------------------------------------------
# crash recovery


@pytest.mark.parametrize("cut", [1, 17, -1])
def test_torn_tail_is_recovered(log_path: Path, cut: int) -> None:
    """A crash mid-write leaves part of a line (here up to all but its newline)."""
    head = head_of(log_path).read_bytes()
    AuditLog(log_path, actor="coordinator").append("round_sent", bytes=5)
    whole = lines_of(log_path)[-1]
    save(log_path, lines_of(log_path)[:-1])
    torn = whole[:cut]
    with log_path.open("ab") as fh:
        fh.write(torn)
    head_of(log_path).write_bytes(head)  # the head was not moved yet
    assert "a writer was interrupted (a crash)" in verify_audit_log(log_path).problems[0].message
    log = AuditLog(log_path, actor="site-b")
    last = log.entries()[-1]
    assert (last.seq, last.event, last.actor) == (N + 1, "audit_recovered", "site-b")
    assert last.details == {"reason": "torn_tail", "dropped_bytes": len(torn), "line": N + 1}
    log.append("restart")
    assert verify_audit_log(log_path).ok


def test_torn_tail_left_by_another_writer_is_recovered(log_path: Path) -> None:
    log = AuditLog(log_path, actor="site-a")
    with log_path.open("ab") as fh:
        fh.write(b'{"seq": 21, "time": "2026-')  # another process died mid-append
    entry = log.append("round_sent", bytes=1)
    assert entry.seq == N + 2
    events = [(e.event, e.details.get("reason")) for e in log.entries()[-2:]]
    assert events == [("audit_recovered", "torn_tail"), ("round_sent", None)]
    assert verify_audit_log(log_path).ok


def test_torn_tail_with_advanced_head_is_tampering(log_path: Path) -> None:
    lines = lines_of(log_path)
    save(log_path, lines[:-1])
    with log_path.open("ab") as fh:
        fh.write(lines[-1][:30])  # the head still names entry 20, which is now torn
    before = log_path.read_bytes()
    found = messages(log_path)
    assert "this is no crash" in found[0]
    with pytest.raises(IntegrityError, match="line 20 is incomplete"):
        AuditLog(log_path, actor="coordinator")
    assert log_path.read_bytes() == before


def test_lost_head_update_is_recovered(log_path: Path) -> None:
    """A crash after the line's fsync but before the head moved."""
    lines = lines_of(log_path)
    head_of(log_path).write_text(json.dumps({"seq": N - 1, "hash": json.loads(lines[-2])["hash"]}))
    assert "is not in the head file: a writer crashed" in messages(log_path)[0]
    last = AuditLog(log_path, actor="coordinator").entries()[-1]
    assert last.details == {"reason": "head_behind", "dropped_bytes": 0, "entry": N}
    assert verify_audit_log(log_path).ok


def test_head_two_behind_is_tampering(log_path: Path) -> None:
    lines = lines_of(log_path)
    head_of(log_path).write_text(json.dumps({"seq": N - 2, "hash": json.loads(lines[-3])["hash"]}))
    assert "lines 19-20 were added without updating the head file" in messages(log_path)[0]
    with pytest.raises(IntegrityError):
        AuditLog(log_path, actor="coordinator")


# ---------------------------------------------------------------------------------------------
# concurrency

WRITER = """
import sys
from pathlib import Path
from alliance.store.audit import AuditLog

log = AuditLog(Path(sys.argv[1]), actor=sys.argv[2])
for i in range(50):
    log.append("update_sent", i=i, pad="x" * (i * 37 % 300))
"""


def test_two_processes_append_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path, actor="coordinator")
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), actor], stderr=subprocess.PIPE)
        for actor in ("site-a", "site-b")
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr.decode()
    report = verify_audit_log(path)
    assert report.ok, report.problems
    entries = read_audit_log(path)
    assert [e.seq for e in entries] == list(range(1, 101))
    for actor in ("site-a", "site-b"):
        assert [e.details["i"] for e in entries if e.actor == actor] == list(range(50))


def test_threads_and_two_handles_in_one_process(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first, second = AuditLog(path, actor="a"), AuditLog(path, actor="b")

    def work(log: AuditLog, k: int) -> None:
        for i in range(25):
            log.append("tick", thread=k, i=i)

    threads = [
        threading.Thread(target=work, args=(log, k))
        for k, log in enumerate([first] * 2 + [second] * 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify_audit_log(path).ok
    assert len(first.entries()) == 100
    assert first.head == second.entries()[-1].hash


def test_copy_of_a_log_verifies(log_path: Path, tmp_path: Path) -> None:
    """A privacy officer checks a copy of both files, elsewhere."""
    target = tmp_path / "copy" / "audit.jsonl"
    target.parent.mkdir()
    shutil.copy(log_path, target)
    shutil.copy(head_of(log_path), head_of(target))
    assert verify_audit_log(target).ok
