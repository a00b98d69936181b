"""Each hospital's state on the dashboard's map.

A real in-memory store holds a study whose open round names five hospitals; the consortium's
real CA has revoked gamma's certificate, the one it last connected with. alpha polled just now,
beta long ago, delta exchanges files, epsilon was never heard from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization

from alliance.coordinator.dashboard import AuditWatch, Presence, dashboard_view
from alliance.crypto import CertificateAuthority, Role, TrustStore
from alliance.protocol.study import StudySpec
from alliance.store.audit import AuditLog
from alliance.store.memory import MemoryStore
from alliance.store.state import StudyRecord, StudyStatus

SITES = ["alpha", "beta", "gamma", "delta", "epsilon"]
STUDY = """[study]
id = "states"
rounds = 2
sites = ["alpha", "beta", "gamma", "delta", "epsilon"]
quorum = 2

[model]
kind = "phenotype-ranker"
dim = 8
"""
NOW = 1_800_000_000.0


def test_each_hospital_is_shown_in_the_state_that_applies_first(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("guardian")
    der = serialization.Encoding.DER
    gamma = ca.issue("gamma", Role.SITE).certificate.public_bytes(der)
    alpha = ca.issue("alpha", Role.SITE).certificate.public_bytes(der)
    ca.revoke("gamma")
    trust = TrustStore(ca.certificate, ca.crl())
    store = MemoryStore()
    spec = StudySpec.parse(STUDY)
    store.add_study(StudyRecord("states", STUDY, spec.hash, "operator", StudyStatus.RUNNING, NOW))
    store.save_initial_model("states", {"w": np.zeros(2, np.float32)}, {})
    store.open_round("states", 1, model_version=0, participants=SITES, deadline=NOW + 60)
    audit = AuditLog(tmp_path / "audit.log", actor="coordinator")
    audit.append("coordinator_started", federation="guardian")
    presence = Presence(
        now=NOW,
        alive_s=90.0,
        polled={"alpha": NOW - 1, "beta": NOW - 3600, "gamma": NOW - 5},
        files=frozenset({"delta"}),
        certificates={"alpha": alpha, "gamma": gamma},
    )
    view = dashboard_view(
        store,
        federation="guardian",
        presence=presence,
        trust=trust,
        audit=AuditWatch(audit.path),
        viewer=("operator", "operator"),
    )
    states = {n["id"]: (n["state"], n["last_seen"]) for n in view["network"]["nodes"]}
    assert states == {
        "alpha": ("online", NOW - 1),
        "beta": ("away", NOW - 3600),
        "gamma": ("revoked", NOW - 5),
        "delta": ("files", None),
        "epsilon": ("unseen", None),
    }
    assert view["network"]["round"] == 1
    assert view["network"]["edges"] == []
    assert view["audit"]["ok"] is True
    assert view["audit"]["entries"] == 1
