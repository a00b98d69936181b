"""``alliance data check`` and ``alliance data map`` as a hospital runs them on its own files.

Each test writes a demo hospital's files (:func:`~alliance.data.site_files.write_site_files`) or
its own, runs the command as a real process and reads its exit code, terminal output, JSON, HTML
and CSV. Independent commands of one test run two at a time (the import and the ontology take
most of each command's few seconds).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from alliance.data.ontology import Ontology
from alliance.data.site_files import SiteFiles, write_site_files
from alliance.data.synth import SiteCohort

LOCAL_CODES = 4  # tiantan: CSV, one row per finding, local codes + local_codes.csv
FHIR = 0  # west-china: FHIR R4 Bundle, HPO codes
SCHEMA = "alliance.data.quality/1"
# Counts that the report shows as they are although they are not counts of cases or codes.
NOT_SUPPRESSED = {"min_count", "catalogue_size"}


def alliance(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160", "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [sys.executable, "-m", "alliance.cli.app", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def alliance_all(*calls: Sequence[str | Path]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands two at a time; results in the order given."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: alliance(*args), calls))


def shown(n: int) -> int | str:
    """A count as the report shows it with the default threshold 5."""
    return "<5" if 0 < n < 5 else n


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def failed(done: subprocess.CompletedProcess[str]) -> str:
    """The error message of a command that refused its input (exit 2), on one line."""
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return " ".join(done.stderr.split())  # rich wraps long messages


def overview(text: str, name: str) -> list[str]:
    """The values of one overview line (``cases loaded   46``), one per source, in order."""
    return re.findall(rf"^\s*{re.escape(name)}\s+(\S+)\s*$", text, flags=re.MULTILINE)


def counts(report: Any, key: str = "") -> Iterator[tuple[str, int]]:
    """Every integer of a JSON report with the key it is under, at any depth."""
    if isinstance(report, dict):
        for k, v in report.items():
            yield from counts(v, str(k))
    elif isinstance(report, list):
        for v in report:
            yield from counts(v, key)
    elif isinstance(report, int) and not isinstance(report, bool):
        yield key, report


def assert_suppressed(report: dict[str, Any]) -> None:
    """No count from 1 to 4 anywhere in the report: each is ``"<5"``."""
    small = [(k, n) for k, n in counts(report) if 0 < n < 5 and k not in NOT_SUPPRESSED]
    assert not small, f"counts below 5 shown as they are: {small}"


def hospital(
    small_consortium: tuple[SiteCohort, ...], ontology: Ontology, folder: Path, index: int
) -> tuple[SiteCohort, SiteFiles, Path]:
    cohort = small_consortium[index]
    files = write_site_files(cohort, folder, index=index, ontology=ontology)
    return cohort, files, folder / "data.toml"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def unmap_first_codes(folder: Path, n: int = 3) -> dict[str, str]:
    """Delete the mapping rows of the first ``n`` codes of the first training case.

    Returns the deleted rows' code → target.
    """
    train = read_csv(folder / "train.csv")
    first = [row["code"] for row in train if row["id"] == train[0]["id"]]
    chosen = [code for code in dict.fromkeys(first) if not code.startswith(("OMIM:", "ORPHA:"))]
    assert len(chosen) >= n, first
    gone = set(chosen[:n])
    mapping = folder / "local_codes.csv"
    lines = mapping.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [lines[0]] + [line for line in lines[1:] if line.split(",", 1)[0] not in gone]
    assert len(kept) == len(lines) - n
    mapping.write_text("".join(kept), encoding="utf-8")
    return {row["code"]: row["target"] for row in csv.DictReader(lines) if row["code"] in gone}


# --- 1. a demo hospital's own files ---------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "system"), [(LOCAL_CODES, "LOCAL"), (FHIR, "HP")], ids=["local-codes", "fhir"]
)
def test_check_reads_a_demo_hospital(
    small_consortium: tuple[SiteCohort, ...],
    ontology: Ontology,
    tmp_path: Path,
    index: int,
    system: str,
) -> None:
    cohort, files, config = hospital(small_consortium, ontology, tmp_path / "site", index)
    text, as_json = alliance_all(
        ("data", "check", "--config", config), ("data", "check", "--config", config, "--json")
    )

    out = ok(text)
    assert f"train: {files.train.location}" in out
    assert f"test: {files.test.location}" in out
    assert overview(out, "cases loaded") == [
        str(shown(len(cohort.train))),
        str(shown(len(cohort.test))),
    ]
    assert overview(out, "rejected") == ["0", "0"]
    assert out.count("Codes by coding system") == 2
    # Every phenotype code of the hospital's system is mapped: distinct == mapped, 0 unmapped.
    rows = re.findall(rf"│\s*phenotype\s*│\s*{system}\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\S+)\s*│", out)
    assert len(rows) == 2, out
    assert all(distinct == mapped and unmapped == "0" for distinct, mapped, unmapped in rows)
    assert "could not be mapped" not in out

    reports = json.loads(ok(as_json))
    assert set(reports) == {"train", "test"}
    for role, cases in (("train", cohort.train), ("test", cohort.test)):
        report = reports[role]
        assert report["schema"] == SCHEMA
        assert report["source"] == f"{role}: {getattr(files, role).location}"
        assert report["loaded"] == shown(len(cases))
        assert report["records"] == shown(len(cases))
        assert report["rejected"] == 0
        assert report["rejections"] == []
        assert report["unmapped"] == []
        assert {s["system"] for s in report["systems"] if s["role"] == "phenotype"} == {system}
        assert_suppressed(report)


# --- 2. bad data: unmapped codes, an undecodable row, a short row ---------------------------


def test_check_reports_bad_rows_and_unmapped_codes_without_patient_data(
    small_consortium: tuple[SiteCohort, ...], ontology: Ontology, tmp_path: Path
) -> None:
    folder = tmp_path / "tiantan"
    cohort, _, config = hospital(small_consortium, ontology, folder, LOCAL_CODES)
    gone = unmap_first_codes(folder)
    train = folder / "train.csv"
    patient_rows = train.read_text(encoding="utf-8").splitlines()[1:]
    patient_ids = {line.split(",", 1)[0] for line in patient_rows}
    note = "患者自述头痛三年"
    with train.open("ab") as handle:
        handle.write(
            f"zz-note,FEMALE,7,{next(iter(gone))},present,phenotype,{note}\n".encode("gbk")
        )
        handle.write(b"zz-short,MALE,9\n")
    gbk_line, short_line = len(patient_rows) + 2, len(patient_rows) + 3
    page = tmp_path / "report.html"

    text, as_json = alliance_all(
        ("data", "check", "--config", config),
        ("data", "check", "--config", config, "--json", "--html", page),
    )

    out = ok(text)
    reports = json.loads(ok(as_json))
    report = reports["train"]
    assert report["loaded"] == len(cohort.train)
    # records = loaded + rejected, so it is shown as the range that keeps "2" hidden
    assert report["records"] == f"{len(cohort.train) + 1}–{len(cohort.train) + 4}"
    assert report["rejected"] == "<5"  # the two bad rows, suppressed
    rejections = {r["kind"]: r for r in report["rejections"]}
    assert set(rejections) == {"encoding", "malformed"}
    assert rejections["encoding"]["examples"] == [f"{train}:{gbk_line}"]
    assert '[data.table] encoding = "gbk"' in rejections["encoding"]["message"]
    assert rejections["malformed"]["examples"] == [f"{train}:{short_line}"]
    assert "[data.table] delimiter" in rejections["malformed"]["message"]
    assert {u["code"] for u in report["unmapped"]} == set(gone)
    for u in report["unmapped"]:
        assert u["role"] == "phenotype"
        assert f"not in the mapping table {folder / 'local_codes.csv'}" in u["reason"], u
        assert u["first_seen"].startswith(f"{train}:")
    assert {u["code"] for u in reports["test"]["unmapped"]} <= set(gone)
    assert reports["test"]["rejected"] == 0
    for r in reports.values():
        assert_suppressed(r)

    assert overview(out, "rejected")[0] == "<5"
    assert set(gone) <= set(re.findall(r"NEU-\d{4}", out.split("could not be mapped", 1)[1]))
    assert re.search(r"│ encoding\s+│ <5\s+│", out), out
    assert re.search(r"│ malformed\s+│ <5\s+│", out), out

    html = page.read_text(encoding="utf-8")
    for heading in (
        "Overview",
        "Rejected records, by reason",
        "Warnings, by reason",
        "Codes by coding system",
        "Codes that could not be mapped",
        "Phenotypes per case",
        "Labels",
    ):
        assert f"<h2>{heading}</h2>" in html
    assert html.count("<h1>Data-quality report:") == 2  # train and test
    assert html.count("<!DOCTYPE html>") == 1  # in one page
    assert '<td class="s">&lt;5</td>' in html
    assert "<5" not in html.replace("&lt;5", "")
    assert "<script" not in html.lower()
    assert all(code in html for code in gone)
    assert f"{train}:{short_line}" in html

    # A shareable report: counts, codes, reasons and locations, never a patient's row or id.
    for shared in (out, as_json.stdout, html):
        assert not [line for line in patient_rows if line in shared]
        assert not [i for i in patient_ids if i in shared]
        assert "zz-note" not in shared
        assert "zz-short" not in shared
        assert note not in shared
        assert note.encode("gbk").decode("utf-8", errors="replace") not in shared


# --- 3. a hospital with fewer than 5 cases --------------------------------------------------


def test_check_suppresses_a_count_of_three_cases(
    small_consortium: tuple[SiteCohort, ...], tmp_path: Path
) -> None:
    cases = small_consortium[2].train[:3]
    with (tmp_path / "cases.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "sex", "age", "observed", "excluded", "diagnoses"])
        for n, case in enumerate(cases):
            writer.writerow(
                [
                    f"small-{n}",
                    case.sex.value,
                    case.age_years if case.age_years is not None else "",
                    ";".join(case.observed),
                    ";".join(case.excluded),
                    ";".join(case.disease_ids),
                ]
            )
    config = tmp_path / "site.toml"
    config.write_text('[data]\ntrain = "cases.csv"\n', encoding="utf-8")

    text, as_json = alliance_all(
        ("data", "check", "--config", config), ("data", "check", "--config", config, "--json")
    )

    out = ok(text)
    assert overview(out, "cases loaded") == ["<5"]
    assert overview(out, "records read") == ["<5"]
    assert not re.search(r"^\s*(records read|cases loaded)\s+3\s*$", out, flags=re.MULTILINE)
    assert "test:" not in out  # no held-out source configured
    reports = json.loads(ok(as_json))
    assert set(reports) == {"train"}
    report = reports["train"]
    assert report["schema"] == SCHEMA
    assert report["loaded"] == "<5"
    assert report["records"] == "<5"
    assert report["diagnosed"] == "<5"
    assert report["rejected"] == 0
    assert 3 not in [n for _, n in counts(report)]
    assert_suppressed(report)


# --- 4. the mapping workflow: map, fill in, check again -------------------------------------


def test_map_suggestions_complete_the_mapping_table(
    small_consortium: tuple[SiteCohort, ...], ontology: Ontology, tmp_path: Path
) -> None:
    folder = tmp_path / "tiantan"
    _, _, config = hospital(small_consortium, ontology, folder, LOCAL_CODES)
    gone = unmap_first_codes(folder)
    suggestions = tmp_path / "suggestions.csv"

    out = ok(alliance("data", "map", "--config", config, "--out", suggestions))
    assert f"wrote {len(gone)} rows to {suggestions}" in " ".join(out.split())
    header = suggestions.read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("code,target,label,")
    rows = read_csv(suggestions)
    assert sorted(row["code"] for row in rows) == sorted(gone)
    for row in rows:
        assert row["target"] == ""
        assert row["label"] == ontology.name(gone[row["code"]])
        assert row["role"] == "phenotype"
        candidates = [s.split(" ", 1)[0] for s in row["suggestions"].split("; ")]
        assert 1 <= len(candidates) <= 3
        assert candidates[0] == gone[row["code"]], row
        assert all(re.fullmatch(r"HP:\d{7}", c) for c in candidates)

    # The hospital fills in 'target' from the first candidate and adds the rows to its table.
    mapping = folder / "local_codes.csv"
    columns = mapping.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert columns == ["code", "target", "label"]
    with mapping.open("a", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        for row in rows:
            first = row["suggestions"].split(" ", 1)[0]
            writer.writerow({"code": row["code"], "target": first, "label": row["label"]})
    before = suggestions.read_text(encoding="utf-8")

    check, again = alliance_all(
        ("data", "check", "--config", config, "--json"),
        ("data", "map", "--config", config, "--out", suggestions),
    )

    reports = json.loads(ok(check))
    assert reports["train"]["unmapped"] == []
    assert reports["test"]["unmapped"] == []
    assert all(s["unmapped"] == 0 for r in reports.values() for s in r["systems"])
    message = failed(again)
    assert str(suggestions) in message
    assert "--force" in message
    assert suggestions.read_text(encoding="utf-8") == before


# --- 5. configs that cannot be used ---------------------------------------------------------


def test_check_refuses_unusable_configs_naming_the_problem(tmp_path: Path) -> None:
    (tmp_path / "cases.csv").write_text("id,observed\na,HP:0001250\n", encoding="utf-8")
    configs = {
        "no-train.toml": ('[data]\nformat = "table"\n', ["[data] train"]),
        "xml.toml": (
            '[data]\ntrain = "cases.csv"\nformat = "xml"\n',
            ["[data] format 'xml'", "'auto'", "'jsonl'", "'phenopacket'", "'fhir'", "'table'"],
        ),
        "table-key.toml": (
            '[data]\ntrain = "cases.csv"\n[data.table]\nlayout = "case"\ncolumn_sep = ";"\n',
            ["[data.table]", "column_sep"],
        ),
        "missing.toml": ('[data]\ntrain = "no-such-cases.csv"\n', ["no-such-cases.csv"]),
    }
    for name, (text, _) in configs.items():
        (tmp_path / name).write_text(text, encoding="utf-8")

    results = alliance_all(*(("data", "check", "--config", tmp_path / name) for name in configs))

    for (name, (_, expected)), done in zip(configs.items(), results, strict=True):
        message = failed(done)
        assert str(tmp_path / name) in message, (name, message)
        for words in expected:
            assert words in message, (name, message)
        assert done.stdout == "", (name, done.stdout)


# --- 6. the demo's hospitals as `cohort synth --site-formats` writes them -------------------


def test_synth_site_formats_writes_folders_that_check_accepts(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    ok(alliance("cohort", "synth", "--site-formats", "--scale", "0.05", "--out", out))
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 12
    assert all((p / "data.toml").is_file() for p in folders)
    configs = {p.name: (p / "data.toml").read_text(encoding="utf-8") for p in folders}
    # Two of the harder ones (time): OMOP in SQLite, FHIR with the hospital's own codes.
    sqlite = next(name for name, text in configs.items() if "sqlite:" in text)
    local_fhir = next(
        name for name, text in configs.items() if "mapping =" in text and '"fhir"' in text
    )

    results = alliance_all(
        *(
            ("data", "check", "--config", out / name / "data.toml", "--json")
            for name in (sqlite, local_fhir)
        )
    )

    for done in results:
        reports = json.loads(ok(done))
        assert set(reports) == {"train", "test"}
        for report in reports.values():
            assert report["schema"] == SCHEMA
            assert report["rejected"] == 0
            assert report["unmapped"] == []
            assert report["loaded"] == "<5" or report["loaded"] >= 5


# --- data that looks like terminal markup -----------------------------------------------------


def test_codes_that_look_like_markup_are_shown_as_written(tmp_path: Path) -> None:
    (tmp_path / "cases.csv").write_text(
        "id,code,label\np1,[/b],odd label\np1,OMIM:154700,\n"
        "p1,HP:0001166,\np2,HP:0001166,\np2,OMIM:154700,\n",
        encoding="utf-8",
    )
    config = tmp_path / "site.toml"
    config.write_text(
        '[data]\ntrain = "cases.csv"\n[data.table]\nlayout = "finding"\n', encoding="utf-8"
    )
    out = ok(alliance("data", "check", "--config", config))
    assert "[/b]" in out
    assert "is not in the mapping table" in out
    suggestions = tmp_path / "rows.csv"
    mapped = ok(alliance("data", "map", "--config", config, "--out", suggestions))
    assert "[/b]" in mapped
    assert "odd label" in mapped
    # Once every code is mapped, --force rewrites the file with its header only: nothing stale.
    (tmp_path / "map.csv").write_text("code,target\n[/b],HP:0001166\n", encoding="utf-8")
    config.write_text(
        '[data]\ntrain = "cases.csv"\nmapping = "map.csv"\n[data.table]\nlayout = "finding"\n',
        encoding="utf-8",
    )
    ok(alliance("data", "map", "--config", config, "--out", suggestions, "--force"))
    assert suggestions.read_text(encoding="utf-8").splitlines() == [
        "code,target,label,role,count,suggestions,why"
    ]
