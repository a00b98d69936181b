"""Key batches (alliance.secagg.batched): one set-up, independent per-round key slots.

- every slot sums exactly, each with its own dropouts, and reveals only its own secrets;
- a key rebuilt because a site dropped in one round unmasks none of its other rounds;
- sites on files need not confirm or unmask when the others hold enough shares;
- a lying coordinator still never gets both secrets of one site in one slot: a slot masks once,
  answers one unmask request, and a slot's messages verify in no other slot;
- the default (``key_batch = 1``) keeps today's bytes: context encoding, plan and task JSON;
- the set-up messages (alliance.protocol.secagg_messages) carry every slot through bytes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from tests.unit.secagg_harness import (
    Identities,
    modular_sum,
    random_inputs,
    reconstructable,
    site_names,
    wire,
    wire_bytes,
)

from alliance.core.errors import ConfigError, IntegrityError, ProtocolError, SecAggAbort
from alliance.protocol.codec import decode, encode
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import TrainingPlan, TrainTask
from alliance.protocol.privacy import SecAggPlan
from alliance.protocol.secagg_messages import (
    CohortKeys,
    KeyAdverts,
    RoutedShares,
    SealedShares,
    SecAggMessage,
    SlotShares,
)
from alliance.secagg import (
    AggregateSum,
    KeyAdvert,
    KeyBatchClient,
    KeyBatchServer,
    KeyBatchSetup,
    KeyPurpose,
    MaskExpander,
    MaskPurpose,
    RoundContext,
    ShareRouting,
    UnmaskResponse,
    agree_key,
    canonical_bytes,
    combine_shares,
)
from alliance.secagg.keys import private_key_from_bytes, public_key_bytes

IDS = Identities(site_names(12))
CONTEXT = RoundContext("consortium", "study", 3, 41)


@dataclass
class Batch:
    """An honest coordinator and honest sites after a key batch's set-up."""

    setup: KeyBatchSetup
    clients: dict[str, KeyBatchClient]
    server: KeyBatchServer
    adverts: list[dict[str, KeyAdvert]]
    routing: list[ShareRouting]
    #: Each site's masked input, per slot.
    masked: dict[tuple[int, str], np.ndarray]
    #: Every unmask response an honest site released, per slot.
    releases: dict[int, list[UnmaskResponse]]


def set_up(
    n: int, size: int, *, threshold: int | None = None, neighbours: int | None = None
) -> Batch:
    setup = KeyBatchSetup(
        context=CONTEXT,
        size=size,
        sites=tuple(site_names(n)),
        vector_length=6,
        modulus_bits=32,
        threshold=threshold,
        neighbours=neighbours,
    )
    clients = {
        s: KeyBatchClient(setup, s, sign=IDS.signer(s), verify=IDS.verify) for s in setup.sites
    }
    server = KeyBatchServer(setup, verify=IDS.verify)
    for s, client in clients.items():
        server.receive_adverts(s, [wire(a) for a in client.advertise()])
    adverts = server.close_adverts()
    for s, client in clients.items():
        sealed = client.share_keys([{k: wire(a) for k, a in slot.items()} for slot in adverts])
        server.receive_shares(s, [None if box is None else wire_bytes(box) for box in sealed])
    routing = server.close_shares()
    for s, client in clients.items():
        client.receive_shares(
            [(wire_bytes(r.sealed[s]), r.survivors) if s in r.sealed else None for r in routing]
        )
    return Batch(setup, clients, server, adverts, routing, {}, {})


def run_slot(
    batch: Batch,
    inputs: Mapping[str, np.ndarray],
    *,
    absent: Collection[str] = (),
    offline: Collection[str] = (),
) -> tuple[int, AggregateSum]:
    """One round on the batch's next slot: every site but ``absent`` masks; only the sites not
    ``offline`` confirm and unmask (all of U3 when they cannot complete the round alone)."""
    slot = batch.server.take()
    server = batch.server.server(slot)
    for s in batch.setup.sites:
        if s not in absent:
            batch.masked[(slot, s)] = batch.clients[s].mask(slot, inputs[s])
            server.receive_masked(s, batch.masked[(slot, s)])
    u3 = server.close_masked()
    online = [s for s in u3 if s not in offline]
    asked = online if server.recoverable_by(online) else list(u3)
    for s in asked:
        server.receive_confirmation(s, batch.clients[s].slot(slot).confirm(list(u3)))
    request = wire(server.close_confirmations())
    batch.releases[slot] = []
    for s in request.confirmations:
        response = batch.clients[s].slot(slot).answer(request)
        batch.releases[slot].append(response)
        server.receive_unmask(wire(response))
    return slot, server.result()


def inputs_for(batch: Batch, seed: int) -> dict[str, np.ndarray]:
    return random_inputs(batch.setup.sites, batch.setup.slots[0], np.random.default_rng(seed))


# -- exact sums, independent slots ------------------------------------------------------------


def test_every_slot_sums_exactly_with_its_own_dropouts_and_reveals_only_its_own_secrets() -> None:
    batch = set_up(7, 4, threshold=4)
    dropouts: list[set[str]] = [set(), {"site-02"}, {"site-02", "site-05"}, {"site-06"}]
    for round_, absent in enumerate(dropouts):
        inputs = inputs_for(batch, round_)
        slot, (total, survivors) = run_slot(batch, inputs, absent=absent)
        assert slot == round_
        expected = [s for s in batch.setup.sites if s not in absent]
        assert list(survivors) == expected
        assert total.tolist() == modular_sum((inputs[s] for s in expected), 32, 6)
        seeds, keys = reconstructable(batch.releases[slot], batch.setup.slots[0].share_threshold)
        assert seeds == set(expected)
        assert keys == absent  # only this round's dropouts: other rounds' keys stay secret
    assert batch.server.remaining == 0
    with pytest.raises(SecAggAbort, match="spent; set up a new one"):
        batch.server.take()


def test_slots_of_a_sparse_graph_each_have_their_own_neighbours_and_sum_exactly() -> None:
    batch = set_up(9, 3, neighbours=4)
    graphs = [dict(slot.graph.adjacency) for slot in batch.setup.slots]
    assert graphs[0] != graphs[1] or graphs[1] != graphs[2]  # a fresh ring order per slot
    for round_, absent in enumerate([set(), {"site-03"}, {"site-07"}]):
        inputs = inputs_for(batch, 20 + round_)
        _, (total, survivors) = run_slot(batch, inputs, absent=absent)
        assert set(survivors) == set(batch.setup.sites) - absent
        assert total.tolist() == modular_sum((inputs[s] for s in survivors), 32, 6)


def test_a_key_rebuilt_because_a_site_dropped_unmasks_none_of_its_other_rounds() -> None:
    """The unsound design (one study key) fails exactly here; independent slots do not."""
    batch = set_up(5, 2, threshold=3)
    target = "site-03"
    first = inputs_for(batch, 1)
    run_slot(batch, first)  # round 1: the target survives, its seed b is revealed
    run_slot(batch, inputs_for(batch, 2), absent={target})  # round 2: it drops
    t = batch.setup.slots[0].share_threshold
    seed_shares = [r.seed_shares[target] for r in batch.releases[0]]
    key_shares = [r.key_shares[target] for r in batch.releases[1]]
    seed_round_1 = combine_shares(seed_shares, threshold=t)
    key_round_2 = private_key_from_bytes(combine_shares(key_shares, threshold=t))
    assert public_key_bytes(key_round_2) == batch.adverts[1][target].mask_key
    assert public_key_bytes(key_round_2) != batch.adverts[0][target].mask_key
    # Everything the coordinator holds about round 1, plus the key of round 2: still masked.
    attempt = _unmask_with(batch, target, seed_round_1, key_round_2)
    assert np.mean(attempt == first[target]) < 0.5
    # Control: the same computation with the round-1 key (which no honest site released) would
    # have given the input, so it is the key's independence that protects it.
    own_key = batch.clients[target].slot(0)._mask_key
    assert np.array_equal(_unmask_with(batch, target, seed_round_1, own_key), first[target])


def _unmask_with(batch: Batch, target: str, seed: bytes, mask_key: X25519PrivateKey) -> np.ndarray:
    """``target``'s slot-0 masked input less its self mask and its pairwise masks as derived
    from ``mask_key``."""
    slot_0 = batch.setup.slots[0]
    out = batch.masked[(0, target)].copy()
    expander = MaskExpander(length=6, modulus_bits=32)
    expander.add(out, seed, MaskPurpose.SELF_MASK, sign=-1)
    for v in slot_0.sites:
        if v != target:
            pair = agree_key(
                mask_key,
                batch.adverts[0][v].mask_key,
                purpose=KeyPurpose.PAIRWISE_MASK,
                context=slot_0.context,
                sites=(target, v),
            )
            expander.add(out, pair, MaskPurpose.PAIRWISE_MASK, sign=-1 if target < v else 1)
    return out


def test_sites_on_files_need_not_confirm_or_unmask_when_the_others_can() -> None:
    batch = set_up(5, 3, threshold=3)
    offline = {"site-01", "site-03"}
    inputs = inputs_for(batch, 7)
    slot, (total, survivors) = run_slot(batch, inputs, offline=offline)
    assert total.tolist() == modular_sum(inputs.values(), 32, 6)
    assert {r.site for r in batch.releases[slot]} == {"site-00", "site-02", "site-04"}
    for s in offline:  # they masked and were never asked again
        assert batch.clients[s].slot(slot).stage.value == "masked"
    # An offline site drops: the three online sites still remove its masks.
    inputs = inputs_for(batch, 8)
    slot, (total, survivors) = run_slot(batch, inputs, absent={"site-03"}, offline=offline)
    assert "site-03" not in survivors
    assert total.tolist() == modular_sum((inputs[s] for s in survivors), 32, 6)
    assert {r.site for r in batch.releases[slot]} == {"site-00", "site-02", "site-04"}
    # An online site drops: two online survivors hold too few shares; the offline ones are asked.
    inputs = inputs_for(batch, 9)
    slot, (total, survivors) = run_slot(batch, inputs, absent={"site-00"}, offline=offline)
    assert total.tolist() == modular_sum((inputs[s] for s in survivors), 32, 6)
    assert {r.site for r in batch.releases[slot]} == set(survivors)


def test_recoverable_by_is_false_before_the_masked_inputs_are_in() -> None:
    batch = set_up(4, 1)
    server = batch.server.server(batch.server.take())
    assert not server.recoverable_by(batch.setup.sites)


# -- a lying coordinator ----------------------------------------------------------------------


def test_a_slot_masks_one_input_even_when_handed_to_another_round() -> None:
    batch = set_up(4, 2)
    client = batch.clients["site-01"]
    vector = inputs_for(batch, 0)["site-01"]
    client.mask(0, vector)
    assert client.usable == (1,)
    with pytest.raises(SecAggAbort, match="slot 0 is spent"):
        client.mask(0, vector)
    with pytest.raises(SecAggAbort, match="no slot 2"):
        client.mask(2, vector)


def test_both_secrets_of_one_site_in_one_slot_are_never_released() -> None:
    batch = set_up(5, 2, threshold=3)
    target = "site-02"
    inputs = inputs_for(batch, 3)
    slot = batch.server.take()
    server = batch.server.server(slot)
    masked = {s: batch.clients[s].mask(slot, inputs[s]) for s in batch.setup.sites}
    # The coordinator withholds the target's masked input and says it dropped...
    for s in batch.setup.sites:
        if s != target:
            server.receive_masked(s, masked[s])
    u3 = server.close_masked()
    for s in u3:
        server.receive_confirmation(s, batch.clients[s].slot(slot).confirm(list(u3)))
    lie = server.close_confirmations()
    released = [batch.clients[s].slot(slot).answer(lie) for s in lie.confirmations]
    # ...then tells everyone the target survived after all, with every signature it holds.
    everyone = list(batch.setup.sites)
    truth = (everyone, [], dict(lie.confirmations))
    for s in batch.setup.sites:
        with pytest.raises(SecAggAbort, match=r"already answered|differs|not 'confirmed'"):
            released.append(batch.clients[s].slot(slot).unmask(*truth))
    # ...or hands the spent slot to the next round: the target masks nothing new with it.
    with pytest.raises(SecAggAbort, match="spent"):
        batch.clients[target].mask(slot, inputs[target])
    seeds, keys = reconstructable(released, threshold=3)
    assert keys == {target}
    assert target not in seeds


def test_a_site_that_really_dropped_cannot_be_made_to_reveal_its_slot_later() -> None:
    batch = set_up(5, 2, threshold=3)
    target = "site-04"
    inputs = inputs_for(batch, 4)
    run_slot(batch, inputs, absent={target})  # its key of slot 0 is rebuilt, rightly
    # The coordinator hands slot 0 to the target in a later round: it masks (first use)...
    late = batch.clients[target].mask(0, inputs[target])
    assert late.shape == (6,)
    # ...but no honest site answers a second unmask request for slot 0, so its seed stays hidden.
    request = (list(batch.setup.sites), [], {})
    released = list(batch.releases[0])
    for s in batch.setup.sites:
        if s != target:
            with pytest.raises(SecAggAbort, match="already answered"):
                released.append(batch.clients[s].slot(0).unmask(*request))
    seeds, keys = reconstructable(released, threshold=3)
    assert keys == {target}
    assert target not in seeds


def test_one_slots_adverts_and_shares_do_not_verify_in_another() -> None:
    setup = KeyBatchSetup(
        context=CONTEXT, size=3, sites=tuple(site_names(4)), vector_length=6, modulus_bits=32
    )
    clients = {
        s: KeyBatchClient(setup, s, sign=IDS.signer(s), verify=IDS.verify) for s in setup.sites
    }
    server = KeyBatchServer(setup, verify=IDS.verify)
    adverts = {s: c.advertise() for s, c in clients.items()}
    # The coordinator refuses adverts in the wrong slots, all or none...
    swapped = [adverts["site-00"][1], adverts["site-00"][0], adverts["site-00"][2]]
    with pytest.raises(IntegrityError, match="replayed"):
        server.receive_adverts("site-00", swapped)
    reused = [
        adverts["site-00"][0],
        dataclasses.replace(adverts["site-00"][1], mask_key=adverts["site-00"][0].mask_key),
        adverts["site-00"][2],
    ]
    with pytest.raises(IntegrityError, match="public key twice"):
        server.receive_adverts("site-00", reused)
    for s in setup.sites:
        server.receive_adverts(s, adverts[s])  # nothing was accepted before: no "second advert"
    u1 = server.close_adverts()
    # ...and a site refuses a slot whose adverts are another slot's, and uses the others.
    client = clients["site-00"]
    sealed = client.share_keys([u1[1], u1[1], u1[2]])
    assert sealed[0] is None
    assert sealed[1] is not None
    assert sealed[2] is not None
    assert set(client.refused) == {0}
    assert "replayed" in client.refused[0]
    with pytest.raises(SecAggAbort, match="already answered"):
        client.share_keys(u1)
    others = {s: c.share_keys(u1) for s, c in clients.items() if s != "site-00"}
    # Shares sealed for slot 2 do not open as slot 1's.
    routed_2 = {u: boxes[2]["site-00"] for u, boxes in others.items() if boxes[2]}
    survivors = list(setup.sites)
    client.receive_shares([None, (routed_2, survivors), (routed_2, survivors)])
    assert "do not decrypt" in client.refused[1]
    assert client.usable == (2,)


def test_a_failed_set_up_fails_the_whole_batch() -> None:
    setup = KeyBatchSetup(
        context=CONTEXT, size=2, sites=tuple(site_names(4)), vector_length=6, modulus_bits=32
    )
    server = KeyBatchServer(setup)
    for s in site_names(2):  # two of four advertise: below the threshold of 3
        client = KeyBatchClient(setup, s, sign=IDS.signer(s), verify=IDS.verify)
        server.receive_adverts(s, client.advertise())
    with pytest.raises(SecAggAbort, match="aborted"):
        server.close_adverts()
    assert server.aborted is not None
    assert not server.ready
    with pytest.raises(SecAggAbort, match="failed"):
        server.take()


# -- parameters and the default's bytes -------------------------------------------------------


@pytest.mark.parametrize("size", [0, 101, True, 2.0])
def test_a_batch_size_out_of_range_is_refused(size: object) -> None:
    with pytest.raises(ConfigError, match="key_batch"):
        KeyBatchSetup(
            context=CONTEXT,
            size=size,  # type: ignore[arg-type]
            sites=("a", "b", "c"),
            vector_length=4,
            modulus_bits=32,
        )


def test_a_batch_is_set_up_in_a_context_without_a_slot() -> None:
    with pytest.raises(ConfigError, match="without a slot"):
        KeyBatchSetup(
            context=CONTEXT.with_slot(0),
            size=2,
            sites=("a", "b", "c"),
            vector_length=4,
            modulus_bits=32,
        )


def test_a_context_without_a_slot_encodes_as_before_and_a_slot_changes_everything() -> None:
    assert CONTEXT.to_bytes() == canonical_bytes(
        "alliance-secagg-context-v1", "consortium", "study", 3, 41
    )
    assert CONTEXT.to_json() == {
        "federation": "consortium",
        "study": "study",
        "round": 3,
        "attempt": 41,
    }
    slots = [CONTEXT.with_slot(j) for j in range(3)]
    encodings = {c.to_bytes() for c in [CONTEXT, *slots]} | {c.public_seed for c in slots}
    assert len(encodings) == 7
    for c in [CONTEXT, *slots]:
        assert RoundContext.from_json(json.loads(json.dumps(c.to_json()))) == c
    assert "key slot 2 of the batch set up in" in slots[2].describe()
    for bad in ({**slots[0].to_json(), "slot": None}, {**slots[0].to_json(), "slot": -1}):
        with pytest.raises(ProtocolError, match="slot"):
            RoundContext.from_json(bad)


def test_key_batch_is_validated_and_left_out_of_the_json_when_it_is_one() -> None:
    default = SecAggPlan(enabled=True)
    assert "key_batch" not in default.to_json()
    assert SecAggPlan.from_json(default.to_json()) == default
    batched = SecAggPlan(enabled=True, key_batch=10)
    assert batched.to_json()["key_batch"] == 10
    assert SecAggPlan.from_json(batched.to_json()) == batched
    for value in (0, 101, "5", True):
        with pytest.raises(ConfigError, match=r"\[secure_aggregation\] key_batch .*got") as info:
            SecAggPlan.from_table({"key_batch": value})
        assert repr(value) in str(info.value)
        assert "use 1 for fresh keys every round" in str(info.value)
    with pytest.raises(ProtocolError, match="secure aggregation plan"):
        SecAggPlan.from_json({**batched.to_json(), "key_batch": 0})


def _task(key_slot: RoundContext | None, secagg: SecAggPlan) -> TrainTask:
    header = Header(MessageKind.TRAIN_TASK, "consortium", "study", 3, COORDINATOR, "site-00")
    weights = {"w": np.zeros(2, dtype=np.float32)}
    return TrainTask(
        header,
        1,
        TrainingPlan(),
        weights,
        secagg=secagg,
        cohort=("a", "b"),
        attempt=41,
        key_slot=key_slot,
    )


def test_a_train_task_carries_its_key_slot_only_with_key_batches() -> None:
    plain = _task(None, SecAggPlan(enabled=True)).to_envelope()
    assert "key_slot" not in plain.body
    assert "key_batch" not in plain.body["secagg"]
    assert TrainTask.from_envelope(plain).key_slot is None
    batched = _task(CONTEXT.with_slot(4), SecAggPlan(enabled=True, key_batch=5)).to_envelope()
    assert TrainTask.from_envelope(batched).key_slot == CONTEXT.with_slot(4)
    no_slot = dataclasses.replace(batched, body={**batched.body, "key_slot": CONTEXT.to_json()})
    with pytest.raises(ProtocolError, match="must name a slot"):
        TrainTask.from_envelope(no_slot)


# -- the set-up messages ----------------------------------------------------------------------


def test_the_set_up_messages_carry_every_slot_through_bytes() -> None:
    batch = set_up(4, 2)
    site = "site-01"
    up = Header(MessageKind.SECAGG, "consortium", "study", 3, site, COORDINATOR)
    down = Header(MessageKind.SECAGG, "consortium", "study", 3, COORDINATOR, site)
    adverts = KeyAdverts(up, 41, tuple(a[site] for a in batch.adverts), b"\x01\x02")
    assert [a.context.slot for a in adverts.adverts] == [0, 1]
    messages: list[SecAggMessage] = [
        adverts,
        CohortKeys(down, 41, tuple(batch.adverts), dict.fromkeys(batch.setup.sites, b"\xff")),
        SealedShares(up, 41, (batch.routing[0].sealed["site-00"], None)),
        RoutedShares(
            down, 41, tuple(SlotShares(r.sealed[site], r.survivors) for r in batch.routing)
        ),
    ]
    for msg in messages:
        assert SecAggMessage.from_envelope(decode(encode(msg.to_envelope()))) == msg
