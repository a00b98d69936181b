"""Asynchronous, staleness-aware aggregation: the study option, the discount, the coordinator.

Three hand-driven sites (``site-a``: 10 cases, ``site-b``: 30, ``site-c``: 60, each sending the
unit delta of :func:`tests.unit.test_coordinator.site_delta`) let every weight be computed by
hand: an update ``tau`` versions old counts ``num_examples * (1 + tau) ** -a`` times.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.unit.test_coordinator import (
    initial_weights,
    make_coordinator,
    site_delta,
    snapshot,
    update_envelope,
)

from alliance.algorithms.strategies import FedAvg, SiteUpdate, update_shares, weighted_mean_delta
from alliance.cli.app import _offline_modes
from alliance.coordinator.buffered import buffered_updates
from alliance.coordinator.rounds import Coordinator, Receipt, RoundRecord
from alliance.core.errors import ConfigError, DataError, FederationError, ProtocolError
from alliance.evaluation.report import render_report
from alliance.protocol.aggregation import (
    AggregationMode,
    AggregationPlan,
    default_buffer,
    staleness_discount,
)
from alliance.protocol.messages import TrainTask
from alliance.protocol.privacy import SecAggPlan
from alliance.protocol.study import StudySpec
from alliance.store.memory import MemoryStore
from alliance.store.state import UpdateMeta
from alliance.transport.memory import InMemoryTransport

F32 = np.float32
SITE_IDS = ", ".join(f'"h{i:02d}"' for i in range(12))
ASYNC = AggregationPlan(mode=AggregationMode.ASYNC, buffer=2)


def _spec(extra: str) -> StudySpec:
    return StudySpec.parse(
        f'[study]\nid = "s"\nrounds = 4\nsites = [{SITE_IDS}]\n{extra}', where="study.toml"
    )


# ---------------------------------------------------------------------------------------------
# the study option


def test_studies_are_synchronous_unless_they_say_otherwise() -> None:
    spec = _spec("")
    assert spec.aggregation == AggregationPlan()
    assert spec.aggregation.mode is AggregationMode.SYNC
    assert not spec.aggregation.is_async


def test_the_aggregation_table_is_parsed_with_its_defaults() -> None:
    spec = _spec('[aggregation]\nmode = "async"\n')
    plan = spec.aggregation
    assert plan.is_async
    assert (plan.buffer, plan.staleness_exponent, plan.max_staleness) == (None, 0.5, 10)
    assert plan.buffer_for(12) == 6 == default_buffer(12)
    assert plan.buffer_for(1) == 1 == default_buffer(1)
    spec = _spec(
        '[aggregation]\nmode = "async"\nbuffer = 4\nstaleness_exponent = 1\nmax_staleness = 3\n'
    )
    assert spec.aggregation == AggregationPlan(AggregationMode.ASYNC, 4, 1, 3)
    assert spec.aggregation.buffer_for(3) == 3  # never more than a round's participants


def test_the_option_is_part_of_the_approved_text_and_stays_at_the_coordinator() -> None:
    sync, asynchronous = _spec(""), _spec('[aggregation]\nmode = "async"\n')
    assert sync.hash != asynchronous.hash
    transport = InMemoryTransport()
    coord = make_coordinator(transport, aggregation=asynchronous.aggregation)
    coord.start_round()
    task = transport.fetch("site-a")
    assert task is not None
    words = ("aggregation", "buffer", "stale")
    assert not [key for key in task.body if any(word in key for word in words)]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('mode = "fast"', r'\[aggregation\] mode must be "sync" or "async", got \'fast\''),
        ('mode = "async"\nbuffer = 0', r"\[aggregation\] buffer must be an integer >= 1.*got 0"),
        ('mode = "async"\nbuffer = "6"', r"\[aggregation\] buffer must be an integer.*got '6'"),
        (
            'mode = "async"\nbuffer = 13',
            r"\[aggregation\] buffer 13 is larger than the 12 invited.*at most 12",
        ),
        (
            'mode = "async"\nstaleness_exponent = -1',
            r"\[aggregation\] staleness_exponent must be a number >= 0, got -1",
        ),
        (
            'mode = "async"\nstaleness_exponent = nan',
            r"\[aggregation\] staleness_exponent must be a number >= 0, got nan",
        ),
        (
            'mode = "async"\nmax_staleness = -2',
            r"\[aggregation\] max_staleness must be an integer >= 0.*got -2.*courier",
        ),
        ('mode = "async"\nmax_staleness = 2.5', r"\[aggregation\] max_staleness must be.*got 2\.5"),
        ('mode = "async"\nbufer = 3', r"\[aggregation\] has unknown keys \['bufer'\]; accepted"),
        ("buffer = 3", r'\[aggregation\] buffer only apply with mode = "async"; set the mode'),
    ],
)
def test_bad_aggregation_tables_name_the_key_the_value_and_the_fix(
    table: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^study\.toml: {message}"):
        _spec(f"[aggregation]\n{table}\n")


def test_async_with_secure_aggregation_is_refused() -> None:
    with pytest.raises(ConfigError, match=r'mode = "async" cannot be combined with \[secure_agg'):
        _spec('[aggregation]\nmode = "async"\n[secure_aggregation]\nenabled = true\n')
    with pytest.raises(ConfigError, match="cannot be combined with secure aggregation"):
        make_coordinator(InMemoryTransport(), aggregation=ASYNC, secagg=SecAggPlan(enabled=True))


# ---------------------------------------------------------------------------------------------
# the discount


def test_staleness_discount_is_polynomial() -> None:
    assert staleness_discount(staleness=0, exponent=0.5) == 1.0
    assert staleness_discount(staleness=3, exponent=0.5) == 0.5
    assert staleness_discount(staleness=8, exponent=0.5) == pytest.approx(1 / 3)
    assert staleness_discount(staleness=1, exponent=1.0) == 0.5
    assert staleness_discount(staleness=9, exponent=0.0) == 1.0
    with pytest.raises(ValueError, match="staleness must be >= 0"):
        staleness_discount(staleness=-1, exponent=0.5)


def test_buffered_weights_are_cases_times_the_discount_normalised() -> None:
    metas = [
        UpdateMeta("fresh", "n1", "d1", 10, {}, base_version=5),
        UpdateMeta("late", "n2", "d2", 30, {}, base_version=2),  # tau = 3: counts 30 / 2
    ]
    deltas = {"fresh": {"x": np.ones(2, F32)}, "late": {"x": np.full(2, 2.0, F32)}}
    updates, staleness = buffered_updates(
        metas,
        version=5,
        plan=AggregationPlan(AggregationMode.ASYNC),
        loader=lambda site: lambda: deltas[site],
    )
    assert staleness == {"fresh": 0, "late": 3}
    assert [u.weight for u in updates] == [10.0, 15.0]
    assert update_shares(updates) == {"fresh": 0.4, "late": 0.6}
    # 0.4 * 1 + 0.6 * 2
    np.testing.assert_allclose(weighted_mean_delta(updates)["x"], [1.6, 1.6], rtol=0, atol=1e-12)


def test_without_weights_the_mean_is_the_sample_weighted_one_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    updates = [
        SiteUpdate(f"s{i}", n, {"x": rng.normal(size=5).astype(F32)})
        for i, n in enumerate([7, 13, 101])
    ]
    want = np.zeros(5)
    for u in updates:
        want += (u.num_examples / 121) * np.asarray(u.load()["x"], np.float64)
    assert weighted_mean_delta(updates)["x"].tobytes() == want.tobytes()
    weighted = [replace(u, weight=float(u.num_examples)) for u in updates]
    assert weighted_mean_delta(weighted)["x"].tobytes() == want.tobytes()


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf])
def test_a_bad_weight_is_refused(weight: float) -> None:
    updates = [SiteUpdate("a", 1, {"x": np.ones(1, F32)}), SiteUpdate("b", 1, {}, weight=weight)]
    with pytest.raises(FederationError, match="update from b: its weight must be finite"):
        weighted_mean_delta(updates)


# ---------------------------------------------------------------------------------------------
# the coordinator


@pytest.fixture
def transport() -> InMemoryTransport:
    return InMemoryTransport()


def _answer(coord: Coordinator, transport: InMemoryTransport, *sites: str) -> None:
    for site in sites:
        transport.submit(update_envelope(coord, site))
    assert coord.receive() == len(sites)


def _first_version_without(site: str, coord: Coordinator, transport: InMemoryTransport) -> Any:
    """Round 1 opens for all three; the two others answer and make version 1 (buffer 2)."""
    coord.start_round()
    tasks = {s: transport.fetch(s) for s in ("site-a", "site-b", "site-c")}
    assert all(t is not None for t in tasks.values())
    _answer(coord, transport, *[s for s in ("site-a", "site-b", "site-c") if s != site])
    assert coord.complete
    return coord.close_round()


def test_a_stale_update_counts_in_the_open_round_with_its_discount(
    transport: InMemoryTransport,
) -> None:
    coord = make_coordinator(transport, aggregation=ASYNC)
    _first_version_without("site-c", coord, transport)
    after_one = {k: v.copy() for k, v in coord.weights.items()}
    assert coord.start_round() == 2
    # site-c still trains version 0: it is handed no task for version 1.
    assert transport.fetch("site-c") is None
    late = update_envelope(coord, "site-c", round=1, model_version=0)
    assert coord.accept(late) is Receipt.ACCEPTED
    assert [(u.site, u.base_version) for u in coord.store.updates(coord.study, 2)] == [
        ("site-c", 0)
    ]
    assert coord.task_for("site-c") is None  # one update per site and version
    assert not coord.complete  # buffer 2
    _answer(coord, transport, "site-a")
    assert coord.complete
    record = coord.close_round()
    assert record.sites == ("site-a", "site-c")
    assert record.staleness == {"site-a": 0, "site-c": 1}
    # Hand-computed: site-a 10 cases, site-c 60 / sqrt(2).
    w_a, w_c = 10.0, 60.0 / math.sqrt(2.0)
    assert record.shares == pytest.approx(
        {"site-a": w_a / (w_a + w_c), "site-c": w_c / (w_a + w_c)}
    )
    for name in ("w", "b"):
        mean = (w_a * site_delta("site-a")[name].astype(np.float64)) + (
            w_c * site_delta("site-c")[name].astype(np.float64)
        )
        want = (after_one[name] + mean / (w_a + w_c)).astype(F32)
        np.testing.assert_allclose(coord.weights[name], want, rtol=0, atol=1e-6)
    # The summary keeps what reports show, and reads back the same.
    assert RoundRecord.from_json(record.to_json()) == record
    assert coord.store.rounds(coord.study)[1].summary["staleness"] == {"site-a": 0, "site-c": 1}


def test_a_synchronous_summary_is_unchanged(transport: InMemoryTransport) -> None:
    coord = make_coordinator(transport)
    coord.start_round()
    _answer(coord, transport, "site-a", "site-b", "site-c")
    record = coord.close_round()
    assert (record.staleness, record.shares) == ({}, {})
    assert set(record.to_json()) == {
        "round",
        "model_version",
        "sites",
        "num_examples",
        "train_loss",
        "site_metrics",
    }


def test_a_too_stale_update_is_refused_and_changes_nothing(transport: InMemoryTransport) -> None:
    coord = make_coordinator(transport, aggregation=replace(ASYNC, max_staleness=1))
    _first_version_without("site-c", coord, transport)
    coord.start_round()
    _answer(coord, transport, "site-a", "site-b")
    coord.close_round()
    coord.start_round()  # version 2: site-c's task of version 0 can no longer count
    before = snapshot(coord)
    late = update_envelope(coord, "site-c", round=1, model_version=0)
    with pytest.raises(
        ProtocolError, match=r"model version 0 is 2 versions old .*max_staleness is 1"
    ):
        coord.accept(late)
    assert snapshot(coord) == before
    assert coord.rejections[-1].sender == "site-c"
    assert "2 versions old" in coord.store.rejections(coord.study)[-1].reason
    assert not coord.store.nonce_seen(late.header.nonce)


def test_a_late_update_counts_once_however_often_it_arrives(transport: InMemoryTransport) -> None:
    coord = make_coordinator(transport, aggregation=ASYNC)
    _first_version_without("site-c", coord, transport)
    coord.start_round()
    late = update_envelope(coord, "site-c", round=1, model_version=0)
    assert coord.accept(late) is Receipt.ACCEPTED
    assert coord.accept(late) is Receipt.DUPLICATE
    # The same training sent again under a fresh nonce: the store knows its digest.
    again = replace(late, header=replace(late.header, nonce="f" * 32))
    assert coord.accept(again) is Receipt.DUPLICATE
    assert len(coord.store.updates(coord.study, 2)) == 1
    _answer(coord, transport, "site-b")
    coord.close_round()
    coord.start_round()
    # After its version was made, the first bytes are still recognised, not refused.
    assert coord.accept(late) is Receipt.DUPLICATE
    assert coord.store.updates(coord.study, 3) == []


def test_a_site_contributes_once_to_a_version(transport: InMemoryTransport) -> None:
    coord = make_coordinator(transport, aggregation=ASYNC)
    _first_version_without("site-c", coord, transport)
    coord.start_round()
    assert coord.accept(update_envelope(coord, "site-c", round=1, model_version=0))
    before = snapshot(coord)
    fresh = update_envelope(
        coord, "site-c", delta={k: v * 2 for k, v in site_delta("site-c").items()}
    )
    with pytest.raises(ProtocolError, match="already sent a different update this round"):
        coord.accept(fresh)
    assert snapshot(coord) == before


def test_the_buffer_closes_a_round_and_the_deadline_needs_one_update(
    transport: InMemoryTransport,
) -> None:
    coord = make_coordinator(transport, aggregation=ASYNC)
    coord.start_round()
    assert not coord.complete
    with pytest.raises(FederationError, match="no update yet; an asynchronous round closes"):
        coord.close_round()
    _answer(coord, transport, "site-b")
    assert not coord.complete  # 1 of a buffer of 2
    record = coord.close_round()  # what the service does at the deadline
    assert (record.sites, record.staleness, record.shares) == (
        ("site-b",),
        {"site-b": 0},
        {"site-b": 1.0},
    )
    # The default buffer is half the invited sites, at least one: 1 of 3.
    coord = make_coordinator(
        InMemoryTransport(), aggregation=AggregationPlan(AggregationMode.ASYNC)
    )
    coord.start_round()
    assert not coord.complete
    coord.accept(update_envelope(coord, "site-a"))
    assert coord.complete


@pytest.mark.parametrize(
    ("header", "version", "message"),
    [
        ({"round": 1}, 1, "round 1 was trained on model version 1, but that round handed out ver"),
        ({"round": 3}, 0, "update for round 3, but the open round is 2"),
        ({"round": 0}, 0, "update for round 0, but the open round is 2"),
    ],
)
def test_a_late_update_must_answer_a_real_round_with_its_version(
    transport: InMemoryTransport, header: dict[str, Any], version: int, message: str
) -> None:
    coord = make_coordinator(transport, aggregation=ASYNC)
    _first_version_without("site-c", coord, transport)
    coord.start_round()
    before = snapshot(coord)
    env = update_envelope(coord, "site-c", model_version=version, **header)
    with pytest.raises(ProtocolError, match=message):
        coord.accept(env)
    assert snapshot(coord) == before


def test_a_late_update_from_a_site_not_asked_that_round_is_refused(
    transport: InMemoryTransport,
) -> None:
    coord = make_coordinator(transport, aggregation=ASYNC)
    coord.start_round(participants=["site-a", "site-b"])
    _answer(coord, transport, "site-a", "site-b")
    coord.close_round()
    coord.start_round()
    env = update_envelope(coord, "site-c", round=1, model_version=0)
    with pytest.raises(ProtocolError, match="'site-c' was not a participant of round 1"):
        coord.accept(env)


def test_a_site_gets_a_new_task_once_its_old_one_can_no_longer_count(
    transport: InMemoryTransport,
) -> None:
    coord = make_coordinator(transport, aggregation=replace(ASYNC, max_staleness=1))
    _first_version_without("site-c", coord, transport)
    coord.start_round()  # version 1: site-c's task of version 0 may still count
    assert transport.fetch("site-c") is None
    _answer(coord, transport, "site-a", "site-b")
    coord.close_round()
    coord.start_round()  # version 2: it cannot; site-c trains the current version instead
    env = transport.fetch("site-c")
    assert env is not None
    assert TrainTask.from_envelope(env).model_version == 2


def test_a_restarted_coordinator_weighs_a_late_update_the_same(
    transport: InMemoryTransport,
) -> None:
    store = MemoryStore()
    coord = make_coordinator(transport, aggregation=ASYNC, store=store)
    _first_version_without("site-c", coord, transport)
    coord.start_round()
    coord.accept(update_envelope(coord, "site-c", round=1, model_version=0))
    coord.accept(update_envelope(coord, "site-a"))
    restarted = make_coordinator(InMemoryTransport(), aggregation=ASYNC, store=store)
    assert (restarted.round, restarted.version, restarted.complete) == (2, 1, True)
    record = restarted.close_round()
    assert record.staleness == {"site-a": 0, "site-c": 1}
    assert record.shares["site-c"] == pytest.approx((60 / math.sqrt(2)) / (10 + 60 / math.sqrt(2)))


def test_all_online_async_rounds_equal_synchronous_ones_bit_for_bit() -> None:
    results = []
    for plan in (AggregationPlan(), AggregationPlan(AggregationMode.ASYNC, buffer=3)):
        transport = InMemoryTransport()
        coord = make_coordinator(transport, aggregation=plan, strategy=FedAvg(server_lr=2.0))
        for _ in range(3):
            coord.start_round()
            _answer(coord, transport, "site-a", "site-b", "site-c")
            coord.close_round()
        results.append({k: v.tobytes() for k, v in coord.weights.items()})
    assert results[0] == results[1]
    assert results[0] != {k: v.tobytes() for k, v in initial_weights().items()}


# ---------------------------------------------------------------------------------------------
# the report and the command line


def _demo_metrics() -> dict[str, Any]:
    fixture = Path(__file__).parents[1] / "fixtures" / "demo_metrics_example.json"
    metrics: dict[str, Any] = json.loads(fixture.read_text(encoding="utf-8"))
    site = metrics["sites"][-1]["id"]
    metrics["offline_async"] = {
        "sites": [site],
        "overall": {"top1": 0.5, "top3": 0.6, "top10": 0.7, "n": 100},
        "buffer": 11,
        "staleness_exponent": 0.5,
        "courier_delay": 3,
        "versions": 10,
        "late_updates": [
            {"site": site, "model_version": 4, "staleness": 3, "discount": 0.5, "share": 0.0123}
        ],
    }
    return metrics


def test_the_report_shows_how_late_the_replies_on_files_came_and_what_they_weighed() -> None:
    metrics = _demo_metrics()
    html = render_report(metrics)
    assert "Hospitals without a network connection" in html
    assert "Rounds that do not wait for the courier" in html
    assert "2 hospitals on files" not in html  # no synchronous run on files in these metrics
    assert "1 hospitals on files, asynchronous" in html
    assert "as soon as 11 updates were in, 10 versions in all" in html
    assert '<td class="num">×0.50</td><td class="num">1.2%</td>' in html
    metrics["offline_async"]["late_updates"] = []
    assert "No reply of a hospital on files arrived in time to count" in render_report(metrics)
    metrics["offline_async"]["sites"] = []
    with pytest.raises(DataError, match=r"offline_async\.sites"):
        render_report(metrics)
    metrics["offline_async"]["sites"] = ["x"]
    metrics["offline_async"]["late_updates"] = ["late"]
    with pytest.raises(DataError, match=r"offline_async\.late_updates"):
        render_report(metrics)


def test_the_demo_option_chooses_the_runs_on_files() -> None:
    assert _offline_modes("both") == (AggregationMode.SYNC, AggregationMode.ASYNC)
    assert _offline_modes(" Async") == (AggregationMode.ASYNC,)
    assert _offline_modes("sync") == (AggregationMode.SYNC,)
    with pytest.raises(ConfigError, match="--offline-aggregation: 'fast' is not one of sync"):
        _offline_modes("fast")


def test_a_site_on_files_is_handed_one_task_at_a_time_whoever_asks() -> None:
    """The service writes whatever ``task_for`` gives a courier site into its outbox."""
    coord = make_coordinator(None, aggregation=ASYNC, offline=["site-c"])
    coord.start_round()
    first = coord.task_for("site-c")
    assert first is not None
    assert first.model_version == 0
    assert coord.task_for("site-c") is None  # already handed out
    for site in ("site-a", "site-b"):
        coord.accept(update_envelope(coord, site))
    coord.close_round()
    coord.start_round()
    assert coord.task_for("site-c") is None  # its reply is on the road
    assert coord.task_for("site-a") is not None  # online sites ask when they are ready
    coord.accept(update_envelope(coord, "site-c", round=1, model_version=0))
    coord.accept(update_envelope(coord, "site-b"))
    coord.close_round()
    coord.start_round()
    again = coord.task_for("site-c")
    assert again is not None
    assert again.model_version == 2


def test_a_restarted_coordinator_hands_a_hospital_on_files_no_second_task() -> None:
    """The tasks written for hospitals on files are in the coordinator's bundle ledger; a
    restarted coordinator is told them and treats an unanswered one as still on the road."""
    store = MemoryStore()

    def restart() -> Coordinator:
        return make_coordinator(None, aggregation=ASYNC, offline=["site-c"], store=store)

    coord = restart()
    coord.start_round()
    first = coord.task_for("site-c")
    assert first is not None
    assert first.model_version == 0
    _answer_directly(coord, "site-a", "site-b")
    coord.close_round()
    coord.start_round()
    # Without the ledger a restarted coordinator would hand site-c a second task ...
    forgetful = restart()
    assert forgetful.task_for("site-c") is not None
    # ... with it, site-c's task of version 0 is still on the road.
    restarted = restart()
    restarted.restore_issued_tasks({"site-c": 0})
    assert restarted.task_for("site-c") is None
    assert restarted.task_for("site-a") is not None
    restarted.accept(update_envelope(restarted, "site-c", round=1, model_version=0))
    _answer_directly(restarted, "site-a")
    restarted.close_round()
    restarted.start_round()
    again = restarted.task_for("site-c")
    assert again is not None
    assert again.model_version == 2
    # A task answered before the restart is not on the road; synchronous studies ignore it all.
    answered = restart()
    answered.restore_issued_tasks({"site-c": 0})
    assert answered.task_for("site-c") is not None
    sync = make_coordinator(None, offline=["site-c"], store=MemoryStore())
    sync.restore_issued_tasks({"site-c": 0})
    sync.start_round()
    assert sync.task_for("site-c") is not None


def _answer_directly(coord: Coordinator, *sites: str) -> None:
    for site in sites:
        assert coord.accept(update_envelope(coord, site)) is Receipt.ACCEPTED
