"""``alliance audit verify`` and ``show``: exit codes, wording, JSON, and tamper detection."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from alliance.cli.audit import app
from alliance.store.audit import GENESIS, AuditLog

N = 20
runner = CliRunner()


def head_of(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def make_log(path: Path) -> Path:
    log = AuditLog(path, actor="coordinator")
    for i in range(N):
        log.append("study_submitted" if i == 0 else "round_sent", round=i, bytes=100 * i)
    return path


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return make_log(tmp_path / "audit.jsonl")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    path = make_log(tmp_path_factory.mktemp("cli") / "audit.jsonl")
    return path.read_bytes(), head_of(path).read_bytes()


def test_verify_intact_log(log_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(log_path)])
    assert result.exit_code == 0, result.output
    head = json.loads(head_of(log_path).read_text())["hash"]
    assert (
        result.stdout.strip()
        == f"audit log {log_path}: 20 entries, chain intact, head {head[:16]}…"
    )


def test_verify_json(log_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(log_path), "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report == {
        "path": str(log_path),
        "ok": True,
        "entries": N,
        "head": json.loads(head_of(log_path).read_text())["hash"],
        "problems": [],
    }


def test_verify_lists_every_problem_with_its_line(log_path: Path) -> None:
    lines = log_path.read_bytes().splitlines(keepends=True)
    del lines[3]
    lines[9] = lines[9].replace(b'"bytes": 1000', b'"bytes": 1001')
    log_path.write_bytes(b"".join(lines[:-1]))
    result = runner.invoke(app, ["verify", str(log_path)])
    assert result.exit_code == 1
    out = result.stdout.splitlines()
    assert (
        out[0] == f"audit log {log_path}: 3 problems (18 entries read); it was altered or damaged:"
    )
    assert out[1] == "  - entry 5 (line 4) follows entry 3 (line 3): entry 4 was deleted"
    assert out[2].startswith("  - line 10 (entry 11, 'round_sent') was changed after it was")
    assert out[3] == (
        "  - the log ends at entry 19 (line 18) but the head file records entry 20: the last "
        "entry was deleted"
    )
    as_json = runner.invoke(app, ["verify", str(log_path), "--json"])
    assert as_json.exit_code == 1
    assert [p["line"] for p in json.loads(as_json.stdout)["problems"]] == [4, 10, 19]


def test_missing_file_exits_2_naming_it(tmp_path: Path) -> None:
    for command in ("verify", "show"):
        result = runner.invoke(app, [command, str(tmp_path / "nope.jsonl")])
        assert result.exit_code == 2
        assert f"audit log {tmp_path / 'nope.jsonl'} does not exist" in result.stderr


def test_show_table_filters_and_tail(log_path: Path) -> None:
    result = runner.invoke(app, ["show", str(log_path), "--event", "round_sent", "--tail", "2"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if re.match(r"│\s+\d+ │", line)]
    assert [int(row.split("│")[1]) for row in rows] == [19, 20]
    assert "round=19, bytes=1900" in result.stdout
    assert "study_submitted" not in result.stdout
    first = runner.invoke(app, ["show", str(log_path), "--event", "study_submitted"])
    assert "round=0, bytes=0" in first.stdout
    none = runner.invoke(app, ["show", str(log_path), "--event", "nothing"])
    assert "no entries of event 'nothing'" in none.stdout


def test_show_prints_log_text_literally(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path, actor="[red]site").append("note", text="[b]x[/b]")
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 0
    assert "[red]site" in result.stdout
    assert "text=[b]x[/b]" in result.stdout


def test_show_warns_about_a_tampered_log(log_path: Path) -> None:
    lines = log_path.read_bytes().splitlines(keepends=True)
    log_path.write_bytes(b"".join(lines[:5] + lines[6:]))
    result = runner.invoke(app, ["show", str(log_path), "--tail", "1"])
    assert result.exit_code == 0
    assert "fails verification (1 problem(s))" in result.stderr
    assert f"alliance audit verify {log_path}" in result.stderr


def forged(seq: int, prev: str) -> bytes:
    body = {
        "seq": seq,
        "time": "2026-11-24T10:00:00.000000Z",
        "actor": "coordinator",
        "event": "round_sent",
        "details": {"round": 0},
        "prev": prev,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return json.dumps({**body, "hash": hashlib.sha256(text.encode()).hexdigest()}).encode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["edit", "delete", "swap", "insert"]),
    i=st.integers(0, N - 1),
    j=st.integers(0, N - 1),
    linked=st.booleans(),
)
def test_cli_detects_every_mutation(
    pristine: tuple[bytes, bytes], kind: str, i: int, j: int, linked: bool
) -> None:
    log_bytes, head_bytes = pristine
    lines = log_bytes.splitlines(keepends=True)
    if kind == "edit":
        lines[i] = lines[i].replace(b'"round": ', b'"round": 1')  # 7 -> 17: still valid JSON
    elif kind == "delete":
        del lines[i]
    elif kind == "swap":
        j = j if j != i else (i + 1) % N
        lines[i], lines[j] = lines[j], lines[i]
    else:
        before: dict[str, Any] = json.loads(lines[i - 1]) if i else {"seq": 0, "hash": GENESIS}
        prev = before["hash"] if linked else "f" * 64
        lines.insert(i, forged(before["seq"] + 1, prev) + b"\n")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.jsonl"
        path.write_bytes(b"".join(lines))
        head_of(path).write_bytes(head_bytes)
        result = runner.invoke(app, ["verify", str(path)])
        assert result.exit_code == 1, (kind, i, j, result.output)
        assert "problem" in result.stdout.splitlines()[0]
        assert re.search(r"line \d+", result.stdout)
