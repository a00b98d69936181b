"""The model comes home (alliance.site.homecoming, through the hospital core): a study end that
carries the final model and its signed card is verified before anything is kept; a verified model
is kept once in the hospital's ModelStore, with ``model_received`` in the audit log, and the
hospital answers with its evaluation of the model on its held-out cases; a tampered model or card,
or one for another study hash, is refused with a reason and nothing is kept (the end is not
recorded either, so a true copy is still accepted); a newer card revision for the same model
replaces the card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.unit.test_hospital import FED, SITE, STUDY, TEXT, cases, model, task
from torch import nn

from alliance.crypto import CertificateAuthority, Role, Signer, TrustStore
from alliance.crypto.verifier import MessageVerifier
from alliance.models.training import get_weights
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import FinalEvaluation, StudyEnd
from alliance.protocol.model_card import (
    ModelCard,
    canonical_json,
    case_counts,
    evaluation_summary,
    model_sha256,
    read_card,
    sign_card,
)
from alliance.protocol.study import spec_hash
from alliance.site.agent import Site
from alliance.site.hospital import ApprovedHashes, Cohort, Hospital
from alliance.site.model_store import ModelStore
from alliance.site.outcome import Action
from alliance.store.audit import AuditLog
from alliance.store.modelfile import study_model_file

VERSION = 2


@dataclass
class Home:
    hospital: Hospital
    audit: AuditLog
    models: ModelStore
    coordinator: Signer
    site_signer: Signer

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e.details for e in self.audit.entries() if e.event == name]


@pytest.fixture(scope="module")
def signers() -> tuple[Signer, Signer, TrustStore]:
    ca = CertificateAuthority.create(FED)
    coordinator = ca.issue(COORDINATOR, Role.COORDINATOR, hosts=("localhost",))
    site = ca.issue(SITE, Role.SITE)
    return (
        Signer(coordinator.signing_key, coordinator.certificate),
        Signer(site.signing_key, site.certificate),
        TrustStore(ca.certificate),
    )


@pytest.fixture
def home(tmp_path: Path, signers: tuple[Signer, Signer, TrustStore]) -> Home:
    coordinator, site_signer, trust = signers

    def cohort(spec: Any) -> Cohort:
        def build() -> Site:
            return Site(
                SITE, federation=FED, model=model(), train=cases(30), test=cases(12), link=None
            )

        return Cohort(30, 0, "cases.csv", build)

    audit = AuditLog(tmp_path / "audit.log", actor=SITE)
    models = ModelStore(tmp_path / "state")
    hospital = Hospital(
        SITE,
        federation=FED,
        policy=ApprovedHashes(
            [spec_hash(TEXT)], min_cohort=1, study_text={STUDY: TEXT}.__getitem__
        ),
        cohort=cohort,
        audit=audit,
        models=models,
        coordinator=MessageVerifier(trust, role=Role.COORDINATOR),
    )
    return Home(hospital, audit, models, coordinator, site_signer)


def final_model() -> bytes:
    trained: nn.Module = model()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)
    return study_model_file("linear", {"kind": "linear"}, get_weights(trained))


def card_for(data: bytes, *, revision: int = 1, study_hash: str | None = None) -> ModelCard:
    return ModelCard(
        study=STUDY,
        study_hash=study_hash or spec_hash(TEXT),
        federation=FED,
        version=VERSION,
        revision=revision,
        issued_at="2026-12-08T05:00:00+00:00",
        model_kind="linear",
        model={"kind": "linear"},
        hpo_version=None,
        catalogue={},
        strategy={"name": "fedavg"},
        rounds=2,
        hospitals=(SITE,),
        cases=case_counts({SITE: 30}),
        evaluation=evaluation_summary((SITE,), {}),
        privacy={},
        model_sha256=model_sha256(data),
        model_bytes=len(data),
    )


def end(model_bytes: bytes, card_bytes: bytes) -> Envelope:
    header = Header(MessageKind.STUDY_END, FED, STUDY, 0, COORDINATOR, SITE)
    return StudyEnd(header, VERSION, model_bytes, card_bytes).to_envelope()


def test_a_verified_model_is_kept_once_audited_and_evaluated(home: Home) -> None:
    home.hospital.handle(task())
    data = final_model()
    signed = sign_card(card_for(data), home.coordinator)
    outcome = home.hospital.handle(end(data, signed))
    assert outcome.action is Action.ENDED
    kept = home.models.get(STUDY, VERSION)
    assert kept is not None
    assert kept.model_path.read_bytes() == data
    assert kept.card_path.read_bytes() == signed
    (received,) = home.events("model_received")
    assert received == {
        "study": STUDY,
        "version": VERSION,
        "model_sha256": model_sha256(data),
        "card_revision": 1,
    }
    (reply,) = outcome.replies
    evaluation = FinalEvaluation.from_envelope(reply)
    assert (evaluation.header.sender, evaluation.header.recipient) == (SITE, COORDINATOR)
    assert evaluation.model_version == VERSION
    assert evaluation.metrics["eval_n"] == 12
    assert 0 <= evaluation.metrics["eval_top1"] <= evaluation.metrics["eval_top10"] <= 12
    # Told twice: one copy, one audit line, no second evaluation.
    again = home.hospital.handle(end(data, signed))
    assert (again.action, again.replies) == (Action.IGNORED, ())
    assert len(home.models.models()) == 1
    assert len(home.events("model_received")) == 1
    assert len(home.events("study_ended")) == 1


def test_a_newer_card_revision_replaces_the_card_of_the_same_model(home: Home) -> None:
    home.hospital.handle(task())
    data = final_model()
    home.hospital.handle(end(data, sign_card(card_for(data), home.coordinator)))
    newer = sign_card(card_for(data, revision=2), home.coordinator)
    home.hospital.handle(end(data, newer))
    kept = home.models.get(STUDY, VERSION)
    assert kept is not None
    assert read_card(kept.card_path.read_bytes())[0].revision == 2
    assert [e["card_revision"] for e in home.events("model_card_updated")] == [2]


def tampered_model(data: bytes, signed: bytes) -> tuple[bytes, bytes]:
    flipped = bytearray(data)
    flipped[-1] ^= 1
    return bytes(flipped), signed


def tampered_card(data: bytes, signed: bytes) -> tuple[bytes, bytes]:
    raw = json.loads(signed)
    raw["card"]["rounds"] = 99
    return data, canonical_json(raw)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (tampered_model, "model file hash"),
        (tampered_card, "model card signature refused"),
        ("other-study-hash", "the approved study is"),
        ("site-signed", "signed by 'site-a'"),
    ],
)
def test_a_tampered_or_foreign_model_is_refused_and_nothing_is_kept(
    home: Home, tamper: Any, reason: str
) -> None:
    home.hospital.handle(task())
    data = final_model()
    signed = sign_card(card_for(data), home.coordinator)
    if tamper == "other-study-hash":
        pair = data, sign_card(card_for(data, study_hash="sha256:" + "0" * 64), home.coordinator)
    elif tamper == "site-signed":
        raw = json.loads(signed)
        raw["signature"]["signer"] = SITE
        pair = data, canonical_json(raw)
    else:
        pair = tamper(data, signed)
    outcome = home.hospital.handle(end(*pair))
    assert (outcome.action, outcome.replies) == (Action.IGNORED, ())
    assert home.models.models() == []
    assert not (home.models.root / STUDY).exists() or not any((home.models.root / STUDY).iterdir())
    (refused,) = home.events("model_refused")
    assert reason in refused["reason"]
    assert home.events("study_ended") == []
    # The true copy is still accepted afterwards.
    assert home.hospital.handle(end(data, signed)).action is Action.ENDED
    assert len(home.models.models()) == 1


def test_a_study_end_without_a_model_only_records_the_end(home: Home) -> None:
    home.hospital.handle(task())
    header = Header(MessageKind.STUDY_END, FED, STUDY, 0, COORDINATOR, SITE)
    outcome = home.hospital.handle(StudyEnd(header, 0).to_envelope())
    assert (outcome.action, outcome.replies) == (Action.ENDED, ())
    assert home.models.models() == []


def test_simulated_hospitals_receive_verify_and_evaluate_the_final_model() -> None:
    """The simulation runs the same core: each hospital keeps the final model after verifying
    its card, and reports its evaluation of it (here a hospital on files, too)."""
    from alliance.sim.simulation import Simulation

    sites = {s: (cases(30).tensors) for s in ("a", "b", "c")}
    tests = {s: cases(12).tensors for s in ("a", "b", "c")}
    result = Simulation(model_fn=model, sites=sites, test=tests, rounds=2, offline=("c",)).run()
    assert set(result.final_evaluation) == {"a", "b", "c"}
    for counts in result.final_evaluation.values():
        assert counts["eval_n"] == 12
        assert 0 <= counts["eval_top1"] <= counts["eval_top10"] <= 12


def test_a_hospital_not_on_the_card_keeps_the_model_but_reports_no_evaluation(
    home: Home,
) -> None:
    home.hospital.handle(task())
    data = final_model()
    card = card_for(data)
    signed = sign_card(ModelCard(**{**card.to_json(), "hospitals": ("site-b",)}), home.coordinator)
    outcome = home.hospital.handle(end(data, signed))
    assert (outcome.action, outcome.replies) == (Action.ENDED, ())
    assert home.models.get(STUDY, VERSION) is not None
