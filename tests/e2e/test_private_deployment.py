"""Differential privacy and secure aggregation deployed for real (processes, mutual TLS).

Six hospitals run a study with patient-level DP-SGD (target ε per study) and secure
aggregation over HTTPS. One hospital's privacy officer set a budget the study does not fit in:
it declines every round and the coordinator learns only "budget". Then the test inspects what
the coordinator kept: no site's update is in its database (only models and the round summaries
of the sum), every message it accepted from a site was a stage of the secure protocol, and each
hospital's ledger and audit log show what its patients were exposed to.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.deployment import Deployment, approve, provision, study_text
from typer.testing import CliRunner

from alliance.cli.app import app

pytestmark = pytest.mark.slow

SITES = ("bch", "pumch", "west-china", "ruijin", "xiangya", "qilu")
TIGHT = "qilu"
PRIVATE = """
[privacy]
mechanism = "dp-sgd"
target_epsilon = 4.0
delta = 1e-5
max_grad_norm = 1.0

[secure_aggregation]
threshold = 4
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = provision(tmp_path_factory.mktemp("private"))
    yield d
    d.stop()


def _set_budget(d: Deployment, site: str, epsilon: float) -> None:
    path = d.site_dir(site) / "site.toml"
    body = path.read_text()
    assert "budget_epsilon = 8.0" in body
    path.write_text(body.replace("budget_epsilon = 8.0", f"budget_epsilon = {epsilon}"))


def test_private_secure_study_over_https(deployment: Deployment) -> None:
    d = deployment
    text = study_text("private", SITES, rounds=2, quorum=4, timeout_s=120, extra=PRIVATE)
    approve(d, text)
    _set_budget(d, TIGHT, 1.0)
    d.start_coordinator()
    d.submit(text)
    d.site_procs = {}
    for site in SITES:
        d.start_site(site)
    d.wait_sites(600)
    status = d.status("private")
    assert status["status"] == "finished", status
    assert status["privacy"]["patient_level"] == "dp-sgd"
    assert status["privacy"]["secure_aggregation"] is True
    trained = [s for s in SITES if s != TIGHT]
    assert [sorted(r["sites"]) for r in status["history"]] == [sorted(trained)] * 2
    # The round summaries hold the pooled sum, not per-site metrics.
    for record in status["history"]:
        assert list(record["site_metrics"]) == ["secure-sum"]

    # The coordinator learned only "budget" about the declining hospital.
    coordinator_log = [
        json.loads(line) for line in (d.coordinator_dir / "audit.log").read_text().splitlines()
    ]
    refusals = [e for e in coordinator_log if e["event"] == "round_refused"]
    assert {e["details"]["site"] for e in refusals} == {TIGHT}
    assert {e["details"]["reason"] for e in refusals} == {"budget"}
    received = [e for e in coordinator_log if e["event"] in ("update_received", "secagg_received")]
    assert received
    assert all(e["event"] == "secagg_received" for e in received)

    # Nothing the coordinator stored is a site's update: no update rows, no update blobs.
    db = sqlite3.connect(d.coordinator_dir / "coordinator.db")
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        update_tables = [t for t in tables if "update" in t]
        assert update_tables
        for table in update_tables:
            assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
    finally:
        db.close()

    # Each hospital's own records: the ledger, the audit log, and `alliance site budget`.
    runner = CliRunner()
    for site in SITES:
        config = d.site_dir(site) / "site.toml"
        result = runner.invoke(app, ["site", "budget", "--config", str(config), "--json"])
        assert result.exit_code == 0, result.output
        budget = json.loads(result.output)
        log = [
            json.loads(line)
            for line in (d.site_dir(site) / "state" / "audit.log").read_text().splitlines()
        ]
        events = [e["event"] for e in log]
        if site == TIGHT:
            assert budget["spent"]["epsilon"] == 0.0
            assert events.count("round_declined") == 2
            assert events.count("refusal_sent") == 2
            assert "secagg_sent" not in events
        else:
            assert 3.0 < budget["spent"]["epsilon"] <= 4.0
            assert budget["studies"] == [
                {"study": "private", "rounds": 2, "epsilon": budget["spent"]["epsilon"]}
            ]
            assert events.count("privacy_charged") == 2
            assert "update_sent" not in events
            stages = [e["details"]["stage"] for e in log if e["event"] == "secagg_sent"]
            assert stages.count("masked") == 2
            assert stages.count("unmask_out") == 2
    table = runner.invoke(app, ["site", "budget", "--config", str(d.site_dir("bch") / "site.toml")])
    assert "private" in table.output
    assert "remaining" in table.output
    assert Path(d.site_dir("bch") / "state" / "privacy.ledger").exists()
