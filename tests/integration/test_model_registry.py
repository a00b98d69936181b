"""The coordinator's model registry (alliance.coordinator.registry) through the real service.

A study of four in-process sites runs to its end (tests/one_engine.ServiceRun); then:

- the final model is published at finish: the model file holds the final version's weights, its
  card verifies under the consortium's trust store and names the study hash, the model's
  SHA-256, the hospitals and their cases; ``model_published`` is in the audit log;
- each hospital's :class:`FinalEvaluation` is accepted once (a repeat is a duplicate), only from
  a participant, and re-issues the card as a new signed revision with the counts on it (small
  ones suppressed); once every hospital reported, each is sent the study end again with the
  complete card;
- the operator reads the model and card; a non-participant is refused (403), an unknown study or
  version is not found (404); a model altered on disk is refused on read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.one_engine import SITES, STUDY, Scenario, ServiceRun

from alliance.coordinator.registry import ModelRegistry
from alliance.core.errors import IntegrityError, StoreDamaged
from alliance.protocol.codec import decode, decode_signed, encode_signed
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import FinalEvaluation, StudyEnd
from alliance.protocol.model_card import model_sha256, verify_card
from alliance.protocol.study import StudySpec
from alliance.transport.http import NotFoundError, PermissionDenied

FED = "one-engine"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> ServiceRun:
    root = tmp_path_factory.mktemp("registry")
    run = ServiceRun(Scenario("registry", rounds=2), root)
    run.service.home.registry = ModelRegistry(
        root / "models", signer=run.service.signer, audit=run.service.audit
    )
    run.run()
    return run


def evaluation(site: str, n: int, *, top1: int = 1) -> Envelope:
    header = Header(MessageKind.FINAL_EVALUATION, FED, STUDY, 0, site, COORDINATOR)
    counts = {"eval_n": float(n), "eval_top1": top1, "eval_top3": top1, "eval_top10": float(n)}
    return FinalEvaluation(header, 2, counts).to_envelope()


def test_the_final_model_is_published_when_the_study_finishes(finished: ServiceRun) -> None:
    service = finished.service
    assert service.home.registry is not None
    published = service.home.registry.get(STUDY)
    assert published is not None
    assert published.version == 2
    _, weights, _ = service.store.latest_model(STUDY)
    arrays = decode(published.model).arrays
    assert set(arrays) == set(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(arrays[name], value)
    spec = StudySpec.parse(service.study_spec(STUDY))
    card = verify_card(
        published.card_bytes, published.model, finished.from_coordinator, spec.hash, version=2
    )
    assert card.model_sha256 == model_sha256(published.model)
    assert card.hospitals == SITES
    assert card.cases["total"] == 4 * 20
    assert card.evaluation["pending"] == list(SITES)
    events = [e for e in service.audit.entries() if e.event == "model_published"]
    assert [(e.details["study"], e.details["version"]) for e in events] == [(STUDY, 2)]
    # Each site was sent the model and card with the study's end.
    assert all(site.finished and site.final_version == 2 for site in finished.sites)


def test_final_evaluations_revise_the_card_once_per_participant(finished: ServiceRun) -> None:
    service = finished.service
    assert service.home.registry is not None
    for i, site in enumerate(SITES):
        data = encode_signed(evaluation(site, 3 if site == "d" else 8 + i), finished.signers[site])
        assert service.submit_update(site, data) == "accepted"
        assert service.submit_update(site, data) == "duplicate"
    with pytest.raises(IntegrityError, match="did not take part"):
        service.final_evaluation("zz", evaluation("zz", 8), 100)
    published = service.home.registry.get(STUDY)
    assert published is not None
    card = published.card
    assert card.revision == 1 + len(SITES)
    assert card.evaluation["pending"] == []
    assert card.evaluation["per_hospital"]["a"] == {
        "cases": 8,
        "top1": 0.125,
        "top3": 0.125,
        "top10": 1.0,
    }
    assert card.evaluation["per_hospital"]["d"]["cases"] == "<5"
    assert card.evaluation["overall"]["cases"] == 8 + 9 + 10 + 3
    received = [e for e in service.audit.entries() if e.event == "final_evaluation_received"]
    assert sorted(e.details["site"] for e in received) == sorted(SITES)
    # Every hospital is sent the study's end once more, with the complete card.
    for site in SITES:
        data = service.next_message(site, 0)
        assert data is not None
        end = StudyEnd.from_envelope(decode_signed(data, finished.from_coordinator).envelope)
        assert end.card == published.card_bytes
        assert end.model == published.model
        assert service.next_message(site, 0) is None


def test_the_model_and_card_are_served_to_operators_and_participants_only(
    finished: ServiceRun,
) -> None:
    service = finished.service
    assert service.home.registry is not None
    published = service.home.registry.get(STUDY)
    assert published is not None
    assert service.study_model(STUDY, None, site=None) == published.model
    assert service.study_model(STUDY, 2, site="a") == published.model
    assert service.study_model_card(STUDY, None, site="b") == published.card_bytes
    with pytest.raises(PermissionDenied, match="did not take part"):
        service.study_model(STUDY, None, site="zz")
    with pytest.raises(NotFoundError, match="no study 'nope'"):
        service.study_model("nope", None, site=None)
    with pytest.raises(NotFoundError, match="no published model version 7"):
        service.study_model_card(STUDY, 7, site=None)


def test_a_model_altered_on_disk_is_refused_on_read(finished: ServiceRun, tmp_path: Path) -> None:
    service = finished.service
    assert service.home.registry is not None
    path = service.home.registry.root / STUDY / "v2" / "model.alliance"
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(StoreDamaged, match="does not match its card"):
            service.home.registry.get(STUDY)
    finally:
        path.write_bytes(original)
