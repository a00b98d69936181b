"""A Chinese hospital's own files through ``alliance data check`` and ``alliance data map``.

The hospital writes sex as 男/女, findings and their status in Chinese, and local codes labelled
in Chinese; its mapping table has rows still to be filled in (issue 15). Each command runs as a
real process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.unit.test_suggest import CHINESE_LABELS

DISEASE = "OMIM:301013"


def alliance(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [sys.executable, "-m", "alliance.cli.app", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def chinese_hospital(folder: Path) -> Path:
    """Six patients, four Chinese-labelled codes not mapped yet, one code not in the table."""
    folder.mkdir()
    codes = [f"ZH-{n}" for n in range(1, len(CHINESE_LABELS) + 1)]
    rows = ["id,sex,age,code,status,kind,label"]
    for n in range(6):
        sex = "男" if n % 2 else "女"
        for code, (label, _, _) in zip(codes, CHINESE_LABELS, strict=True):
            rows.append(f"p{n},{sex},{n + 2},{code},有,表型,{label}")
        rows.append(f"p{n},{sex},{n + 2},HP:0001250,阳性,表型,癫痫发作")
        rows.append(f"p{n},{sex},{n + 2},ZH-99,无,表型,")
        rows.append(f"p{n},{sex},{n + 2},{DISEASE},,诊断,")
    (folder / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    table = ["code,target,label"] + [
        f"{code},,{label}" for code, (label, _, _) in zip(codes, CHINESE_LABELS, strict=True)
    ]
    (folder / "mapping.csv").write_text("\n".join(table) + "\n", encoding="utf-8")
    config = folder / "data.toml"
    config.write_text(
        '[data]\ntrain = "train.csv"\nformat = "table"\nmapping = "mapping.csv"\n'
        'report_min_count = 1\n\n[data.table]\nlayout = "finding"\n',
        encoding="utf-8",
    )
    return config


def test_chinese_labels_get_their_terms_first_and_pending_rows_are_not_yet_mapped(
    tmp_path: Path,
) -> None:
    config = chinese_hospital(tmp_path / "hospital")
    out = tmp_path / "suggestions.csv"

    text = " ".join(ok(alliance("data", "map", "--config", config, "--out", out)).split())

    with out.open(encoding="utf-8", newline="") as handle:
        rows = {row["code"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"ZH-1", "ZH-2", "ZH-3", "ZH-4", "ZH-99"}
    for n, (label, expected, official) in enumerate(CHINESE_LABELS, start=1):
        row = rows[f"ZH-{n}"]
        assert row["label"] == label
        first = row["suggestions"].split("; ")[0]
        assert first.startswith(f"{expected} "), row
        assert f" {official} (" in first  # the Chinese label beside the English name
        assert "is not mapped yet" in row["why"]
        assert "empty target" in row["why"]
    assert "not in the mapping table" in rows["ZH-99"]["why"]
    assert "4 of them not mapped yet" in text
    assert "1 not in the mapping table at all" in text


def test_chinese_sex_and_status_are_understood(tmp_path: Path) -> None:
    config = chinese_hospital(tmp_path / "hospital")

    report = json.loads(ok(alliance("data", "check", "--config", config, "--json")))["train"]

    assert report["loaded"] == 6
    assert report["missing_sex"] == 0
    assert all(r["kind"] != "bad value" for r in report["warning_reasons"])


def test_check_names_an_unreadable_sex_its_place_and_the_accepted_values(tmp_path: Path) -> None:
    config = chinese_hospital(tmp_path / "hospital")
    train = config.parent / "train.csv"
    with train.open("a", encoding="utf-8") as handle:
        handle.write(f"p9,X9,3,HP:0001250,有,表型,\np9,X9,3,{DISEASE},,诊断,\n")
    line = len(train.read_text(encoding="utf-8").splitlines()) - 1

    text = " ".join(ok(alliance("data", "check", "--config", config)).split())

    assert f"{train}:{line}: case p9: warning: sex 'X9' not recognised" in text
    assert "MALE, M, 男, 男性; FEMALE, F, 女, 女性" in text
