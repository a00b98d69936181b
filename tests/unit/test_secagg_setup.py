"""Round context, masking graph, round setup and message formats of alliance.secagg."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from alliance.core.errors import ConfigError, ProtocolError
from alliance.secagg import (
    KeyAdvert,
    MaskingGraph,
    RoundContext,
    RoundSetup,
    SecretShare,
    UnmaskRequest,
    UnmaskResponse,
    default_threshold,
)

CTX = RoundContext("consortium", "study", 3, 1)
SITES = tuple(f"site-{i:02d}" for i in range(12))


def setup(**overrides: Any) -> RoundSetup:
    kwargs: dict[str, Any] = {
        "context": CTX,
        "sites": SITES,
        "vector_length": 10,
        "modulus_bits": 32,
    }
    kwargs.update(overrides)
    return RoundSetup(**kwargs)


# -- context --------------------------------------------------------------------------------------


def test_context_round_trips_and_every_field_changes_its_bytes() -> None:
    assert RoundContext.from_json(json.loads(json.dumps(CTX.to_json()))) == CTX
    variants = [
        RoundContext("other", "study", 3, 1),
        RoundContext("consortium", "other", 3, 1),
        RoundContext("consortium", "study", 4, 1),
        RoundContext("consortium", "study", 3, 2),
    ]
    assert len({CTX.to_bytes(), *(v.to_bytes() for v in variants)}) == 5
    assert len({CTX.public_seed, *(v.public_seed for v in variants)}) == 5


@pytest.mark.parametrize(
    "raw",
    [
        {"federation": "f", "study": "s", "round": 1},
        {"federation": "f", "study": "s", "round": -1, "attempt": 0},
        {"federation": "", "study": "s", "round": 1, "attempt": 0},
        {"federation": "f", "study": "s", "round": True, "attempt": 0},
        {"federation": "f", "study": "s", "round": 1, "attempt": 0, "x": 1},
        ["f", "s", 1, 0],
    ],
)
def test_malformed_contexts_are_protocol_errors(raw: Any) -> None:
    with pytest.raises(ProtocolError):
        RoundContext.from_json(raw)


# -- graph ----------------------------------------------------------------------------------------


def test_complete_graph_joins_every_pair_and_indexes_sorted_sites() -> None:
    graph = MaskingGraph.complete(["c", "a", "b"])
    assert graph.sites == ("a", "b", "c")
    assert graph.neighbours("a") == {"b", "c"}
    assert graph.neighbourhood("a") == {"a", "b", "c"}
    assert [graph.share_index(s) for s in "abc"] == [1, 2, 3]
    assert graph.is_complete


@pytest.mark.parametrize(("n", "k"), [(12, 4), (12, 5), (13, 4), (30, 6), (31, 7), (8, 2)])
def test_ring_graph_is_symmetric_and_about_k_regular(n: int, k: int) -> None:
    sites = [f"s{i}" for i in range(n)]
    graph = MaskingGraph.ring(sites, degree=k, seed=b"seed")
    for s in sites:
        assert s not in graph.neighbours(s)
        for v in graph.neighbours(s):
            assert s in graph.neighbours(v)
        assert k <= len(graph.neighbours(s)) <= k + 1
        if k % 2 == 0 or n % 2 == 0:
            assert len(graph.neighbours(s)) == k
    assert graph.neighbourhood_size == k + 1


def test_ring_graph_is_deterministic_per_seed_and_complete_when_dense() -> None:
    sites = [f"s{i}" for i in range(20)]
    first = MaskingGraph.ring(sites, degree=4, seed=b"one")
    assert first == MaskingGraph.ring(reversed(sites), degree=4, seed=b"one")
    assert first.adjacency != MaskingGraph.ring(sites, degree=4, seed=b"two").adjacency
    assert MaskingGraph.ring(sites, degree=19, seed=b"one").is_complete
    with pytest.raises(ConfigError, match="neighbours"):
        MaskingGraph.ring(sites, degree=1, seed=b"one")


def test_site_lists_must_be_unique_non_empty_strings() -> None:
    with pytest.raises(ConfigError, match="repeats"):
        MaskingGraph.complete(["a", "b", "a"])
    with pytest.raises(ConfigError, match="non-empty"):
        MaskingGraph.complete(["a", ""])


# -- setup ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "t"), [(1, 1), (2, 2), (3, 2), (4, 3), (7, 5), (9, 6), (12, 8), (100, 67)]
)
def test_default_threshold_is_n_minus_a_third(n: int, t: int) -> None:
    # One default for the study and the round set-up (it was 12 -> 9 here, 12 -> 8 there).
    assert default_threshold(n) == t
    assert n - t == n // 3  # any third of the sites may drop out
    assert 2 * t > n  # the set-up's floor: no coordinator alone gets both shares of a site
    # Fewer than a third of the sites colluding with the coordinator stay below 2t - n.
    assert -(-n // 3) - 1 < 2 * t - n


def test_setup_resolves_threshold_and_quorum() -> None:
    complete = setup()
    assert complete.sites == SITES
    assert complete.share_threshold == complete.quorum == 8
    assert setup(threshold=8).share_threshold == 8
    sparse = setup(neighbours=4)
    assert sparse.share_threshold == 4  # of a neighbourhood of 5
    assert sparse.quorum == 8
    assert not sparse.graph.is_complete
    assert setup(sites=tuple(reversed(SITES))).sites == SITES


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"threshold": 6}, "too low"),
        ({"threshold": 13}, "threshold"),
        ({"threshold": 1}, "threshold"),
        ({"neighbours": 4, "threshold": 2}, "too low"),
        ({"sites": ("only",)}, "at least 2"),
        ({"sites": ("a", "a", "b")}, "repeats"),
        ({"vector_length": 0}, "vector_length"),
        ({"modulus_bits": 65}, "modulus_bits"),
        ({"neighbours": 0}, "neighbours"),
    ],
)
def test_invalid_setups_are_config_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        setup(**overrides)


# -- messages -------------------------------------------------------------------------------------


def _advert() -> KeyAdvert:
    return KeyAdvert("site-01", CTX, os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(64))


def _round_trip(message: Any) -> Any:
    return type(message).from_json(json.loads(json.dumps(message.to_json())))


def test_messages_round_trip_through_json() -> None:
    advert = _advert()
    assert _round_trip(advert) == advert
    request = UnmaskRequest(CTX, ("a", "b", "c"), ("d",), {"a": b"sig-a", "b": b"sig-b"})
    assert _round_trip(request) == request
    response = UnmaskResponse(
        "a",
        CTX,
        {"a": SecretShare(1, os.urandom(32)), "b": SecretShare(1, os.urandom(32))},
        {"d": SecretShare(1, os.urandom(32))},
    )
    assert _round_trip(response) == response
    shape = advert.to_json()
    assert set(shape) == {
        "site",
        "context",
        "cipher_key",
        "mask_key",
        "seed_commitment",
        "signature",
    }
    assert isinstance(shape["mask_key"], str)


def test_advert_signature_covers_every_field() -> None:
    advert = _advert()
    variants = [
        KeyAdvert("site-02", *_fields(advert)[1:]),
        KeyAdvert(advert.site, RoundContext("consortium", "study", 3, 2), *_fields(advert)[2:]),
        KeyAdvert(advert.site, CTX, os.urandom(32), *_fields(advert)[3:]),
        KeyAdvert(advert.site, CTX, advert.cipher_key, os.urandom(32), *_fields(advert)[4:]),
        KeyAdvert(
            advert.site, CTX, advert.cipher_key, advert.mask_key, os.urandom(32), advert.signature
        ),
    ]
    signed = {advert.signed_bytes(), *(v.signed_bytes() for v in variants)}
    assert len(signed) == 6


def _fields(advert: KeyAdvert) -> tuple[Any, ...]:
    return (
        advert.site,
        advert.context,
        advert.cipher_key,
        advert.mask_key,
        advert.seed_commitment,
        advert.signature,
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda j: j.update(extra=1),
        lambda j: j.pop("signature"),
        lambda j: j.update(mask_key="not base64!"),
        lambda j: j.update(mask_key="AAAA"),
        lambda j: j.update(signature=""),
        lambda j: j.update(site=""),
        lambda j: j.update(context={"federation": "f"}),
    ],
)
def test_malformed_adverts_are_protocol_errors(mutate: Any) -> None:
    raw = _advert().to_json()
    mutate(raw)
    with pytest.raises(ProtocolError):
        KeyAdvert.from_json(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"site": "a", "context": CTX.to_json(), "seed_shares": [], "key_shares": {}},
        {
            "site": "a",
            "context": CTX.to_json(),
            "seed_shares": {"b": {"index": 0, "share": "AAAA"}},
            "key_shares": {},
        },
        {
            "site": "a",
            "context": CTX.to_json(),
            "seed_shares": {"b": {"index": "1", "share": "AAAA"}},
            "key_shares": {},
        },
    ],
)
def test_malformed_unmask_responses_are_protocol_errors(raw: Any) -> None:
    with pytest.raises(ProtocolError):
        UnmaskResponse.from_json(raw)
