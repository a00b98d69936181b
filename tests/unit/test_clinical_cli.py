"""``alliance diagnose`` and ``evaluate`` at a hospital: its received model, its own files.

A hospital is a hand-written ``site.toml`` (the TLS files exist but are never read here), a
model store filled with :meth:`ModelStore.add` as the site agent fills it at a study's end, and
case files in the hospital's own format. The model is an untrained ranker (its scores are the
public disease profiles), saved with :func:`save_model` as ``alliance demo`` saves one.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from alliance.cli import common
from alliance.cli.app import app
from alliance.data.cases import Case, Sex
from alliance.data.chinese import chinese_label
from alliance.data.compact import write_jsonl
from alliance.data.ontology import DiseaseCatalogue, DiseaseSource, Ontology
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import PhenotypeRanker
from alliance.site.model_store import ModelStore
from alliance.site.received import RESEARCH_USE, card_notice
from alliance.store.modelfile import save_model

CARD: dict[str, Any] = {
    "card": {
        "study": "rare-2026",
        "intended_use": "Research use: ranking candidate rare diseases.",
        "not_intended_use": "Not a medical device. Not for making a diagnosis alone.",
        "revision": 2,
    },
    "signature": "not checked here",
}
SITE_TOML = """\
federation = "guardian"
site = "bch"
coordinator = "https://127.0.0.1:8443"

[tls]
certificate = "site.crt"
key = "site.key"
signing_key = "signing.key"
ca = "ca.crt"

[data]
train = "train.csv"
test = "test.csv"
mapping = "local_codes.csv"

[data.table]
layout = "finding"
id = "病历号"
code = "编码"
label = "名称"
sex = "性别"
age = "年龄"
encoding = "gbk"

[policy]
approved_studies = []

[state]
dir = "state"
"""


@pytest.fixture(autouse=True)
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 100-column terminal, as a clinician's."""
    monkeypatch.setattr(common, "console", Console(width=100))
    monkeypatch.setattr(common, "err", Console(width=400, stderr=True))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, features: PhenotypeFeatures) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.alliance"
    model = PhenotypeRanker(features, dim=8, seed=5)
    return save_model(path, model, features, sources=(DiseaseSource.OMIM,), min_phenotypes=3)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def column(table: str, header: str) -> list[str]:
    """Each row's text in the column ``header`` of a rich table (its lines joined)."""
    lines = [line for line in table.splitlines() if line.startswith(("┃", "│", "├", "└"))]
    index = [cell.strip() for cell in lines[0].split("┃")].index(header)
    rows: list[str] = []
    current: list[str] = []
    for line in lines[1:]:
        if line.startswith("│"):
            current.append(line.split("│")[index].strip())
        elif current:
            rows.append(" ".join(part for part in current if part))
            current = []
    return rows


def hospital(root: Path, model_file: Path | None) -> Path:
    """A hospital's folder: site.toml, and (when given) two received models, the newer last."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("site.crt", "site.key", "signing.key", "ca.crt", "train.csv", "test.csv"):
        (root / name).touch()
    (root / "local_codes.csv").write_text("code,target,label\n", encoding="utf-8")
    (root / "site.toml").write_text(SITE_TOML, encoding="utf-8")
    if model_file is not None:
        store = ModelStore(root / "state")
        older = store.add("zeta", 9, model_file.read_bytes(), b"{}")
        (older.folder / "received").write_text("2026-01-01T00:00:00+00:00")
        store.add("alpha", 3, model_file.read_bytes(), json.dumps(CARD).encode())
    return root / "site.toml"


def test_diagnose_with_the_newest_received_model_and_term_names(
    tmp_path: Path, model_file: Path
) -> None:
    site = hospital(tmp_path / "bch", model_file)
    code, out, _ = run(
        "diagnose", "--config", str(site), "--hpo", "Seizures, 全面发育迟缓, HP:0001252",
        "--excluded", "microcephaly", "--top", "5",
    )  # fmt: skip
    assert code == 0, out
    text = " ".join(out.split())
    # The newest by arrival (alpha, v3), not the highest study name or version (zeta, v9).
    assert "Model: study alpha, version 3, card revision 2" in text
    assert (
        "Research use: ranking candidate rare diseases. Not a medical device. Not for making a "
        "diagnosis alone." in text
    )
    assert (
        "Findings: Seizure (HP:0001250), Global developmental delay (HP:0001263), Hypotonia "
        "(HP:0001252)" in text
    )
    assert "Ruled out: Microcephaly (HP:0000252)" in text
    assert "Against" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_the_table_names_the_findings_against_each_candidate(
    model_file: Path, ontology: Ontology
) -> None:
    # Seizure and delay, hypospadias (outside most of their profiles), and "no abnormality of
    # the nervous system", which every epilepsy profile holds (as an ancestor of seizure).
    args = ["--hpo", "HP:0001250,HP:0001263,HP:0000047", "--excluded", "HP:0000707", "--top", "3"]
    code, out, _ = run("diagnose", "--model", str(model_file), *args, "--json")
    assert code == 0
    first = json.loads(out)[0]
    assert "HP:0000707" in first["against"]
    assert len(first["against"]) <= 3  # all shown, none counted as "more"
    code, table, _ = run("diagnose", "--model", str(model_file), *args)
    assert code == 0
    text = " ".join(table.split())
    shown = "; ".join(
        ontology.name(term) + (" (absent)" if term == "HP:0000707" else "")
        for term in first["against"]
    )  # names, not only ids
    assert column(table, "Against")[0] == shown
    assert "Model: model file" in text
    assert "not a medical device" in text
    assert max(len(line) for line in table.splitlines()) <= 100


def test_json_output_is_the_candidates_and_the_model_goes_to_stderr(
    tmp_path: Path, model_file: Path
) -> None:
    site = hospital(tmp_path / "bch", model_file)
    code, out, err = run("diagnose", "-c", str(site), "--hpo", "seizure", "--json", "--top", "4")
    assert code == 0
    from_store = json.loads(out)
    assert len(from_store) == 4
    assert "against" in from_store[0]
    assert "study alpha, version 3" in err
    code, out, _ = run("diagnose", "--model", str(model_file), "--hpo", "HP:0001250", "--json")
    assert json.loads(out)[:4] == from_store  # the same model, the same differential


def test_a_downloaded_model_shows_the_card_beside_it(tmp_path: Path, model_file: Path) -> None:
    downloaded = tmp_path / "rare.alliance"
    downloaded.write_bytes(model_file.read_bytes())
    card = {"card": {**CARD["card"], "revision": 5, "not_intended_use": "No clinical use."}}
    (tmp_path / "rare.card.json").write_text(json.dumps(card), encoding="utf-8")
    code, out, _ = run("diagnose", "--model", str(downloaded), "--hpo", "seizure", "--top", "1")
    text = " ".join(out.split())
    assert code == 0
    assert f"Model: model file {downloaded}, card revision 5" in text
    assert "ranking candidate rare diseases. No clinical use." in text


def test_no_model_received_yet_is_a_clear_error(tmp_path: Path) -> None:
    site = hospital(tmp_path / "bch", None)
    code, out, err = run("diagnose", "--config", str(site), "--hpo", "seizure")
    assert code == 1
    assert "this hospital has received no model yet" in err
    assert "study the hospital took part in finishes" in err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hpo", "seizure"], "give exactly one of --model FILE"),
        (["--hpo", "seizure", "--config", "SITE", "--model", "MODEL"], "both were given"),
    ],
)
def test_model_and_config_exactly_one(
    tmp_path: Path, model_file: Path, args: list[str], message: str
) -> None:
    site = hospital(tmp_path / "bch", model_file)
    args = [str(site) if a == "SITE" else str(model_file) if a == "MODEL" else a for a in args]
    code, _, err = run("diagnose", *args)
    assert code == 2
    assert message in err


def test_an_unknown_name_lists_candidates_and_exits_2(model_file: Path) -> None:
    code, _, err = run("diagnose", "--model", str(model_file), "--hpo", "seizur, HP:0001263")
    assert code == 2
    assert "--hpo: 'seizur' is not the name of an HPO term" in err
    assert "Seizure (HP:0001250)" in err
    assert "Traceback" not in err


# --- evaluate ----------------------------------------------------------------------------------


def _chinese_hospital(root: Path, model_file: Path, cases: dict[str, list[Case]]) -> Path:
    """The hospital's files: finding rows with Chinese headers saved as GBK (as Chinese Excel
    saves them), local codes, and the mapping table with the official Chinese labels."""
    site = hospital(root, model_file)
    terms = sorted({t for split in cases.values() for c in split for t in c.observed})
    local = {term: f"NEU-{n:04d}" for n, term in enumerate(terms, start=1)}
    with (root / "local_codes.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["code", "target", "label"])
        for term, code in local.items():
            writer.writerow([code, term, chinese_label(term) or ""])
    for name, split in cases.items():
        with (root / f"{name}.csv").open("w", encoding="gbk", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["病历号", "编码", "名称", "性别", "年龄"])
            for case in split:
                for term in case.observed:
                    writer.writerow([case.id, local[term], "", case.sex.value[0], "7"])
                for disease in case.disease_ids:
                    writer.writerow([case.id, disease, "", "", ""])
    return site


def _cases(catalogue: DiseaseCatalogue, start: int, n: int, prefix: str) -> list[Case]:
    out = []
    for i, disease in enumerate(catalogue.diseases[start : start + n]):
        observed = tuple(sorted(disease.phenotypes)[:3])
        out.append(Case(f"{prefix}{i}", observed, (), (disease.id,), Sex.FEMALE, 7.0))
    return out


def test_evaluate_reads_the_hospitals_chinese_csv_through_its_mapping_table(
    tmp_path: Path, model_file: Path, catalogue: DiseaseCatalogue, ontology: Ontology
) -> None:
    train = _cases(catalogue, 0, 4, "t")
    test = _cases(catalogue, 10, 6, "h")
    refused = [
        Case("x1", test[0].observed, (), ("OMIM:999999",), Sex.MALE, 7.0),  # not in catalogue
        Case("x2", test[1].observed, (), (), Sex.MALE, 7.0),  # no diagnosis
    ]
    site = _chinese_hospital(
        tmp_path / "bch", model_file, {"train": train, "test": [*test, *refused]}
    )
    code, out, err = run("evaluate", "--config", str(site), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["cases"] == "held-out"
    assert report["n"] == 6
    assert report["rejected"] == 2
    assert report["rejected_by_reason"] == {"unmapped diagnosis": 1, "no diagnosis": 1}
    assert report["model"]["study"] == "alpha"
    assert report["model"]["version"] == 3
    # The same cases written with HPO ids score the same: the local codes were mapped.
    plain = tmp_path / "plain.jsonl"
    write_jsonl(test, plain)
    code, out, _ = run("evaluate", "--model", str(model_file), "--cases", str(plain), "--json")
    direct = json.loads(out)
    assert (direct["n"], direct["top1"], direct["top10"]) == (6, report["top1"], report["top10"])

    code, out, _ = run("evaluate", "--config", str(site), "--on", "all")
    text = " ".join(out.split())
    assert code == 0
    assert "10 cases ranked (2 rejected: unmapped diagnosis 1, no diagnosis 1)" in text
    assert "training cases included" in text


def test_evaluate_without_held_out_cases_says_how_to_choose(
    tmp_path: Path, model_file: Path
) -> None:
    site = hospital(tmp_path / "bch", model_file)
    site.write_text(site.read_text().replace('test = "test.csv"\n', ""), encoding="utf-8")
    code, _, err = run("evaluate", "--config", str(site))
    assert code == 2
    assert "[data] test names no held-out cases" in err
    assert "--on all" in err


def test_evaluate_needs_its_cases_from_one_place(tmp_path: Path, model_file: Path) -> None:
    site = hospital(tmp_path / "bch", model_file)
    code, _, err = run("evaluate", "--config", str(site), "--cases", str(site))
    assert code == 2
    assert "not both" in err
    code, _, err = run("evaluate", "--model", str(model_file))
    assert code == 2
    assert "give the cases" in err


def test_a_card_without_a_readable_notice_gets_the_standard_one(tmp_path: Path) -> None:
    card = tmp_path / "card.json"
    for text in ("not json", "[1, 2]", json.dumps({"notice": 3})):
        card.write_text(text, encoding="utf-8")
        assert card_notice(card) == (RESEARCH_USE, None)
    card.write_text(json.dumps({"notice": "Research only.", "revision": 4}), encoding="utf-8")
    assert card_notice(card) == ("Research only", 4)
