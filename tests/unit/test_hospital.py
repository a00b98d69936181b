"""The hospital core (alliance.site.hospital): what it does with each task, as a returned record.

- a task of a study the hospital has not approved, of a cohort below ``min_cohort``, or outside
  the approved plan is refused with a Refusal that names only the category ("not-approved",
  "cohort", "policy"); the detail is in the hospital's audit log;
- a hash added to ``[policy] approved_studies`` while the agent runs is seen: the policy is
  re-read before a study is refused, and the log says so;
- a task in plan trains; a charged round says which charge it made; a round beyond the budget is
  declined ("budget"); a study's end is recorded once;
- a simulation's hospital (``simulated_hospital``) is the same core, over signed in-memory frames.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tests.e2e.deployment import study_text
from torch import nn
from torch.utils.data import TensorDataset

from alliance.core.errors import ProtocolError
from alliance.crypto.authority import CertificateAuthority
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.signing import Signer
from alliance.crypto.verifier import MessageVerifier
from alliance.models.training import get_weights
from alliance.privacy.ledger import PrivacyLedger
from alliance.protocol.codec import content_digest
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import Refusal, StudyEnd, TrainTask
from alliance.protocol.study import StudySpec, spec_hash
from alliance.site.agent import Site
from alliance.site.hospital import ApprovedHashes, Cohort, Hospital
from alliance.site.outcome import Action, Outcome, Refused
from alliance.site.simulated import simulated_hospital
from alliance.store.audit import AuditLog
from alliance.transport import InMemoryTransport, Signing

FED, SITE, STUDY = "fed", "site-a", "study-1"
TEXT = study_text(STUDY, [SITE], rounds=2, quorum=1, timeout_s=60)
SPEC = StudySpec.parse(TEXT)
DP_TEXT = study_text(
    STUDY,
    [SITE],
    rounds=2,
    quorum=1,
    timeout_s=60,
    extra='\n[privacy]\nmechanism = "dp-sgd"\nnoise_multiplier = 1.0\n',
)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(5, 2)


def cases(n: int) -> TensorDataset:
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, (x[:, 0] > 0).long())


class Setting:
    """One hospital: its policy file (a list of hashes it re-reads), cases, ledger and audit."""

    def __init__(self, root: Path, *, approved: list[str], n: int = 40, budget: float = 8.0):
        self.approved = approved
        self.texts = {STUDY: TEXT}
        self.n = n
        self.built = 0
        self.ledger = PrivacyLedger.open(root / "privacy.ledger", budget_epsilon=budget, delta=1e-5)
        self.audit = AuditLog(root / "audit.log", actor=SITE)
        self.policy = ApprovedHashes(
            list(approved),
            min_cohort=20,
            study_text=self.texts.__getitem__,
            reread=lambda: list(self.approved),
            where="site.toml",
        )
        self.hospital = Hospital(
            SITE, federation=FED, policy=self.policy, cohort=self.cohort, audit=self.audit
        )

    def cohort(self, spec: StudySpec) -> Cohort:
        def build() -> Site:
            self.built += 1
            return Site(
                SITE,
                federation=FED,
                model=model(),
                train=cases(self.n),
                test=None,
                link=None,
                ledger=self.ledger,
            )

        return Cohort(self.n, 0, "cases.csv", build)

    def events(self, name: str) -> list[dict[str, object]]:
        return [e.details for e in self.audit.entries() if e.event == name]


@pytest.fixture
def setting(tmp_path: Path) -> Iterator[Setting]:
    s = Setting(tmp_path, approved=[spec_hash(TEXT)])
    yield s
    s.ledger.close()


def task(
    round_: int = 1, version: int = 0, *, text: str = TEXT, sender: str = COORDINATOR
) -> Envelope:
    spec = StudySpec.parse(text)
    header = Header(MessageKind.TRAIN_TASK, FED, STUDY, round_, sender, SITE)
    weights = get_weights(model())
    return TrainTask(header, version, spec.plan, weights, spec.privacy, spec.secagg).to_envelope()


def end(version: int = 2) -> Envelope:
    header = Header(MessageKind.STUDY_END, FED, STUDY, 2, COORDINATOR, SITE)
    return StudyEnd(header, version).to_envelope()


def refusal_of(outcome: Outcome) -> str:
    (reply,) = outcome.replies
    assert reply.header.recipient == COORDINATOR
    assert reply.header.sender == SITE
    assert dict(reply.body).keys() == {"reason"}  # the category only, never the detail
    return Refusal.from_envelope(reply).reason


def test_a_task_in_plan_trains_joins_the_study_once_and_says_so(setting: Setting) -> None:
    first = setting.hospital.handle(task(1, 0))
    assert (first.action, first.study, first.round, first.model_version) == (
        Action.TRAINED,
        STUDY,
        1,
        0,
    )
    (update,) = first.replies
    assert update.header.kind is MessageKind.MODEL_UPDATE
    assert first.refused is None
    assert first.charges == ()
    second = setting.hospital.handle(task(2, 1))
    assert second.action is Action.TRAINED
    assert setting.built == 1
    assert [e["hash"] for e in setting.events("study_joined")] == [spec_hash(TEXT)]
    assert [e["round"] for e in setting.events("task_received")] == [1, 2]


def test_a_study_not_approved_is_refused_at_once_with_its_category(tmp_path: Path) -> None:
    s = Setting(tmp_path, approved=[])
    try:
        outcome = s.hospital.handle(task())
    finally:
        s.ledger.close()
    assert outcome.action is Action.REFUSED
    assert refusal_of(outcome) == "not-approved"
    assert outcome.refused is not None
    assert outcome.refused.category == "not-approved"
    assert spec_hash(TEXT) in outcome.refused.detail
    assert "[policy] approved_studies of site.toml" in outcome.refused.detail
    (line,) = s.events("task_refused")
    assert (line["category"], line["reason"]) == ("not-approved", outcome.refused.detail)
    assert s.built == 0


def test_a_study_approved_while_the_agent_runs_is_seen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Setting(tmp_path, approved=[])
    try:
        assert s.hospital.handle(task(1, 0)).action is Action.REFUSED
        s.approved.append(spec_hash(TEXT))  # the officer adds the hash to site.toml
        with caplog.at_level(logging.INFO, logger="alliance.site.hospital"):
            outcome = s.hospital.handle(task(1, 0))
    finally:
        s.ledger.close()
    assert outcome.action is Action.TRAINED
    assert "re-read [policy] approved_studies of site.toml (1 hashes, 1 new)" in caplog.text
    assert len(s.events("study_joined")) == 1


def test_an_approved_study_reads_no_policy_again(setting: Setting) -> None:
    setting.approved.clear()  # would refuse, were it read
    assert setting.hospital.handle(task()).action is Action.TRAINED


def test_a_cohort_below_min_cohort_is_refused_without_building_the_site(tmp_path: Path) -> None:
    s = Setting(tmp_path, approved=[spec_hash(TEXT)], n=5)
    try:
        outcome = s.hospital.handle(task())
    finally:
        s.ledger.close()
    assert refusal_of(outcome) == "cohort"
    assert outcome.refused == Refused(
        "cohort", "only 5 cases loaded from cases.csv; the hospital's policy requires at least 20"
    )
    assert s.built == 0
    assert s.events("study_joined") == []


def test_a_task_outside_the_approved_study_is_refused_as_policy(setting: Setting) -> None:
    beyond = setting.hospital.handle(task(3, 0))
    assert refusal_of(beyond) == "policy"
    assert beyond.refused is not None
    assert "outside the approved study" in beyond.refused.detail
    private = setting.hospital.handle(task(1, 0, text=DP_TEXT))  # not the approved privacy plan
    assert refusal_of(private) == "policy"
    assert private.refused is not None
    assert "privacy" in private.refused.detail
    assert [e["category"] for e in setting.events("task_refused")] == ["policy", "policy"]
    assert setting.events("task_received") == []


def test_a_charged_round_reports_its_charge_and_a_round_past_the_budget_is_declined(
    tmp_path: Path,
) -> None:
    s = Setting(tmp_path, approved=[spec_hash(DP_TEXT)], budget=1.0)
    s.texts[STUDY] = DP_TEXT
    try:
        outcome = s.hospital.handle(task(1, 0, text=DP_TEXT))
    finally:
        s.ledger.close()
    # σ = 1 for 2 rounds does not fit ε = 1: declined before anything is read or charged.
    assert outcome.action is Action.REFUSED
    assert refusal_of(outcome) == "budget"
    assert outcome.charges == ()
    (declined,) = s.events("round_declined")
    assert outcome.refused is not None
    assert declined["reason"] == outcome.refused.detail

    s = Setting(tmp_path / "rich", approved=[spec_hash(DP_TEXT)], budget=100.0)
    s.texts[STUDY] = DP_TEXT
    try:
        first = s.hospital.handle(task(1, 0, text=DP_TEXT))
        again = s.hospital.handle(task(1, 0, text=DP_TEXT))
    finally:
        s.ledger.close()
    assert first.action is Action.TRAINED
    assert [(c.study, c.round) for c in first.charges] == [(STUDY, 1)]
    assert again.action is Action.RESENT
    assert again.charges == ()
    assert [content_digest(r) for r in again.replies] == [content_digest(first.replies[0])]
    (charged,) = s.events("privacy_charged")
    assert first.charges[0].total is not None
    assert charged["epsilon_total"] == first.charges[0].total.epsilon


def test_a_study_end_is_recorded_once_and_only_for_a_study_joined(setting: Setting) -> None:
    assert setting.hospital.handle(end()).action is Action.IGNORED  # never joined
    setting.hospital.handle(task())
    ended = setting.hospital.handle(end(2))
    assert (ended.action, ended.model_version, ended.replies) == (Action.ENDED, 2, ())
    assert setting.hospital.handle(end(2)).action is Action.IGNORED
    assert [e["final_version"] for e in setting.events("study_ended")] == [2]


def test_a_message_not_from_the_coordinator_is_refused(setting: Setting) -> None:
    with pytest.raises(ProtocolError, match="only the coordinator"):
        setting.hospital.handle(task(sender="site-b"))
    secagg = Header(MessageKind.SECAGG, FED, STUDY, 1, COORDINATOR, SITE)
    with pytest.raises(ProtocolError, match="not joined"):
        setting.hospital.handle(Envelope(secagg, {"stage": "keys"}))


def test_a_simulated_hospital_runs_the_same_core_over_signed_frames(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(FED)
    issued = {SITE: ca.issue(SITE, Role.SITE)}
    issued[COORDINATOR] = ca.issue(COORDINATOR, Role.COORDINATOR, hosts=("localhost",))
    trust = TrustStore(ca.certificate)
    signing = Signing(
        {name: Signer(p.signing_key, p.certificate) for name, p in issued.items()},
        from_coordinator=MessageVerifier(trust, role=Role.COORDINATOR),
        from_sites=MessageVerifier(trust, role=Role.SITE),
    )
    transport = InMemoryTransport(signing=signing)
    hospital = simulated_hospital(
        SITE,
        federation=FED,
        spec=SPEC,
        train=cases(30),
        test=None,
        model_fn=model,
        ledger=None,
        folder=tmp_path / "audit",
    )
    other = Header(MessageKind.TRAIN_TASK, FED, "study-2", 1, COORDINATOR, SITE)
    tasks = [task(1, 0), Envelope(other, dict(task().body), dict(task().arrays))]
    outcomes = []
    for env in tasks:
        transport.publish(env)
        fetched = transport.fetch(SITE)
        assert fetched is not None
        outcomes.append(hospital.handle(fetched))
        for reply in outcomes[-1].replies:
            transport.submit(reply)
    assert [o.action for o in outcomes] == [Action.TRAINED, Action.REFUSED]
    update, refusal = transport.collect()
    assert update.header.kind is MessageKind.MODEL_UPDATE
    assert Refusal.from_envelope(refusal).reason == "not-approved"
    log = AuditLog(tmp_path / "audit" / f"{SITE}.audit.log", actor=SITE)
    assert [e.event for e in log.entries()] == ["study_joined", "task_received", "task_refused"]
