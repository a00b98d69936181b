"""The HTML run report: self-contained, escaped, and tolerant of optional sections."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread

from alliance.core.errors import DataError
from alliance.evaluation.report import render_report, write_report

FIXTURE = Path(__file__).parents[1] / "fixtures" / "demo_metrics_example.json"
PNG_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture
def metrics() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return loaded


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(data, validate=True) for data in PNG_URI.findall(html)]


def test_fixture_report_names_every_hospital(metrics: dict[str, Any]) -> None:
    html = render_report(metrics)

    assert html.startswith("<!DOCTYPE html>")
    assert "Guardian Alliance — federated rare-disease diagnosis" in html
    for site in metrics["sites"]:
        assert site["name"] in html
        assert site["city"] in html


def test_fixture_report_embeds_three_valid_pngs(metrics: dict[str, Any]) -> None:
    images = _pngs(render_report(metrics))

    assert len(images) == 3
    for data in images:
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        pixels = imread(io.BytesIO(data), format="png")
        assert pixels.ndim == 3
        assert pixels.shape[0] > 100
        assert pixels.shape[1] > 100


def test_report_references_nothing_outside_itself(metrics: dict[str, Any]) -> None:
    html = render_report(metrics)

    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE)
    assert "http://" not in html
    assert "https://" not in html
    assert "@import" not in html
    assert "url(" not in html
    assert "<link" not in html
    assert "<script" not in html


def test_headline_compares_federated_with_best_hospital_and_pooled(
    metrics: dict[str, Any],
) -> None:
    html = render_report(metrics)

    headline = re.search(r'<p class="headline">(.*?)</p>', html, re.DOTALL)
    assert headline is not None
    text = " ".join(re.sub(r"<[^>]+>", "", headline.group(1)).split())
    assert text == (
        "Federated top-10 accuracy: 88.0% — 25.0 points above the best single hospital "
        "(West China Hospital, 63.0%) and 2.0 points below pooling all data in one place (90.0%)."
    )


def test_tables_show_percentages_with_one_decimal_and_sections(metrics: dict[str, Any]) -> None:
    html = render_report(metrics)

    for value in ("21.0%", "88.0%", "90.0%", "45.0%", "92.0%"):
        assert value in html
    assert "Best single hospital (West China Hospital)" in html
    assert metrics["single_site_diseases"]["description"] in html
    assert metrics["unseen_diseases"]["description"] in html
    assert "Other hospitals&#39; own models (mean)" in html


def test_hospitals_are_listed_by_training_size(metrics: dict[str, Any]) -> None:
    metrics["sites"].reverse()

    html = render_report(metrics)

    table = html[html.index("<h2>Every hospital</h2>") :]
    positions = [table.index(site["name"]) for site in metrics["sites"]]
    assert positions == sorted(positions, reverse=True)


def test_hostile_strings_are_escaped(metrics: dict[str, Any]) -> None:
    metrics["sites"][0]["name"] = HOSTILE
    metrics["sites"][1]["city"] = HOSTILE
    metrics["run"]["data"] = HOSTILE
    metrics["run"]["attribution"] = HOSTILE
    metrics["unseen_diseases"]["description"] = HOSTILE
    metrics["unseen_diseases"]['"><b>'] = {"top1": 0.1, "top3": 0.2, "top10": 0.3, "n": 5}

    html = render_report(metrics)

    assert "<script" not in html
    assert '"><b>' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_attribution_is_shown_when_set(metrics: dict[str, Any]) -> None:
    metrics["run"]["attribution"] = "phenopacket-store, CC BY 4.0"

    html = render_report(metrics)

    assert '<p class="attribution"><strong>Data attribution:</strong> phenopacket-store' in html


@pytest.mark.parametrize("how", ["absent", "null"])
def test_optional_sections_may_be_missing(metrics: dict[str, Any], how: str) -> None:
    for key in ("single_site_diseases", "unseen_diseases", "local_on_union"):
        if how == "absent":
            del metrics[key]
        else:
            metrics[key] = None
    for key in ("privacy", "attribution"):
        if how == "absent":
            del metrics["run"][key]
        else:
            metrics["run"][key] = None
    for entry in metrics["rounds"]:
        del entry["train_loss"]

    html = render_report(metrics)

    assert len(_pngs(html)) == 2
    assert "own model on all test cases" not in html
    assert "Diseases seen at only one hospital" not in html
    assert "Diseases no hospital has trained on" not in html
    assert 'class="attribution"' not in html


def test_sparse_run_renders(metrics: dict[str, Any]) -> None:
    metrics["rounds"] = []
    metrics["overall"] = {"federated": {"top1": 0.5, "top3": 0.6, "top10": 0.7, "n": 10}}
    metrics["per_site"] = {}

    html = render_report(metrics)

    assert "No rounds were recorded." in html
    assert "Federated top-10 accuracy: <strong" in html
    assert len(_pngs(html)) == 2


def test_chinese_hospital_names_render_without_warnings(metrics: dict[str, Any]) -> None:
    metrics["sites"][0]["name"] = "四川大学华西医院"
    metrics["sites"][1]["name"] = "北京协和医院"

    html = render_report(metrics)

    assert "四川大学华西医院" in html
    assert len(_pngs(html)) == 3


def test_privacy_settings_are_listed(metrics: dict[str, Any]) -> None:
    metrics["run"]["privacy"] = {"epsilon": 3.0, "delta": 1e-5}

    assert "epsilon: 3.0, delta: 1e-05" in render_report(metrics)


def test_other_schema_is_refused(metrics: dict[str, Any]) -> None:
    metrics["schema"] = "alliance.demo.metrics/2"

    with pytest.raises(DataError, match=r"alliance\.demo\.metrics/1"):
        render_report(metrics)


def test_non_numeric_score_is_refused(metrics: dict[str, Any]) -> None:
    metrics["overall"]["federated"]["top10"] = "high"

    with pytest.raises(DataError, match="top10"):
        render_report(metrics)


def test_write_report_writes_the_file(metrics: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"

    written = write_report(metrics, target)

    assert written == target
    assert target.read_text(encoding="utf-8") == render_report(metrics)
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]


def test_write_report_keeps_the_old_file_when_rendering_fails(
    metrics: dict[str, Any], tmp_path: Path
) -> None:
    target = write_report(metrics, tmp_path / "report.html")
    before = target.read_bytes()
    broken = copy.deepcopy(metrics)
    broken["schema"] = None

    with pytest.raises(DataError):
        write_report(broken, target)

    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_private_runs_are_tabled_next_to_the_non_private_one(metrics: dict[str, Any]) -> None:
    assert "Privacy and accuracy" not in render_report(metrics)
    metrics["privacy"] = [
        {
            "target_epsilon": eps,
            "delta": 1e-5,
            "overall": {"top1": 0.1 * i, "top3": 0.2, "top10": 0.3 + 0.1 * i, "n": 500},
            "epsilon_spent": {"a": eps * 0.99, "b": eps * 0.97},
        }
        for i, eps in enumerate((1.0, 3.0, 8.0))
    ]
    html = render_report(metrics)
    assert "Privacy and accuracy" in html
    section = html[html.index("Privacy and accuracy") : html.index("Learning over the rounds")]
    assert section.count("<tr class=") == 4  # no DP, then ε = 1, 3, 8
    for eps, spent in (("1", "0.99"), ("3", "2.97"), ("8", "7.92")):
        assert f"ε = {eps}, δ = 1e-05" in section
        assert f">{spent}<" in section
    assert ">50.0%<" in section  # ε = 8: top-10 0.5
    metrics["privacy"] = ["not a run"]
    with pytest.raises(DataError, match=r"privacy\[0\]"):
        render_report(metrics)


def test_how_each_hospital_keeps_its_data_is_shown_when_recorded(
    metrics: dict[str, Any],
) -> None:
    assert "How each hospital keeps its data" not in render_report(metrics)
    site = metrics["sites"][0]["id"]
    metrics["site_files"] = [
        {
            "site": site,
            "format": "FHIR R4 Bundle, <local> codes",
            "cases_read": {"train": 1117, "test": 383},
            "rejected": 0,
        }
    ]
    html = render_report(metrics)
    assert "How each hospital keeps its data" in html
    assert "FHIR R4 Bundle, &lt;local&gt; codes" in html
    assert "1,117" in html
    metrics["site_files"] = [{"site": site, "format": "x"}]
    with pytest.raises(DataError, match="cases_read"):
        render_report(metrics)


def test_hospitals_on_files_are_compared_with_the_all_online_run(
    metrics: dict[str, Any],
) -> None:
    assert "Hospitals without a network connection" not in render_report(metrics)
    site = metrics["sites"][-1]["id"]
    metrics["offline"] = {
        "sites": [site],
        "overall": metrics["overall"]["federated"],
        "same_weights_as_online": True,
        "bundle_bytes": {site: 2_500_000},
    }
    html = render_report(metrics)
    assert "Hospitals without a network connection" in html
    assert "the very same model" in html
    assert "2.5 MB" in html
    metrics["offline"]["sites"] = []
    with pytest.raises(DataError, match=r"offline\.sites"):
        render_report(metrics)
