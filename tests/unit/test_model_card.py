"""The model card (alliance.protocol.model_card): canonical bytes, the coordinator's signature,
and every refusal of :func:`verify_card`: a tampered model byte, a tampered card field, another
study hash, another signer, another study or version. Small counts are suppressed with the
quality report's rule.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest

from alliance.core.errors import IntegrityError, ProtocolError
from alliance.crypto import CertificateAuthority, IssuedParty, Role, Signer, TrustStore
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.model_card import (
    NOT_INTENDED_USE,
    UNDISCLOSED,
    EvaluationCounts,
    ModelCard,
    canonical_json,
    case_counts,
    evaluation_summary,
    model_sha256,
    read_card,
    sign_card,
    verify_card,
)

HASH = "sha256:" + "ab" * 32
MODEL = b"GALM model bytes" * 100


@dataclass(frozen=True)
class Parties:
    trust: TrustStore
    coordinator: Signer
    site: Signer
    rogue_coordinator: Signer  # "coordinator", certified by another CA


def _signer(party: IssuedParty) -> Signer:
    return Signer(party.signing_key, party.certificate)


@pytest.fixture(scope="module")
def parties() -> Parties:
    ca = CertificateAuthority.create("card-test")
    rogue = CertificateAuthority.create("card-test").issue(
        "coordinator", Role.COORDINATOR, hosts=["localhost"]
    )
    return Parties(
        TrustStore(ca.certificate, ca.crl()),
        _signer(ca.issue("coordinator", Role.COORDINATOR, hosts=["localhost"])),
        _signer(ca.issue("site-a", Role.SITE)),
        _signer(rogue),
    )


@pytest.fixture(scope="module")
def coordinator_key(parties: Parties) -> MessageVerifier:
    return MessageVerifier(parties.trust, role=Role.COORDINATOR)


def card(model: bytes = MODEL, **changes: Any) -> ModelCard:
    hospitals = ("site-a", "site-b")
    fields: dict[str, Any] = {
        "study": "study-1",
        "study_hash": HASH,
        "federation": "fed",
        "version": 3,
        "revision": 1,
        "issued_at": "2026-12-08T05:00:00+00:00",
        "model_kind": "phenotype-ranker",
        "model": {"kind": "phenotype-ranker", "dim": 8},
        "hpo_version": "2025-11-24",
        "catalogue": {"sources": ["OMIM"], "min_phenotypes": 3},
        "strategy": {"name": "fedavg"},
        "rounds": 3,
        "hospitals": hospitals,
        "cases": case_counts({"site-a": 40, "site-b": 12}),
        "evaluation": evaluation_summary(hospitals, {}),
        "privacy": {},
        "model_sha256": model_sha256(model),
        "model_bytes": len(model),
    }
    fields.update(changes)
    return ModelCard(**fields)


def test_canonical_json_is_stable_and_round_trips() -> None:
    c = card()
    assert c.canonical() == card().canonical()
    assert c.canonical() == canonical_json(json.loads(c.canonical()))
    assert ModelCard.from_json(json.loads(c.canonical())) == c
    assert b" " not in canonical_json({"b": 1, "a": [1, 2]})
    assert canonical_json({"b": 1, "a": 2}) == b'{"a":2,"b":1}'
    assert "Not a medical device" in NOT_INTENDED_USE


def test_a_signed_card_verifies(parties: Parties, coordinator_key: MessageVerifier) -> None:
    data = sign_card(card(), parties.coordinator)
    got = verify_card(data, MODEL, coordinator_key, HASH, study="study-1", version=3)
    assert got == card()
    assert read_card(data)[0] == card()


def test_a_tampered_model_byte_is_refused(
    parties: Parties, coordinator_key: MessageVerifier
) -> None:
    data = sign_card(card(), parties.coordinator)
    tampered = bytearray(MODEL)
    tampered[10] ^= 1
    with pytest.raises(IntegrityError, match=r"model file hash .* differs from the card"):
        verify_card(data, bytes(tampered), coordinator_key, HASH)


def test_a_tampered_card_field_is_refused(
    parties: Parties, coordinator_key: MessageVerifier
) -> None:
    raw = json.loads(sign_card(card(), parties.coordinator))
    raw["card"]["cases"]["total"] = 5000
    with pytest.raises(IntegrityError, match="model card signature refused"):
        verify_card(canonical_json(raw), MODEL, coordinator_key, HASH)


def test_another_study_hash_study_or_version_is_refused(
    parties: Parties, coordinator_key: MessageVerifier
) -> None:
    data = sign_card(card(), parties.coordinator)
    with pytest.raises(IntegrityError, match=r"study hash .* the approved study is sha256:cd"):
        verify_card(data, MODEL, coordinator_key, "sha256:" + "cd" * 32)
    with pytest.raises(IntegrityError, match="for study 'study-1', expected 'study-2'"):
        verify_card(data, MODEL, coordinator_key, HASH, study="study-2")
    with pytest.raises(IntegrityError, match="model version 3, expected version 4"):
        verify_card(data, MODEL, coordinator_key, HASH, version=4)


def test_a_card_signed_by_anyone_but_the_coordinator_is_refused(
    parties: Parties, coordinator_key: MessageVerifier
) -> None:
    with pytest.raises(ProtocolError, match="only the coordinator signs"):
        sign_card(card(), parties.site)
    # A site's key under the coordinator's name: the trust store refuses the role.
    raw = json.loads(sign_card(card(), parties.coordinator))
    raw["signature"]["certificate"] = base64.b64encode(parties.site.certificate_der).decode()
    raw["signature"]["ed25519"] = base64.b64encode(
        parties.site.sign(b"GA-MODEL-CARD/1\n" + card().canonical())
    ).decode()
    with pytest.raises(IntegrityError, match="model card signature refused"):
        verify_card(canonical_json(raw), MODEL, coordinator_key, HASH)
    # A "coordinator" certified by another CA.
    rogue = sign_card(card(), parties.rogue_coordinator)
    with pytest.raises(IntegrityError, match="model card signature refused"):
        verify_card(rogue, MODEL, coordinator_key, HASH)
    # Signed by the coordinator but naming another signer.
    raw = json.loads(sign_card(card(), parties.coordinator))
    raw["signature"]["signer"] = "site-a"
    with pytest.raises(IntegrityError, match="signed by 'site-a', not by the coordinator"):
        verify_card(canonical_json(raw), MODEL, coordinator_key, HASH)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[]", "exactly 'card' and 'signature'"),
        (
            b'{"card": {}, "signature": '
            b'{"signer": "coordinator", "certificate": "", "ed25519": ""}}',
            "malformed",
        ),
        (b" " * (1 << 21), "exceeds"),
    ],
)
def test_malformed_cards_are_refused(
    data: bytes, match: str, coordinator_key: MessageVerifier
) -> None:
    with pytest.raises(IntegrityError, match=match):
        verify_card(data, MODEL, coordinator_key, HASH)


def test_small_counts_are_suppressed_as_in_the_quality_report() -> None:
    shown = case_counts({"site-a": 40, "site-b": 3, "site-c": 12})
    # The one small count is "<5"; the smallest other is hidden too, so it cannot be derived.
    assert shown["per_hospital"] == {"site-a": 40, "site-b": "<5", "site-c": "*"}
    few = EvaluationCounts(n=4, top1=1, top3=2, top10=3).shown()
    assert few == {"cases": "<5", "top1": None, "top3": None, "top10": None}
    many = EvaluationCounts(n=20, top1=5, top3=10, top10=18).shown()
    assert many == {"cases": 20, "top1": 0.25, "top3": 0.5, "top10": 0.9}


def test_the_evaluation_pools_counts_and_names_who_is_pending() -> None:
    counts = {
        "site-a": EvaluationCounts(n=20, top1=5, top3=10, top10=18),
        "site-b": EvaluationCounts(n=4, top1=1, top3=2, top10=2),
    }
    summary = evaluation_summary(("site-a", "site-b", "site-c"), counts)
    assert summary["overall"] == {"cases": 24, "top1": 0.25, "top3": 0.5, "top10": 0.8333}
    assert summary["per_hospital"]["site-b"]["top1"] is None
    assert summary["pending"] == ["site-c"]
    with pytest.raises(ProtocolError, match="top1 <= top3"):
        EvaluationCounts(n=4, top1=3, top3=2, top10=2)


def test_case_counts_under_secure_aggregation_say_undisclosed_not_zero() -> None:
    shown = case_counts({"site-a": None, "site-b": None}, total=57)
    assert shown == {"per_hospital": {"site-a": UNDISCLOSED, "site-b": UNDISCLOSED}, "total": 57}
    # A small count is still protected, and its complement hidden with it.
    mixed = case_counts({"site-a": 3, "site-b": 40, "site-c": 12})
    assert mixed["per_hospital"] == {"site-a": "<5", "site-b": 40, "site-c": "*"}
