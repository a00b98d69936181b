"""The ``alliance`` command as a user runs it: a real process, real files, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import PHENOPACKET_STORE


def alliance(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160", "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [sys.executable, "-m", "alliance.cli.app", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    done = alliance(
        "demo", "--out", str(out), "--scale", "0.1", "--diseases", "60", "--rounds", "2"
    )
    assert done.returncode == 0, done.stderr
    assert "Best single hospital" in done.stdout
    assert "Federated" in done.stdout
    return out


def test_demo_writes_metrics_report_and_model(small_demo: Path) -> None:
    metrics = json.loads((small_demo / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["schema"] == "alliance.demo.metrics/1"
    assert len(metrics["sites"]) == 12
    assert {"prior", "local_best", "federated", "pooled"} <= set(metrics["overall"])
    assert len(metrics["rounds"]) == 3  # versions 0, 1 and the final 2
    html = (small_demo / "report.html").read_text(encoding="utf-8")
    assert "West China Hospital" in html
    assert html.count("data:image/png;base64,") >= 3
    assert (small_demo / "model.alliance").stat().st_size > 1000
    dashboard = (small_demo / "dashboard.html").read_text(encoding="utf-8")
    assert all(site["id"] in dashboard for site in metrics["sites"])


def test_evaluate_prints_topk_and_json(small_demo: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        json.dumps(
            {"id": "a", "observed": ["HP:0001250", "HP:0001263"], "disease_ids": ["OMIM:301013"]}
        )
        + "\n{not json\n"
        + json.dumps({"id": "b", "observed": ["HP:0001166"], "disease_ids": ["OMIM:154700"]})
        + "\n",
        encoding="utf-8",
    )
    done = alliance(
        "evaluate", "--model", str(small_demo / "model.alliance"), "--cases", str(cases)
    )
    assert done.returncode == 0, done.stderr
    assert "2 cases ranked (1 rejected: malformed 1)" in done.stdout
    assert f"{cases}:2" in done.stderr  # the malformed line is named by file and line
    as_json = alliance(
        "evaluate", "--model", str(small_demo / "model.alliance"), "--cases", str(cases), "--json"
    )
    report = json.loads(as_json.stdout)
    assert report["n"] == 2
    assert report["rejected"] == 1
    assert 0 <= report["top10"] <= 1


def test_diagnose_lists_candidates_with_supporting_phenotypes(small_demo: Path) -> None:
    done = alliance(
        "diagnose",
        "--model",
        str(small_demo / "model.alliance"),
        "--hpo",
        "HP:0001166,HP:0001083,HP:0002616",
        "--top",
        "5",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    candidates = json.loads(done.stdout)
    assert len(candidates) == 5
    assert candidates[0]["rank"] == 1
    given = {"HP:0001166", "HP:0001083", "HP:0002616"}
    assert all(set(c["supporting"]) <= given and c["supporting"] for c in candidates[:3])
    assert len(candidates[0]["supporting"]) >= 2
    assert candidates[0]["probability"] >= candidates[-1]["probability"]
    table = alliance(
        "diagnose", "--model", str(small_demo / "model.alliance"), "--hpo", "HP:0001166"
    )
    assert "Differential diagnosis" in table.stdout
    assert "Arachnodactyly" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hpo", "HP:0001250,HP:9999999"], "HP:9999999 is not in HPO release"),
        (["--hpo", "seizur"], "'seizur' is not the name of an HPO term (closest: Seizure"),
        (["--hpo", "HP:12"], "not an HPO id"),
        (["--hpo", ""], "at least one observed HPO term"),
    ],
)
def test_diagnose_bad_input_exits_2_with_a_clear_message(
    small_demo: Path, args: list[str], message: str
) -> None:
    done = alliance("diagnose", "--model", str(small_demo / "model.alliance"), *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_evaluate_bad_files(small_demo: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    done = alliance(
        "evaluate", "--model", str(small_demo / "model.alliance"), "--cases", str(empty)
    )
    assert done.returncode == 2
    assert str(empty) in done.stderr
    assert "Traceback" not in done.stderr
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(
        json.dumps({"id": "x", "observed": ["HP:0001250"], "disease_ids": ["OMIM:999999"]}) + "\n"
    )
    done = alliance(
        "evaluate", "--model", str(small_demo / "model.alliance"), "--cases", str(unknown)
    )
    assert done.returncode == 2
    assert "OMIM:999999" in done.stderr
    missing = alliance(
        "evaluate", "--model", str(tmp_path / "nope.alliance"), "--cases", str(unknown)
    )
    assert missing.returncode == 1
    assert "cannot read model file" in missing.stderr


def test_cohort_synth_writes_files_that_load(tmp_path: Path) -> None:
    done = alliance(
        "cohort", "synth", "--out", str(tmp_path), "--scale", "0.05", "--n-diseases", "30"
    )
    assert done.returncode == 0, done.stderr
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) == 24
    first = json.loads(files[0].read_text(encoding="utf-8").splitlines()[0])
    assert {"id", "observed", "excluded", "disease_ids", "sex", "age"} <= set(first)


def test_demo_rejects_an_unknown_strategy(tmp_path: Path) -> None:
    done = alliance("demo", "--out", str(tmp_path), "--strategy", "fedmagic")
    assert done.returncode == 2
    assert "unknown strategy 'fedmagic'" in done.stderr


@pytest.mark.skipif(not PHENOPACKET_STORE.exists(), reason="shared phenopacket-store file absent")
def test_evaluate_reads_the_real_phenopacket_store_file(small_demo: Path) -> None:
    done = alliance(
        "evaluate",
        "--model",
        str(small_demo / "model.alliance"),
        "--cases",
        str(PHENOPACKET_STORE),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["n"] >= 7500
    assert report["rejected"] > 0
