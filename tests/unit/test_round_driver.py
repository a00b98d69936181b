"""The round driver on an injected clock: when rounds open, close and wait; what status shows."""

from __future__ import annotations

from typing import Any

import numpy as np
from tests.pushing import coordinator as build_coordinator

from alliance.algorithms.strategies import FedAvg
from alliance.cli.common import console
from alliance.cli.deploy import _print_status
from alliance.coordinator.driver import JOIN_GRACE_S, RoundDriver, Schedule, Step
from alliance.coordinator.rounds import Coordinator
from alliance.coordinator.status import study_status
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import Refusal, TrainingPlan
from alliance.store.memory import MemoryStore
from alliance.store.state import StudyRecord, StudyStatus

STUDY_TEXT = """
[study]
id = "s"
rounds = 2
quorum = 2
round_timeout_s = 60
[model]
kind = "mlp"
"""


def _coordinator(sites: list[str], *, open_invitation: bool = False) -> Coordinator:
    store = MemoryStore()
    store.add_study(StudyRecord("s", STUDY_TEXT, "sha256:x", "op", StudyStatus.RUNNING, 0.0))
    return build_coordinator(
        federation="fed",
        study="s",
        sites=sites,
        weights={"w": np.zeros((2, 2), np.float32)},
        strategy=FedAvg(),
        plan=TrainingPlan(),
        quorum=2,
        store=store,
        clock=lambda: 0.0,
        open_invitation=open_invitation,
    )


def _update(coord: Coordinator, site: str) -> Envelope:
    header = Header(MessageKind.MODEL_UPDATE, "fed", "s", coord.round, site, COORDINATOR)
    body = {"model_version": coord.version, "num_examples": 10, "metrics": {"train_loss": 1.0}}
    return Envelope(header, body, {"w": np.full((2, 2), 0.5, np.float32)})


def test_a_study_open_to_all_waits_for_late_joiners_before_its_first_round() -> None:
    # The defect: pumch and tiantan polled first, westchina a second later, and round 1 opened
    # for the first two at once. The first round now waits a grace period for more sites.
    alive = {"pumch", "tiantan"}
    coord = _coordinator([], open_invitation=True)
    schedule = Schedule(rounds=2, round_timeout_s=600, open_quorum=2, listed=False)
    driver = RoundDriver(coord, schedule, alive=lambda _now: set(alive), started=0.0)
    assert driver.step(0.0) is Step.IDLE
    alive.add("westchina")
    assert driver.step(1.0) is Step.IDLE
    assert driver.step(JOIN_GRACE_S) is Step.OPENED
    assert coord.participants == ("pumch", "tiantan", "westchina")


def test_a_listed_study_opens_as_soon_as_every_invited_site_joined() -> None:
    alive = {"a"}
    coord = _coordinator(["a", "b"])
    schedule = Schedule(rounds=1, round_timeout_s=600, open_quorum=2)
    driver = RoundDriver(coord, schedule, alive=lambda _now: set(alive), started=0.0)
    assert driver.step(0.0) is Step.IDLE
    alive.add("b")
    assert driver.step(1.0) is Step.OPENED
    assert coord.participants == ("a", "b")


def test_a_refusal_is_shown_at_once_and_not_waited_for() -> None:
    coord = _coordinator(["a", "b", "c"])
    events: list[tuple[str, dict[str, Any]]] = []
    schedule = Schedule(rounds=1, round_timeout_s=600, open_quorum=2)
    driver = RoundDriver(
        coord,
        schedule,
        alive=lambda _now: {"a", "b", "c"},
        started=0.0,
        report=lambda e, d: events.append((e, d)),
    )
    assert driver.step(0.0) is Step.OPENED
    header = Header(MessageKind.REFUSAL, "fed", "s", 1, "c", COORDINATOR)
    coord.accept(Refusal(header, "policy").to_envelope())
    record = coord.store.study("s")
    assert record is not None
    status = study_status(coord.store, record, live=driver)
    assert status["open_round"]["refused"] == {"c": "policy"}
    with console.capture() as captured:
        _print_status(status)
    assert "refused: c (policy); waiting for a, b" in captured.get()
    coord.accept(_update(coord, "a"))
    coord.accept(_update(coord, "b"))
    # Complete without c, long before the deadline.
    assert driver.step(1.0) is Step.FINISHED
    assert [e for e, _ in events] == ["round_opened", "round_closed", "study_finished"]


def test_status_names_the_version_each_rounds_accuracy_measured() -> None:
    coord = _coordinator(["a", "b"])
    driver = RoundDriver(
        coord,
        Schedule(rounds=2, round_timeout_s=600, open_quorum=2),
        alive=lambda _now: {"a", "b"},
        started=0.0,
    )
    driver.step(0.0)
    for site in ("a", "b"):
        coord.accept(_update(coord, site))
    driver.step(1.0)
    record = coord.store.study("s")
    assert record is not None
    status = study_status(coord.store, record, live=driver)
    (first,) = status["history"]
    # Round 1 trained version 0 (what the sites evaluated) and made version 1.
    assert (first["evaluated_version"], first["model_version"]) == (0, 1)
    with console.capture() as captured:
        _print_status(status)
    row = next(line for line in captured.get().splitlines() if line.strip().startswith("│ 1"))
    assert row.split("│")[2].strip() == "v0"
    assert row.split("│")[3].strip() == "v1"
