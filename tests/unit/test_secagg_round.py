"""Whole secure-aggregation rounds with honest parties: exact sums under every dropout pattern
the threshold tolerates, clean aborts beyond it, fresh masks every round.

``ALLIANCE_SECAGG_ROUNDS`` sets how many random rounds the property tests run (default 120, and
400 for the slow one; pycryptodome's pure-Python GF(2^128) arithmetic makes a 12-site round cost
about 0.15 s).
"""

from __future__ import annotations

import itertools
import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.secagg_harness import (
    STAGES,
    Federation,
    Identities,
    Stage,
    modular_sum,
    most_shares_released,
    random_inputs,
    reconstructable,
    site_names,
)

from alliance.core.errors import IntegrityError, ProtocolError, SecAggAbort
from alliance.secagg import ClientStage, Quantizer, ServerStage

ROUNDS = int(os.environ.get("ALLIANCE_SECAGG_ROUNDS", "120"))
#: The slow soak's rounds (thousands with ``ALLIANCE_SECAGG_ROUNDS=2000``): the edges it used to
#: find by sheer numbers are enumerated in the small-federation test below.
SOAK_ROUNDS = 400
#: Dropping here keeps a site's masked input out of the sum; later drops do not.
BEFORE_INPUT = (Stage.ADVERTISE, Stage.SHARE, Stage.MASK)
IDS = Identities(site_names(12))


def check_exact(
    fed: Federation, inputs: dict[str, np.ndarray], drops: dict[Stage, list[str]]
) -> None:
    result = fed.run(inputs, drops)
    gone = {s for stage in BEFORE_INPUT for s in drops.get(stage, [])}
    expected = tuple(s for s in fed.setup.sites if s not in gone)
    assert result.survivors == expected
    bits, length = fed.setup.modulus_bits, fed.setup.vector_length
    assert result.values.tolist() == modular_sum((inputs[s] for s in expected), bits, length)
    assert result.values.dtype == fed.setup.dtype
    seeds, keys = reconstructable(fed.releases, fed.setup.share_threshold)
    assert seeds == set(expected)  # exactly the survivors' self masks were revealed
    assert keys == set(fed.server.dropped)
    assert not seeds & keys


def _random_round(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 12), label="sites")
    t = data.draw(st.integers(n // 2 + 1, n), label="threshold")
    bits = data.draw(st.integers(1, 64), label="modulus_bits")
    length = data.draw(st.integers(1, 12), label="length")
    fed = Federation.create(n, vector_length=length, modulus_bits=bits, threshold=t, ids=IDS)
    n_drops = data.draw(st.integers(0, n - t), label="drops")
    dropped = data.draw(st.permutations(fed.setup.sites), label="order")[:n_drops]
    drops: dict[Stage, list[str]] = {}
    for site in dropped:
        drops.setdefault(data.draw(st.sampled_from(STAGES), label=site), []).append(site)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    check_exact(fed, random_inputs(fed.setup.sites, fed.setup, rng), drops)


_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=ROUNDS, **_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_random_rounds_sum_exactly_whatever_drops_within_tolerance(data: st.DataObject) -> None:
    _random_round(data)


@pytest.mark.slow
@settings(max_examples=max(ROUNDS, SOAK_ROUNDS), **_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_hundreds_of_random_rounds_sum_exactly(data: st.DataObject) -> None:
    _random_round(data)


@pytest.mark.parametrize(("n", "t"), [(3, 2), (3, 3), (4, 3), (4, 4)])
def test_small_federations_sum_exactly_under_every_tolerated_drop(n: int, t: int) -> None:
    """Every site dropping at every stage, as far as the threshold tolerates, at the narrowest
    and widest modulus: the edges a random search reaches only by luck, enumerated."""
    fed0 = Federation.create(n, ids=IDS)
    patterns: list[dict[Stage, list[str]]] = [{}]
    for k in range(1, n - t + 1):
        for sites in itertools.combinations(fed0.setup.sites, k):
            for stages in itertools.product(STAGES, repeat=k):
                drops: dict[Stage, list[str]] = {}
                for site, stage in zip(sites, stages, strict=True):
                    drops.setdefault(stage, []).append(site)
                patterns.append(drops)
    for i, drops in enumerate(patterns):
        bits = (1, 64)[i % 2]
        fed = Federation.create(n, vector_length=1 + i % 3, modulus_bits=bits, threshold=t, ids=IDS)
        check_exact(fed, random_inputs(fed.setup.sites, fed.setup, np.random.default_rng(i)), drops)


@pytest.mark.parametrize("stage", STAGES)
def test_twelve_sites_survive_any_four_drops_at_one_stage(stage: Stage) -> None:
    rng = np.random.default_rng(list(Stage).index(stage))
    fed = Federation.create(12, vector_length=32, modulus_bits=41, threshold=8, ids=IDS)
    drops = {stage: sorted(random.Random(stage.value).sample(fed.setup.sites, 4))}
    check_exact(fed, random_inputs(fed.setup.sites, fed.setup, rng), drops)


@pytest.mark.parametrize(
    "pattern",
    [
        (Stage.ADVERTISE, Stage.SHARE, Stage.MASK, Stage.CONFIRM),
        (Stage.SHARE, Stage.MASK, Stage.UNMASK, Stage.UNMASK),
        (Stage.ADVERTISE, Stage.MASK, Stage.CONFIRM, Stage.UNMASK),
        (Stage.MASK, Stage.MASK, Stage.CONFIRM, Stage.UNMASK),
    ],
)
def test_twelve_sites_survive_four_drops_spread_over_stages(pattern: tuple[Stage, ...]) -> None:
    fed = Federation.create(12, vector_length=16, modulus_bits=20, threshold=8, ids=IDS)
    sites = random.Random(str(pattern)).sample(fed.setup.sites, len(pattern))
    drops: dict[Stage, list[str]] = {}
    for stage, site in zip(pattern, sites, strict=True):
        drops.setdefault(stage, []).append(site)
    check_exact(fed, random_inputs(fed.setup.sites, fed.setup, np.random.default_rng(5)), drops)


@pytest.mark.parametrize(
    ("drops", "stage"),
    [
        ({Stage.ADVERTISE: 5}, "advertise"),
        ({Stage.SHARE: 5}, "share exchange"),
        ({Stage.MASK: 5}, "masked input"),
        ({Stage.CONFIRM: 5}, "consistency check"),
        ({Stage.UNMASK: 5}, "unmasking"),
        (
            {Stage.ADVERTISE: 1, Stage.SHARE: 1, Stage.MASK: 1, Stage.CONFIRM: 1, Stage.UNMASK: 1},
            "unmasking",
        ),
        ({Stage.MASK: 4, Stage.UNMASK: 1}, "unmasking"),
        ({Stage.SHARE: 2, Stage.CONFIRM: 3}, "consistency check"),
    ],
)
def test_a_fifth_drop_aborts_cleanly_revealing_nothing(drops: dict[Stage, int], stage: str) -> None:
    fed = Federation.create(12, vector_length=8, modulus_bits=32, threshold=8, ids=IDS)
    order = iter(random.Random(stage).sample(fed.setup.sites, 12))
    plan = {st_: [next(order) for _ in range(k)] for st_, k in drops.items()}
    inputs = random_inputs(fed.setup.sites, fed.setup, np.random.default_rng(1))
    with pytest.raises(SecAggAbort, match=rf"stage '{stage}': 7 sites remain, threshold 8"):
        fed.run(inputs, plan)
    assert fed.server.stage is ServerStage.ABORTED
    # Fewer than t shares of any secret left an honest site: nothing can be reconstructed.
    assert most_shares_released(fed.releases) < 8
    assert reconstructable(fed.releases, 8) == (set(), set())
    with pytest.raises(SecAggAbort, match="was aborted"):
        fed.server.result()


def test_masks_differ_every_round_and_attempt_for_the_same_inputs() -> None:
    inputs = None
    masked: list[np.ndarray] = []
    for round_, attempt in ((1, 0), (1, 1), (2, 0)):
        fed = Federation.create(4, vector_length=64, round_=round_, attempt=attempt, ids=IDS)
        if inputs is None:
            inputs = random_inputs(fed.setup.sites, fed.setup, np.random.default_rng(0))
        seen: dict[str, np.ndarray] = {}
        client = fed.clients["site-00"]
        mask = client.mask

        def spy(values: np.ndarray, *, survivors: list[str], _mask=mask, _seen=seen) -> np.ndarray:
            _seen["y"] = _mask(values, survivors=survivors)
            return _seen["y"]

        client.mask = spy  # type: ignore[method-assign]
        result = fed.run(inputs)
        assert result.values.tolist() == modular_sum(inputs.values(), 32, 64)
        assert not np.array_equal(seen["y"], inputs["site-00"])
        masked.append(seen["y"])
    for a, b in itertools.combinations(masked, 2):
        assert np.count_nonzero(a == b) < 3  # independent uniform 32-bit vectors


def test_float_updates_average_within_the_quantiser_bound() -> None:
    q = Quantizer(clip_range=0.5, value_bits=16, max_sites=6, max_weight=1000)
    fed = Federation.create(6, vector_length=100, modulus_bits=q.modulus_bits, ids=IDS)
    rng = np.random.default_rng(3)
    updates = {s: rng.normal(0, 0.3, 100).astype(np.float32) for s in fed.setup.sites}
    weights = {s: int(w) for s, w in zip(fed.setup.sites, rng.integers(1, 1001, 6), strict=True)}
    encoded = {s: q.encode(updates[s], weight=weights[s]).values for s in fed.setup.sites}
    result = fed.run(encoded, {Stage.MASK: ["site-02"]})
    total_weight = sum(weights[s] for s in result.survivors)
    mean = q.decode_sum(result.values, total_weight=total_weight)
    exact = (
        sum(
            weights[s] * np.clip(updates[s].astype(np.float64), -0.5, 0.5) for s in result.survivors
        )
        / total_weight
    )
    assert np.max(np.abs(mean - exact)) <= q.error_bound()
    assert np.max(np.abs(mean - exact)) > 0  # quantisation is not the identity


@pytest.mark.parametrize(("n", "k", "seed"), [(12, 4, 0), (16, 5, 1), (20, 6, 2)])
def test_sparse_neighbour_graph_rounds_are_exact(n: int, k: int, seed: int) -> None:
    fed = Federation.create(n, vector_length=8, modulus_bits=33, neighbours=k)
    graph = fed.setup.graph
    assert not graph.is_complete
    t, spare = fed.setup.share_threshold, n - fed.setup.quorum
    rng = random.Random(seed)
    # Drop sites while every neighbourhood keeps its threshold.
    drops: dict[Stage, list[str]] = {}
    taken: set[str] = set()
    for site in rng.sample(graph.sites, n):
        trial = taken | {site}
        if len(trial) > spare or any(len(graph.neighbourhood(s) - trial) < t for s in graph.sites):
            continue
        taken = trial
        drops.setdefault(rng.choice(STAGES), []).append(site)
    assert len(taken) >= 2
    check_exact(fed, random_inputs(fed.setup.sites, fed.setup, np.random.default_rng(seed)), drops)
    # Shares travelled only along edges.
    for response in fed.releases:
        owners = set(response.seed_shares) | set(response.key_shares)
        assert owners <= graph.neighbourhood(response.site)


def test_server_rejects_late_duplicate_foreign_and_malformed_messages() -> None:
    fed = Federation.create(3, vector_length=4, modulus_bits=20, ids=IDS)
    server, clients = fed.server, fed.clients
    adverts = {s: c.advertise() for s, c in clients.items()}
    for advert in adverts.values():
        server.receive_advert(advert)
    with pytest.raises(ProtocolError, match="second key advert"):
        server.receive_advert(adverts["site-00"])
    u1 = server.close_adverts()
    with pytest.raises(ProtocolError, match="belongs to stage 'advertise'"):
        server.receive_advert(adverts["site-00"])
    sealed = {s: c.share_keys(u1) for s, c in clients.items()}
    with pytest.raises(IntegrityError, match="addressed to"):
        server.receive_shares("site-00", {"site-01": sealed["site-00"]["site-01"]})
    with pytest.raises(ProtocolError, match="not taking part"):
        server.receive_shares("site-99", sealed["site-00"])
    for s, boxes in sealed.items():
        server.receive_shares(s, boxes)
    routing = server.close_shares()
    vectors = {}
    for s, c in clients.items():
        c.receive_shares(routing.sealed[s])
        vectors[s] = c.mask(np.arange(4, dtype=np.uint32), survivors=list(routing.survivors))
    bad_inputs = [
        (vectors["site-00"].astype(np.uint64), "uint64"),
        (vectors["site-00"][:3], "shape"),
        (np.full(4, 1 << 20, np.uint32), "2\\*\\*20"),
    ]
    for vector, message in bad_inputs:
        with pytest.raises(IntegrityError, match=message):
            server.receive_masked("site-00", vector)
    for s, v in vectors.items():
        server.receive_masked(s, v)
    with pytest.raises(ProtocolError, match="second masked input"):
        server.receive_masked("site-00", vectors["site-00"])
    u3 = server.close_masked()
    for s, c in clients.items():
        server.receive_confirmation(s, c.confirm(list(u3)))
    request = server.close_confirmations()
    responses = [c.answer(request) for c in clients.values()]
    for r in responses:
        server.receive_unmask(r)
    with pytest.raises(ProtocolError, match="second unmask response"):
        server.receive_unmask(responses[0])
    total, survivors = server.result()
    assert survivors == u3
    assert total.tolist() == [3 * i for i in range(4)]
    assert server.result().values is total
    assert all(c.stage is ClientStage.UNMASKED for c in clients.values())
