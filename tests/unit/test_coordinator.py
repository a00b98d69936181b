"""The coordinator's round loop over the in-memory transport, with three hand-driven sites.

Every rejected submission must be recorded with its reason and leave the coordinator's state
(weights, model version, round, pending updates, seen nonces, history) exactly as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from tests.pushing import PushingCoordinator, coordinator

from alliance.algorithms.strategies import FedAvg
from alliance.coordinator.rounds import Coordinator, Receipt
from alliance.core.errors import ConfigError, FederationError, ProtocolError
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import StudyEnd, TrainingPlan, TrainTask
from alliance.transport.memory import InMemoryTransport

F32 = np.float32
SITES = ("site-a", "site-b", "site-c")
EXAMPLES = {"site-a": 10, "site-b": 30, "site-c": 60}


def initial_weights() -> dict[str, np.ndarray[Any, Any]]:
    return {"w": np.array([[1.0, 2.0], [3.0, 4.0]], F32), "b": np.array([0.5, -0.5], F32)}


def _rank(site: str) -> int:
    """1, 2, 3 for the invited sites (and 9 for a stranger)."""
    return SITES.index(site) + 1 if site in SITES else 9


def site_delta(site: str) -> dict[str, np.ndarray[Any, Any]]:
    k = _rank(site)
    return {"w": np.full((2, 2), 0.1 * k, F32), "b": np.array([k, -k], F32)}


def make_coordinator(transport: InMemoryTransport | None, **kwargs: Any) -> Any:
    """A coordinator whose messages are pushed to ``transport`` (``None``: pull only)."""
    options: dict[str, Any] = {
        "federation": "fed",
        "study": "study",
        "sites": list(reversed(SITES)),
        "weights": initial_weights(),
        "strategy": FedAvg(),
        "plan": TrainingPlan(),
    }
    options.update(kwargs)
    if transport is None:
        return coordinator(**options)
    return PushingCoordinator(mailbox=transport, **options)


def update_envelope(
    coord: Coordinator,
    site: str,
    *,
    delta: dict[str, np.ndarray[Any, Any]] | None = None,
    model_version: int | None = None,
    metrics: dict[str, float] | None = None,
    **header: Any,
) -> Envelope:
    """A model update as a well-behaved site would send it; keyword overrides break it."""
    fields: dict[str, Any] = {
        "kind": MessageKind.MODEL_UPDATE,
        "federation": coord.federation,
        "study": coord.study,
        "round": coord.round,
        "sender": site,
        "recipient": COORDINATOR,
    }
    fields.update(header)
    body = {
        "model_version": coord.version if model_version is None else model_version,
        "num_examples": EXAMPLES.get(site, 5),
        "metrics": {"train_loss": float(_rank(site))} if metrics is None else metrics,
    }
    return Envelope(Header(**fields), body, site_delta(site) if delta is None else delta)


@dataclass
class Snapshot:
    weights: dict[str, bytes]
    version: int
    round: int
    complete: bool
    pending: dict[str, Any]
    nonces: set[str]
    history: list[Any]


def snapshot(coord: Coordinator) -> Snapshot:
    return Snapshot(
        weights={
            k: v.tobytes() + str(v.dtype).encode() + str(v.shape).encode()
            for k, v in coord.weights.items()
        },
        version=coord.version,
        round=coord.round,
        complete=coord.complete,
        pending={
            u.site: (u.nonce, u.digest, u.num_examples)
            for u in (coord.store.updates(coord.study, coord.round) if coord.round else [])
        },
        nonces={
            u.nonce for r in range(1, coord.round + 1) for u in coord.store.updates(coord.study, r)
        },
        history=copy.copy(coord.history),
    )


@pytest.fixture
def transport() -> InMemoryTransport:
    return InMemoryTransport()


@pytest.fixture
def coord(transport: InMemoryTransport) -> Coordinator:
    return make_coordinator(transport)


# ---------------------------------------------------------------------------------------------
# a normal round


def test_normal_round_closes_and_aggregates(
    coord: Coordinator, transport: InMemoryTransport
) -> None:
    assert coord.start_round() == 1
    for site in SITES:
        env = transport.fetch(site)
        assert env is not None
        task = TrainTask.from_envelope(env)
        assert (task.header.round, task.header.recipient, task.model_version) == (1, site, 0)
        np.testing.assert_array_equal(task.weights["w"], initial_weights()["w"])
        assert transport.fetch(site) is None
        transport.submit(update_envelope(coord, site))
    assert not coord.complete
    assert coord.receive() == 3
    assert coord.complete
    assert coord.rejections == []

    record = coord.close_round()
    assert (record.round, record.model_version, record.sites, record.num_examples) == (
        1,
        1,
        SITES,
        100,
    )
    assert record.train_loss == pytest.approx((10 * 1 + 30 * 2 + 60 * 3) / 100)
    assert coord.version == 1
    # hand-computed: (10·1 + 30·2 + 60·3)/100 = 2.5 steps of the per-site unit delta
    np.testing.assert_allclose(coord.weights["w"], initial_weights()["w"] + 0.25, rtol=0, atol=1e-7)
    np.testing.assert_allclose(coord.weights["b"], [3.0, -3.0], rtol=0, atol=1e-7)
    assert coord.history == [record]

    # The next round sends the new model to every site.
    assert coord.start_round() == 2
    next_task = transport.fetch("site-b")
    assert next_task is not None
    task = TrainTask.from_envelope(next_task)
    assert (task.header.round, task.model_version) == (2, 1)
    np.testing.assert_array_equal(task.weights["b"], coord.weights["b"])


def test_finish_tells_every_site(coord: Coordinator, transport: InMemoryTransport) -> None:
    coord.finish()
    for site in SITES:
        env = transport.fetch(site)
        assert env is not None
        assert StudyEnd.from_envelope(env).final_version == 0


def test_start_round_while_open_is_refused(coord: Coordinator) -> None:
    coord.start_round()
    with pytest.raises(FederationError, match="round 1 is still open"):
        coord.start_round()
    assert coord.round == 1


# ---------------------------------------------------------------------------------------------
# rejections change no state

Tamper = Callable[[Coordinator, Envelope], Envelope]


def _replay(coord: Coordinator, accepted: Envelope) -> Envelope:
    """site-a's nonce on other content: a replayed or forged message, not a resend."""
    other = update_envelope(coord, "site-b")
    return replace(other, header=replace(other.header, nonce=accepted.header.nonce))


def test_an_exact_resend_is_acknowledged_once_and_counted_once(
    coord: Coordinator, transport: InMemoryTransport
) -> None:
    """A site whose answer was lost sends the same bytes again: a duplicate, not an error."""
    coord.start_round()
    update = update_envelope(coord, "site-a")
    assert coord.accept(update) is Receipt.ACCEPTED
    before = snapshot(coord)
    assert coord.accept(update) is Receipt.DUPLICATE
    assert snapshot(coord) == before
    assert coord.rejections == []
    # The same training redone after a crash (new nonce, same content) is a duplicate too.
    again = replace(update, header=replace(update.header, nonce="f" * 32))
    assert coord.accept(again) is Receipt.DUPLICATE
    assert snapshot(coord) == before


def _missing(coord: Coordinator, accepted: Envelope) -> Envelope:
    return update_envelope(coord, "site-b", delta={"w": site_delta("site-b")["w"]})


def _nan(coord: Coordinator, accepted: Envelope) -> Envelope:
    delta = site_delta("site-b")
    delta["w"][0, 1] = np.nan
    return update_envelope(coord, "site-b", delta=delta)


def _inf(coord: Coordinator, accepted: Envelope) -> Envelope:
    delta = site_delta("site-b")
    delta["b"][0] = -np.inf
    return update_envelope(coord, "site-b", delta=delta)


BAD_SUBMISSIONS: dict[str, tuple[Tamper, str]] = {
    "replayed nonce": (_replay, "replayed message"),
    "wrong federation": (lambda c, _: update_envelope(c, "site-b", federation="other"), "'other'"),
    "wrong study": (lambda c, _: update_envelope(c, "site-b", study="other"), "study 'other'"),
    "recipient not coordinator": (
        lambda c, _: update_envelope(c, "site-b", recipient="site-c"),
        "recipient 'site-c'",
    ),
    "uninvited sender": (lambda c, _: update_envelope(c, "site-z"), "'site-z' is not invited"),
    "wrong round": (
        lambda c, _: update_envelope(c, "site-b", round=c.round + 1),
        "update for round 2, but the open round is 1",
    ),
    "past round": (
        lambda c, _: update_envelope(c, "site-b", round=0),
        "update for round 0, but the open round is 1",
    ),
    "second, different update from the same site": (
        lambda c, _: update_envelope(c, "site-a", metrics={"train_loss": 9.0}),
        "already sent a different update this round",
    ),
    "wrong model version": (
        lambda c, _: update_envelope(c, "site-b", model_version=1),
        "model version 1, current is 0",
    ),
    "wrong shape": (
        lambda c, _: update_envelope(
            c, "site-b", delta={**site_delta("site-b"), "w": np.zeros((4,), F32)}
        ),
        "'w' has shape (4,) float32, the model expects (2, 2) float32",
    ),
    "wrong dtype": (
        lambda c, _: update_envelope(
            c, "site-b", delta={**site_delta("site-b"), "b": np.zeros(2, np.float64)}
        ),
        "'b' has shape (2,) float64",
    ),
    "NaN values": (_nan, "'w' contains NaN or infinite values"),
    "infinite values": (_inf, "'b' contains NaN or infinite values"),
    "missing parameter": (_missing, "missing ['b'], unexpected []"),
    "extra parameter": (
        lambda c, _: update_envelope(
            c, "site-b", delta={**site_delta("site-b"), "extra": np.zeros(1, F32)}
        ),
        "unexpected ['extra']",
    ),
    "wrong kind": (
        lambda c, _: replace(
            update_envelope(c, "site-b"),
            header=replace(update_envelope(c, "site-b").header, kind=MessageKind.TRAIN_TASK),
        ),
        "expected a model_update message, got train_task",
    ),
    "bad metric": (
        lambda c, _: update_envelope(c, "site-b", metrics={"PatientName": 1.0}),
        "metric 'PatientName'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SUBMISSIONS))
def test_bad_submission_is_rejected_and_changes_nothing(
    case: str, coord: Coordinator, transport: InMemoryTransport
) -> None:
    tamper, reason = BAD_SUBMISSIONS[case]
    coord.start_round()
    accepted = update_envelope(coord, "site-a")
    transport.submit(accepted)
    assert coord.receive() == 1
    before = snapshot(coord)

    bad = tamper(coord, accepted)
    transport.submit(bad)
    assert coord.receive() == 0

    assert snapshot(coord) == before
    assert len(coord.rejections) == 1
    rejection = coord.rejections[0]
    assert (rejection.round, rejection.sender) == (bad.header.round, bad.header.sender)
    assert reason in rejection.reason

    # The coordinator carries on: the other sites' genuine updates still close the round.
    for site in ("site-b", "site-c"):
        transport.submit(update_envelope(coord, site))
    assert coord.receive() == 2
    record = coord.close_round()
    assert record.sites == SITES
    np.testing.assert_allclose(coord.weights["b"], [3.0, -3.0], rtol=0, atol=1e-7)


def test_rejected_then_valid_in_one_batch(coord: Coordinator, transport: InMemoryTransport) -> None:
    coord.start_round()
    transport.submit(update_envelope(coord, "site-a", study="other"))
    transport.submit(update_envelope(coord, "site-a"))
    assert coord.receive() == 1
    assert [r.sender for r in coord.rejections] == ["site-a"]


def test_update_when_no_round_is_open(coord: Coordinator, transport: InMemoryTransport) -> None:
    before = snapshot(coord)
    transport.submit(update_envelope(coord, "site-a"))
    assert coord.receive() == 0
    assert snapshot(coord) == before
    assert "open round is none" in coord.rejections[0].reason


def test_late_update_after_close_is_rejected(
    coord: Coordinator, transport: InMemoryTransport
) -> None:
    coord.start_round()
    late = update_envelope(coord, "site-c")
    for site in SITES:
        transport.submit(update_envelope(coord, site))
    coord.receive()
    coord.close_round()
    before = snapshot(coord)
    transport.submit(late)
    assert coord.receive() == 0
    assert snapshot(coord) == before
    assert "open round is none" in coord.rejections[0].reason


# ---------------------------------------------------------------------------------------------
# quorum


def test_close_round_below_quorum_raises_and_changes_nothing(
    coord: Coordinator, transport: InMemoryTransport
) -> None:
    with pytest.raises(FederationError, match="no round is open"):
        coord.close_round()
    coord.start_round()
    for site in ("site-a", "site-b"):
        transport.submit(update_envelope(coord, site))
    coord.receive()
    before = snapshot(coord)
    with pytest.raises(FederationError, match="2 of 3 sites answered, quorum is 3"):
        coord.close_round()
    assert snapshot(coord) == before
    # The round stays open: the last site can still answer and the round closes normally.
    transport.submit(update_envelope(coord, "site-c"))
    assert coord.receive() == 1
    assert coord.close_round().sites == SITES


def test_quorum_two_of_three_closes_with_those_two(transport: InMemoryTransport) -> None:
    coord = make_coordinator(transport, quorum=2)
    coord.start_round()
    for site in ("site-c", "site-a"):
        transport.submit(update_envelope(coord, site))
    assert coord.receive() == 2
    assert not coord.complete
    record = coord.close_round()
    assert record.sites == ("site-a", "site-c")
    assert record.num_examples == 70
    assert set(record.site_metrics) == {"site-a", "site-c"}
    # (10·1 + 60·3) / 70 steps of the unit delta
    k = (10 * 1 + 60 * 3) / 70
    np.testing.assert_allclose(
        coord.weights["b"], (initial_weights()["b"] + [k, -k]).astype(F32), rtol=0, atol=1e-7
    )
    assert coord.version == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # Checked once, by the study spec the coordinator is built from.
        ({"sites": []}, 'sites must be "all" or a list of 1'),
        ({"sites": ["site-a", "site-b", "site-a"]}, "sites lists a site twice"),
        ({"quorum": 0}, r"quorum must be an integer in \[1, "),
        ({"quorum": 4}, "quorum 4 is larger than the 3 invited sites"),
        ({"quorum": -1}, r"quorum must be an integer in \[1, "),
    ],
)
def test_config_errors(kwargs: dict[str, Any], message: str, transport: InMemoryTransport) -> None:
    with pytest.raises(ConfigError, match=message):
        make_coordinator(transport, **kwargs)


# ---------------------------------------------------------------------------------------------
# transport


def test_in_memory_transport_refuses_messages_over_max_bytes() -> None:
    seen: list[tuple[str, str, bytes]] = []
    transport = InMemoryTransport(max_bytes=1000, tap=lambda s, r, d: seen.append((s, r, d)))
    coord = make_coordinator(transport)
    coord.start_round()
    assert [(s, r) for s, r, _ in seen] == [(COORDINATOR, site) for site in SITES]
    seen.clear()
    small = update_envelope(coord, "site-a")
    transport.submit(small)
    assert len(seen) == 1
    assert len(seen[0][2]) <= 1000
    sent = transport.bytes_sent["site-a"]

    big = update_envelope(
        coord, "site-b", delta={"w": np.zeros((40, 40), F32), "b": np.zeros(2, F32)}
    )
    with pytest.raises(ProtocolError, match=r"model_update from site-b is \d+ bytes, over .* 1000"):
        transport.submit(big)
    # Nothing of the refused message was queued, counted or tapped.
    assert transport.bytes_sent["site-b"] == 0
    assert transport.bytes_sent["site-a"] == sent
    assert len(seen) == 1
    collected = transport.collect()
    assert [env.header.sender for env in collected] == ["site-a"]
