"""The dashboard as one static file, from ``alliance demo``'s run: ``dashboard.html``.

A researcher without a deployment sees the same views as the coordinator's dashboard
(:mod:`alliance.web.dashboard_app`): the page's script and style and the chart library are
inlined, and the data, in the very shape of ``GET /v1/dashboard``, is embedded as JSON, which
the script draws once instead of polling. The file loads nothing from anywhere.

:func:`demo_document` builds that data from the demo's ``metrics.json``: every hospital a node
(state ``simulated``, sized by its training cases, suppressed as the quality report does), the
federated study's rounds and pooled accuracy, and each private run (one per target ε) with the
ε each hospital spent. A simulation has no coordinator audit log and no model registry: those
views say so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alliance.core.files import write_atomically
from alliance.data.quality import protect
from alliance.web.dashboard_app import dashboard_asset

__all__ = ["demo_document", "write_static_dashboard"]

MIN_CASES = 5
_STUDY = "demo"


def demo_document(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The dashboard's data (``GET /v1/dashboard``'s shape) for a demo's ``metrics``."""
    sites = [s["id"] for s in metrics["sites"]]
    cases = [int(s["n_train"]) for s in metrics["sites"]]
    run = metrics.get("run", {})
    rounds = list(metrics.get("rounds", ()))
    shown = protect(cases, MIN_CASES)
    total = int(run.get("rounds", max(len(rounds) - 1, 0)))
    last = total or None
    # The demo records one evaluation per model version (0 = the initial model) and the
    # training loss of the round that started from it: round k trains version k - 1.
    history = [
        {
            "round": r["round"] + 1,
            "model_version": r["round"] + 1,
            "sites": sites,
            "contributors": len(sites),
            "num_examples": sum(cases),
            "train_loss": r.get("train_loss"),
            "site_metrics": {},
        }
        for r in rounds
        if r["round"] < total
    ]
    accuracy = [
        {
            "round": r["round"],
            "evaluated_version": r["round"],
            "top1": r.get("top1"),
            "top3": r.get("top3"),
            "sites": {},
        }
        for r in rounds
    ]
    privacy_runs = list(metrics.get("privacy") or ())
    return {
        "federation": "alliance demo (simulation)",
        "viewer": {"name": "demo", "role": "operator"},
        "generated_at": None,
        "network": {
            "coordinator": "coordinator",
            "study": _STUDY,
            "round": last,
            "nodes": [
                {
                    "id": s,
                    "state": "simulated",
                    "reason": None,
                    "last_seen": None,
                    "cases": n,
                    "last_round": last,
                }
                for s, n in zip(sites, shown, strict=True)
            ],
            "edges": [
                {"source": s, "target": "coordinator", "round": last, "live": False, "weight": None}
                for s in sites
            ]
            if last is not None
            else [],
        },
        "studies": [
            {
                "study": _STUDY,
                "title": f"alliance demo: {run.get('strategy', 'federated')}, "
                f"{len(sites)} hospitals",
                "status": "finished",
                "rounds_total": total,
                "rounds_closed": len(history),
                "open_round": None,
                "history": history,
                "rejections": 0,
                "error": None,
                "privacy": None,
                "accuracy": accuracy,
            }
        ],
        "privacy": {
            "studies": [_private_run(p) for p in privacy_runs],
            "refusals": [],
        },
        "models": [],
        "audit": {"ok": None, "entries": 0},
    }


def _private_run(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "study": f"{_STUDY} at ε = {run['target_epsilon']:g}",
        "promise": {
            "patient_level": "dp-sgd",
            "target_epsilon": run["target_epsilon"],
            "delta": run["delta"],
            "secure_aggregation": run.get("secure_aggregation", False),
            "client_level_epsilon": None,
        },
        "spent": {
            s: {"epsilon": e, "delta": run["delta"]} for s, e in run["epsilon_spent"].items()
        },
    }


def write_static_dashboard(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``dashboard.html`` for a demo's ``metrics`` at ``path`` (atomically)."""
    page = dashboard_asset("dashboard.html")
    for name in ("uplot.min.css", "dashboard.css"):
        tag = f'<link rel="stylesheet" href="/dashboard/static/{name}">'
        page = page.replace(tag, f"<style>\n{dashboard_asset(name)}\n</style>")
    scripts = []
    for name in ("uplot.min.js", "dashboard.js"):
        page = page.replace(f'<script src="/dashboard/static/{name}" defer></script>\n', "")
        scripts.append(f"<script>\n{_inline(dashboard_asset(name))}\n</script>")
    data = _inline(json.dumps(demo_document(metrics), ensure_ascii=False))
    embedded = f'<script type="application/json" id="dashboard-data">{data}</script>'
    page = page.replace("</body>", "\n".join([embedded, *scripts, "</body>"]))
    target = Path(path)
    write_atomically(target, page.encode("utf-8"))
    return target


def _inline(text: str) -> str:
    # Inside <script>, only "</" can end the element early; "<\/" means the same to JS/JSON.
    return text.replace("</", "<\\/")
