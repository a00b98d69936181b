"""What each hospital may read of a study over HTTPS: aggregates and its own figures only.

A real coordinator server (mutual TLS, the project's own certificates) over a real SQLite store
holding a study with a closed round of two hospitals, whose per-site figures differ, and a log
that names both. An operator reads everything; each site reads the consortium's aggregates and
its own figures, and no figure or log line of the other site.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from tests.integration.coordinator_https import Running, provision, serving

from alliance.coordinator.rounds import RoundRecord
from alliance.protocol.study import StudySpec
from alliance.store.state import StoredEvent, StudyRecord, StudyStatus

STUDY = """[study]
id = "visible"
rounds = 2
sites = ["alpha", "beta", "gamma"]
quorum = 2

[model]
kind = "phenotype-ranker"
dim = 8
"""
#: Figures only beta produced: none of them may reach alpha.
BETA = {"eval_n": 977.0, "eval_top1": 313.0, "eval_top3": 531.0, "eval_top10": 787.0}
ALPHA = {"eval_n": 41.0, "eval_top1": 7.0, "eval_top3": 11.0, "eval_top10": 19.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("visibility")
    provision(root, ["alpha", "beta", "gamma"])
    with serving(root) as running:
        _seed(running)
        yield running


def _seed(running: Running) -> None:
    store, spec = running.service.store, StudySpec.parse(STUDY)
    now = time.time()
    store.add_study(
        StudyRecord(spec.study_id, STUDY, spec.hash, "operator", StudyStatus.RUNNING, now)
    )
    weights = {"w": np.zeros(3, np.float32)}
    store.save_initial_model(spec.study_id, weights, {})
    store.open_round(spec.study_id, 1, model_version=0, participants=["alpha", "beta"], deadline=0)
    record = RoundRecord(
        round=1,
        model_version=1,
        sites=("alpha", "beta"),
        num_examples=1018,
        train_loss=0.75,
        site_metrics={"alpha": {**ALPHA, "train_loss": 0.25}, "beta": {**BETA, "train_loss": 9.5}},
        staleness={"alpha": 0, "beta": 3},
        shares={"alpha": 0.125, "beta": 0.875},
    )
    store.close_round(
        spec.study_id,
        1,
        new_version=1,
        weights=weights,
        strategy_state={},
        summary=record.to_json(),
    )
    store.open_round(
        spec.study_id, 2, model_version=1, participants=["alpha", "beta", "gamma"], deadline=now
    )
    for kind, message in [
        ("round_opened", "round 1 opened for 2 sites"),
        ("update_rejected", "beta: update of 4242 bytes has a bad signature"),
        ("site_refused", "beta declined round 1: privacy budget of beta spent"),
        ("update_rejected", "alpha round 1: nonce reused"),
        ("round_closed", "round 1 closed with 2 of 2 sites (1018 cases), model version 1"),
        ("round_waiting", "quorum not met; still waiting for beta, gamma"),
    ]:
        store.add_event(StoredEvent(spec.study_id, now, kind, message))


def _get(server: Running, party: str, path: str) -> Any:
    with server.client(party) as c:
        response = c.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_operator_reads_every_sites_figures(server: Running) -> None:
    status = _get(server, "operator", "/v1/studies/visible")
    assert set(status["history"][0]["site_metrics"]) == {"alpha", "beta"}
    assert status["open_round"]["participants"] == ["alpha", "beta", "gamma"]
    logs = _get(server, "operator", "/v1/studies/visible/logs")
    assert len(logs) == 6


def test_a_site_reads_aggregates_and_its_own_figures_only(server: Running) -> None:
    status = _get(server, "alpha", "/v1/studies/visible")
    text = json.dumps(status)
    assert "beta" not in text
    assert "gamma" not in text
    for value in (*BETA.values(), 9.5, 0.875):
        assert str(value) not in text, value
    (closed,) = status["history"]
    assert closed["site_metrics"] == {"alpha": {**ALPHA, "train_loss": 0.25}}
    assert closed["staleness"] == {"alpha": 0}
    assert closed["shares"] == {"alpha": 0.125}
    assert closed["sites"] == ["alpha"]
    # The consortium's figures: cases, mean loss, contributors, pooled top-k.
    assert (closed["num_examples"], closed["train_loss"], closed["contributors"]) == (
        1018,
        0.75,
        2,
    )
    assert closed["evaluation"]["n"] == 1018
    assert status["open_round"]["participants"] == ["alpha"]
    assert status["open_round"]["participant_count"] == 3
    assert _get(server, "gamma", "/v1/studies/visible")["history"][0]["site_metrics"] == {}


def test_a_site_reads_the_consortiums_log_lines_and_its_own(server: Running) -> None:
    alpha = _get(server, "alpha", "/v1/studies/visible/logs")
    assert "beta" not in json.dumps(alpha)
    assert [line["kind"] for line in alpha] == [
        "round_opened",
        "update_rejected",
        "round_closed",
        "round_waiting",
    ]
    assert alpha[1]["message"] == "alpha round 1: nonce reused"
    beta = _get(server, "beta", "/v1/studies/visible/logs")
    assert "alpha" not in json.dumps(beta)
    assert [line["kind"] for line in beta][:3] == [
        "round_opened",
        "update_rejected",
        "site_refused",
    ]
    # Paging by sequence number still works on the filtered lines.
    last = alpha[1]["seq"]
    assert [
        line["seq"] for line in _get(server, "alpha", f"/v1/studies/visible/logs?after={last}")
    ] == [
        alpha[2]["seq"],
        alpha[3]["seq"],
    ]
