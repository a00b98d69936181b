"""The dashboard's data and page over HTTPS: the operator sees every hospital, a hospital its own.

A real coordinator server (mutual TLS, the project's own certificates, the dashboard's routes
added as ``alliance coordinator serve`` adds them) over the study of
:mod:`tests.integration.test_site_visibility`: a closed round of alpha and beta with
different figures, beta's refusal in the log, and an open round where alpha (3 cases), beta
(500) and gamma (40) have sent updates. alpha and beta have polled; gamma has not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from tests.integration.coordinator_https import Running, provision, serving
from tests.integration.test_site_visibility import _seed

from alliance.store.state import UpdateMeta
from alliance.web.dashboard_app import add_dashboard

CASES = {"alpha": 3, "beta": 500, "gamma": 40}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("dashboard")
    provision(root, ["alpha", "beta", "gamma"])
    with serving(root, pages=add_dashboard) as running:
        _seed(running)
        store = running.service.store
        for site, n in CASES.items():
            meta = UpdateMeta(site, f"nonce-{site}", "0" * 64, n, {}, 1)
            store.add_update("visible", 2, meta, {"w": np.zeros(3, np.float32)})
        for site in ("alpha", "beta"):
            with running.client(site) as c:
                assert c.get("/v1/messages/next", params={"wait": 0}).status_code == 204
        yield running


def _dashboard(server: Running, party: str) -> dict[str, Any]:
    with server.client(party) as c:
        response = c.get("/v1/dashboard")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    data: dict[str, Any] = response.json()
    return data


def test_the_operator_sees_every_hospital(server: Running) -> None:
    data = _dashboard(server, "operator")
    assert data["viewer"] == {"name": "operator", "role": "operator"}
    nodes = {n["id"]: n for n in data["network"]["nodes"]}
    assert {s: n["state"] for s, n in nodes.items()} == {
        "alpha": "online",
        "beta": "online",
        "gamma": "unseen",
    }
    # The quality report's rule: a small count hidden, and one more so it cannot be worked out.
    assert {s: n["cases"] for s, n in nodes.items()} == {"alpha": "<5", "beta": 500, "gamma": "*"}
    network = data["network"]
    assert (network["study"], network["round"]) == ("visible", 2)
    assert sorted(e["source"] for e in network["edges"]) == ["alpha", "beta", "gamma"]
    assert all(e["live"] and e["target"] == "coordinator" for e in network["edges"])
    assert all("weight" in e for e in network["edges"])
    (study,) = data["studies"]
    (point,) = study["accuracy"]
    assert point["sites"] == {"alpha": round(7 / 41, 4), "beta": round(313 / 977, 4)}
    assert point["top1"] == round(320 / 1018, 4)
    assert [r["message"] for r in data["privacy"]["refusals"]] == [
        "beta declined round 1: privacy budget of beta spent"
    ]
    assert data["audit"]["ok"] is True
    assert data["audit"]["entries"] >= 2


def test_a_hospital_sees_the_consortium_and_its_own_figures_only(server: Running) -> None:
    data = _dashboard(server, "alpha")
    assert data["viewer"] == {"name": "alpha", "role": "site"}
    nodes = {n["id"]: n for n in data["network"]["nodes"]}
    assert nodes["alpha"]["cases"] == "<5"
    assert nodes["alpha"]["state"] == "online"
    for other in ("beta", "gamma"):
        assert nodes[other] == {
            "id": other,
            "state": "member",
            "reason": None,
            "last_seen": None,
            "cases": None,
            "last_round": None,
        }
    assert [e["source"] for e in data["network"]["edges"]] == ["alpha"]
    assert data["privacy"]["refusals"] == []
    (point,) = data["studies"][0]["accuracy"]
    assert point["sites"] == {"alpha": round(7 / 41, 4)}
    assert point["top1"] == round(320 / 1018, 4)  # the consortium's pooled figure
    text = json.dumps(data)
    for figure in ("313", "977", "500", "0.875", "9.5", "privacy budget of beta"):
        assert figure not in text, figure
    assert "problems" not in data["audit"]


def test_the_page_and_its_files_come_from_the_coordinator_under_a_strict_policy(
    server: Running,
) -> None:
    with server.client("beta") as c:
        page = c.get("/dashboard")
        script = c.get("/dashboard/static/dashboard.js")
        chart = c.get("/dashboard/static/uplot.min.js")
        missing = c.get("/dashboard/static/secret.txt")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "http://" not in page.text
    assert "https://" not in page.text
    assert script.status_code == 200
    assert "/v1/dashboard" in script.text
    assert chart.status_code == 200
    assert "uPlot" in chart.text
    assert missing.status_code == 404
    assert missing.json()["error"] == "NotFoundError"


def test_the_dashboard_routes_are_in_the_openapi_spec(server: Running) -> None:
    with server.client("operator") as c:
        paths = c.get("/openapi.json").json()["paths"]
    assert {"/v1/dashboard", "/dashboard", "/dashboard/static/{name}"} <= set(paths)
