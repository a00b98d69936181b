"""``alliance demo``'s ``dashboard.html``: one self-contained file in the dashboard's data shape.

The metrics are shaped as ``alliance demo`` writes them (``metrics.json``, schema
``alliance.demo.metrics/1``), with a hospital of 3 training cases and one whose name tries to
end the page's script element.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from alliance.web.dashboard_static import demo_document, write_static_dashboard

HOSTILE = "evil</script><script>alert(1)</script>"


def demo_metrics() -> dict[str, Any]:
    sites = [("west-china", 900), ("tiny", 3), ("pumch", 400), (HOSTILE, 50)]
    return {
        "schema": "alliance.demo.metrics/1",
        "run": {"rounds": 2, "strategy": "fedavg"},
        "sites": [{"id": s, "name": s, "n_train": n, "n_test": 10} for s, n in sites],
        "rounds": [
            {
                "round": r,
                "top1": 0.1 * r,
                "top3": 0.2 * r,
                "top10": 0.3 * r,
                "n": 40,
                "train_loss": 3.0 - r,
            }
            for r in range(3)
        ],
        "privacy": [
            {
                "target_epsilon": 4.0,
                "delta": 1e-5,
                "secure_aggregation": True,
                "epsilon_spent": {"west-china": 3.9, "tiny": 4.0},
            }
        ],
    }


def test_the_document_has_the_dashboards_shape_with_small_counts_hidden() -> None:
    doc = demo_document(demo_metrics())
    nodes = {n["id"]: n for n in doc["network"]["nodes"]}
    assert {s: n["cases"] for s, n in nodes.items()} == {
        "west-china": 900,
        "tiny": "<5",
        "pumch": 400,
        HOSTILE: "*",
    }
    assert {n["state"] for n in nodes.values()} == {"simulated"}
    assert len(doc["network"]["edges"]) == 4
    (study,) = doc["studies"]
    assert (study["rounds_total"], study["rounds_closed"]) == (2, 2)
    assert [h["round"] for h in study["history"]] == [1, 2]
    assert [a["top1"] for a in study["accuracy"]] == [0.0, 0.1, 0.2]
    (private,) = doc["privacy"]["studies"]
    assert private["spent"]["tiny"] == {"epsilon": 4.0, "delta": 1e-5}
    assert doc["audit"]["ok"] is None


def test_the_page_is_one_file_that_loads_nothing(tmp_path: Path) -> None:
    path = write_static_dashboard(demo_metrics(), tmp_path / "dashboard.html")
    html = path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html), "a file or URL is referenced"
    assert "/dashboard/static/" not in html
    assert "uPlot" in html
    # The hostile name cannot end a script element: only the page's own scripts close.
    assert html.count("</script>") == 3
    embedded = re.search(
        r'<script type="application/json" id="dashboard-data">(.*?)</script>', html, re.S
    )
    assert embedded is not None
    assert json.loads(embedded[1]) == demo_document(demo_metrics())
    assert [p.name for p in tmp_path.iterdir()] == ["dashboard.html"]
