"""A lying or replaying coordinator, and forging parties, against honest secagg clients.

The invariant checked throughout: whatever the coordinator asks, the honest sites' released
shares never let anyone rebuild both the self-mask seed ``b`` and the mask key ``s_sk`` of one
site (which would unmask that site's input).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from tests.unit.secagg_harness import (
    Federation,
    Identities,
    modular_sum,
    random_inputs,
    reconstructable,
    site_names,
)

from alliance.core.errors import IntegrityError, SecAggAbort
from alliance.secagg import (
    ClientStage,
    KeyAdvert,
    KeyPurpose,
    SecretShare,
    UnmaskResponse,
    agree_key,
    confirmation_bytes,
)
from alliance.secagg.keys import public_key_bytes
from alliance.secagg.sealing import seal_shares

IDS = Identities(site_names(12))
TARGET = "site-05"


@dataclasses.dataclass
class Progress:
    """An honest run stopped after the masked inputs (U2 = U3 = everyone)."""

    fed: Federation
    inputs: dict[str, np.ndarray]
    adverts: dict[str, KeyAdvert]
    sealed: dict[str, dict[str, bytes]]
    u2: tuple[str, ...]


def until_masked(n: int, *, threshold: int | None = None, round_: int = 1) -> Progress:
    fed = Federation.create(n, vector_length=6, threshold=threshold, round_=round_, ids=IDS)
    inputs = random_inputs(fed.setup.sites, fed.setup, np.random.default_rng(round_))
    for client in fed.clients.values():
        fed.server.receive_advert(client.advertise())
    adverts = fed.server.close_adverts()
    for s, client in fed.clients.items():
        fed.server.receive_shares(s, client.share_keys(adverts))
    routing = fed.server.close_shares()
    for s, client in fed.clients.items():
        client.receive_shares(routing.sealed[s])
        fed.server.receive_masked(s, client.mask(inputs[s], survivors=list(routing.survivors)))
    fed.server.close_masked()
    return Progress(fed, inputs, adverts, routing.sealed, routing.survivors)


def signatures(p: Progress, survivors: list[str]) -> dict[str, bytes]:
    data = confirmation_bytes(p.fed.setup.context, survivors)
    return {s: IDS.keys[s].sign(data) for s in survivors}


def refuses(call: object, *args: object, match: str) -> None:
    with pytest.raises(SecAggAbort, match=match):
        call(*args)  # type: ignore[operator]


# -- the consistency check ------------------------------------------------------------------------


def test_a_site_listed_both_alive_and_dropped_gets_nothing_and_changes_nothing() -> None:
    p = until_masked(5)
    everyone = list(p.u2)
    for s, client in p.fed.clients.items():
        p.fed.server.receive_confirmation(s, client.confirm(everyone))
    honest = p.fed.server.close_confirmations()
    for client in p.fed.clients.values():
        refuses(
            client.unmask,
            everyone,
            ["site-02"],
            honest.confirmations,
            match="both alive and dropped",
        )
        assert client.stage is ClientStage.CONFIRMED
    # The refusals changed no state: the honest request is still answered.
    for client in p.fed.clients.values():
        p.fed.server.receive_unmask(client.answer(honest))
    total, _ = p.fed.server.result()
    assert total.tolist() == modular_sum(p.inputs.values(), 32, 6)


@pytest.mark.parametrize("told_dropped", [0, 3, 4, 5, 7, 8, 11])
def test_telling_some_sites_the_target_dropped_never_reveals_both_its_secrets(
    told_dropped: int,
) -> None:
    p = until_masked(12, threshold=8)
    everyone = list(p.u2)
    without = [s for s in everyone if s != TARGET]
    group_b = without[-told_dropped:] if told_dropped else []
    views = {s: (without if s in group_b else everyone) for s in everyone}
    sigs: dict[str, bytes] = {s: p.fed.clients[s].confirm(v) for s, v in views.items()}
    # The coordinator tries both stories on every site, with every signature it holds.
    alive_story = (everyone, [], {s: sigs[s] for s in everyone})
    dropped_story = (without, [TARGET], {s: sigs[s] for s in without})
    released: list[UnmaskResponse] = []
    refusals = 0
    for s, client in p.fed.clients.items():
        for story in (dropped_story, alive_story) if s in group_b else (alive_story, dropped_story):
            try:
                released.append(client.unmask(*story))
            except SecAggAbort:
                refusals += 1
    seeds, keys = reconstructable(released, threshold=8)
    assert not seeds & keys
    assert refusals >= 12  # every site refused at least one of the two stories
    if told_dropped <= 4:  # ≥ 8 sites confirmed the true list: that story goes through
        assert TARGET in seeds
        assert not keys
    if told_dropped >= 8:
        assert keys == {TARGET}
        assert TARGET not in seeds


def test_a_second_unmask_request_is_refused_even_when_identical() -> None:
    p = until_masked(4)
    everyone = list(p.u2)
    sigs = {s: c.confirm(everyone) for s, c in p.fed.clients.items()}
    client = p.fed.clients["site-00"]
    first = client.unmask(everyone, [], sigs)
    assert set(first.seed_shares) == set(everyone)
    assert not first.key_shares
    refuses(client.unmask, everyone, [], sigs, match="already answered")
    refuses(client.unmask, [s for s in everyone if s != TARGET], [], sigs, match="already")


@pytest.mark.parametrize(
    ("survivors", "dropped", "which_sigs", "match"),
    [
        # Survivors other than the confirmed list.
        (["site-00", "site-01", "site-02"], ["site-03"], "listed", "differs from|not include"),
        # A dropped site omitted: its masks would stay, and the list is not U2 \ U3.
        (["site-00", "site-01", "site-02", "site-03"], ["site-04"], "listed", "not U2"),
        # Signatures over the right list, but one too few of them valid.
        (["site-00", "site-01", "site-02", "site-03"], [], "too_few_valid", "2 valid confirm"),
        # A signature from outside U3.
        (["site-00", "site-01", "site-02", "site-03"], [], "outsider", "not in U3"),
    ],
)
def test_inconsistent_unmask_requests_are_refused(
    survivors: list[str], dropped: list[str], which_sigs: str, match: str
) -> None:
    p = until_masked(4)
    everyone = list(p.u2)
    for c in p.fed.clients.values():
        c.confirm(everyone)
    sigs = signatures(p, survivors)
    if which_sigs == "too_few_valid":  # quorum 3 of 4: two signatures by the wrong key
        wrong = IDS.keys["site-03"].sign(confirmation_bytes(p.fed.setup.context, everyone))
        sigs["site-01"] = sigs["site-02"] = wrong
    if which_sigs == "outsider":
        sigs["site-99"] = b"x" * 64
    for client in p.fed.clients.values():
        refuses(client.unmask, survivors, dropped, sigs, match=match)


# -- replays from an earlier round ----------------------------------------------------------------


def test_messages_replayed_from_an_earlier_round_are_refused() -> None:
    old = until_masked(4, round_=1)
    everyone = list(old.u2)
    old_sigs = {s: c.confirm(everyone) for s, c in old.fed.clients.items()}
    new = Federation.create(4, vector_length=6, round_=2, ids=IDS)
    adverts = {s: c.advertise() for s, c in new.clients.items()}
    client = new.clients["site-00"]
    # Old adverts of the other sites: bound to round 1.
    mixed = {**old.adverts, "site-00": adverts["site-00"]}
    refuses(client.share_keys, mixed, match="round 1 .*replayed")
    # The same, relabelled as round 2: the signatures no longer verify.
    relabelled = {
        s: dataclasses.replace(a, context=new.setup.context) for s, a in old.adverts.items()
    }
    refuses(client.share_keys, {**relabelled, "site-00": adverts["site-00"]}, match="signature")
    assert client.stage is ClientStage.ADVERTISED
    sealed = {s: c.share_keys(adverts) for s, c in new.clients.items()}
    # Old sealed shares from the same senders do not open in round 2.
    replayed = {u: old.sealed["site-00"][u] for u in old.sealed["site-00"]}
    refuses(client.receive_shares, replayed, match="do not decrypt")
    client.receive_shares({u: sealed[u]["site-00"] for u in sealed if u != "site-00"})
    for s, c in new.clients.items():
        if s != "site-00":
            c.receive_shares({u: sealed[u][s] for u in sealed if u != s})
    for c in new.clients.values():
        c.mask(np.zeros(6, np.uint32), survivors=everyone)
        c.confirm(everyone)
    # Round-1 confirmations over the very same list do not count in round 2.
    refuses(client.unmask, everyone, [], old_sigs, match="0 valid confirmations")
    with pytest.raises(IntegrityError, match="round 1"):
        new.server.receive_advert(old.adverts["site-01"])


def test_an_unmask_request_of_another_round_is_refused() -> None:
    p = until_masked(4, round_=3)
    everyone = list(p.u2)
    for s, c in p.fed.clients.items():
        p.fed.server.receive_confirmation(s, c.confirm(everyone))
    request = p.fed.server.close_confirmations()
    other = dataclasses.replace(request, context=dataclasses.replace(request.context, round=2))
    for client in p.fed.clients.values():
        refuses(client.answer, other, match="round 2 .*replayed")


# -- forged adverts, keys and shares --------------------------------------------------------------


def test_a_swapped_key_advert_is_refused_by_every_site() -> None:
    fed = Federation.create(5, vector_length=4, ids=IDS)
    adverts = {s: c.advertise() for s, c in fed.clients.items()}
    coordinator_key = public_key_bytes(X25519PrivateKey.generate())
    for field in ("mask_key", "cipher_key"):
        swapped = {
            **adverts,
            "site-02": dataclasses.replace(adverts["site-02"], **{field: coordinator_key}),
        }
        for s, client in fed.clients.items():
            if s != "site-02":
                refuses(client.share_keys, swapped, match="site-02.*invalid signature")
    # An advert for site-02 signed by someone else's identity.
    forged = dataclasses.replace(
        adverts["site-02"], signature=IDS.keys["site-03"].sign(adverts["site-02"].signed_bytes())
    )
    refuses(fed.clients["site-00"].share_keys, {**adverts, "site-02": forged}, match="invalid")
    # This site's own advert replaced.
    mine = dataclasses.replace(adverts["site-00"], mask_key=coordinator_key)
    refuses(fed.clients["site-00"].share_keys, {**adverts, "site-00": mine}, match="invalid")
    with pytest.raises(IntegrityError, match="invalid signature"):
        fed.server.receive_advert(forged)
    # Nothing was released, and the genuine adverts still work.
    assert all(len(c.share_keys(adverts)) == 4 for c in fed.clients.values())


def test_a_site_copying_another_sites_keys_is_refused() -> None:
    fed = Federation.create(4, vector_length=4, ids=IDS)
    adverts = {s: c.advertise() for s, c in fed.clients.items()}
    copy = adverts["site-01"]
    thief = KeyAdvert(
        "site-02", copy.context, copy.cipher_key, copy.mask_key, copy.seed_commitment, b"-"
    )
    thief = dataclasses.replace(thief, signature=IDS.keys["site-02"].sign(thief.signed_bytes()))
    refuses(
        fed.clients["site-00"].share_keys, {**adverts, "site-02": thief}, match="same public key"
    )
    fed.server.receive_advert(adverts["site-01"])
    with pytest.raises(IntegrityError, match="reuses a public key"):
        fed.server.receive_advert(thief)


def test_tampered_or_misrouted_sealed_shares_are_refused() -> None:
    fed = Federation.create(4, vector_length=4, ids=IDS)
    adverts = {s: c.advertise() for s, c in fed.clients.items()}
    sealed = {s: c.share_keys(adverts) for s, c in fed.clients.items()}
    mine = {u: sealed[u]["site-00"] for u in sealed if u != "site-00"}
    client = fed.clients["site-00"]
    flipped = dict(mine, **{"site-01": mine["site-01"][:-1] + bytes([mine["site-01"][-1] ^ 1])})
    refuses(client.receive_shares, flipped, match="site-01.*do not decrypt")
    swapped = dict(mine, **{"site-01": mine["site-02"], "site-02": mine["site-01"]})
    refuses(client.receive_shares, swapped, match="do not decrypt")
    refuses(client.receive_shares, {**mine, "site-00": mine["site-01"]}, match="not a neighbour")
    addressed_elsewhere = dict(mine, **{"site-01": sealed["site-01"]["site-02"]})
    refuses(client.receive_shares, addressed_elsewhere, match="do not decrypt")
    client.receive_shares(mine)
    assert client.stage is ClientStage.SHARES_RECEIVED


@pytest.mark.parametrize(
    ("survivors", "match"),
    [
        (["site-00", "site-01", "site-02", "site-03", "site-09"], "never advertised"),
        (["site-00", "site-01"], "only 2 sites"),
        (["site-01", "site-02", "site-03"], "does not include this site"),
        (["site-00", "site-00", "site-01", "site-02"], "repeats"),
    ],
)
def test_masking_refuses_inconsistent_survivor_lists(survivors: list[str], match: str) -> None:
    fed = Federation.create(4, vector_length=4, ids=IDS)
    adverts = {s: c.advertise() for s, c in fed.clients.items()}
    sealed = {s: c.share_keys(adverts) for s, c in fed.clients.items()}
    client = fed.clients["site-00"]
    client.receive_shares({u: sealed[u]["site-00"] for u in sealed if u != "site-00"})
    with pytest.raises(SecAggAbort, match=match):
        client.mask(np.zeros(4, np.uint32), survivors=survivors)
    assert client.stage is ClientStage.SHARES_RECEIVED


def test_masking_refuses_a_survivor_list_that_disagrees_with_the_shares_received() -> None:
    fed = Federation.create(5, vector_length=4, ids=IDS)
    adverts = {s: c.advertise() for s, c in fed.clients.items()}
    sealed = {s: c.share_keys(adverts) for s, c in fed.clients.items()}
    client = fed.clients["site-00"]
    client.receive_shares(
        {u: sealed[u]["site-00"] for u in sealed if u not in ("site-00", "site-04")}
    )
    everyone = sorted(adverts)
    with pytest.raises(SecAggAbort, match="shares came from"):
        client.mask(np.zeros(4, np.uint32), survivors=everyone)
    masked = client.mask(np.zeros(4, np.uint32), survivors=everyone[:4])
    with pytest.raises(SecAggAbort, match="not in U2"):
        client.confirm(everyone)
    assert masked.shape == (4,)


def test_stages_out_of_order_are_refused_without_changing_state() -> None:
    fed = Federation.create(3, vector_length=4, ids=IDS)
    client = fed.clients["site-00"]
    with pytest.raises(SecAggAbort, match="stage 'created'"):
        client.mask(np.zeros(4, np.uint32), survivors=list(fed.setup.sites))
    with pytest.raises(SecAggAbort, match="stage 'created'"):
        client.share_keys({})
    advert = client.advertise()
    assert client.advertise() is advert
    with pytest.raises(SecAggAbort, match="confirm"):
        client.confirm(list(fed.setup.sites))
    assert client.stage is ClientStage.ADVERTISED


def _forge(response: UnmaskResponse, owner: str, *, key: bool) -> UnmaskResponse:
    shares: Mapping[str, SecretShare] = response.key_shares if key else response.seed_shares
    share = shares[owner]
    forged = {**shares, owner: SecretShare(share.index, bytes(b ^ 0x5A for b in share.value))}
    field = "key_shares" if key else "seed_shares"
    return dataclasses.replace(response, **{field: forged})


@pytest.mark.parametrize("key", [False, True])
def test_a_forged_share_is_caught_and_the_sum_withheld(key: bool) -> None:
    fed = Federation.create(5, vector_length=4, ids=IDS)
    inputs = random_inputs(fed.setup.sites, fed.setup, np.random.default_rng(0))
    for c in fed.clients.values():
        fed.server.receive_advert(c.advertise())
    adverts = fed.server.close_adverts()
    for s, c in fed.clients.items():
        fed.server.receive_shares(s, c.share_keys(adverts))
    routing = fed.server.close_shares()
    for s, c in fed.clients.items():
        c.receive_shares(routing.sealed[s])
        masked = c.mask(inputs[s], survivors=list(routing.survivors))
        if s != "site-04":  # site-04 drops after sharing: its key must be rebuilt
            fed.server.receive_masked(s, masked)
    u3 = fed.server.close_masked()
    for s in u3:
        fed.server.receive_confirmation(s, fed.clients[s].confirm(list(u3)))
    request = fed.server.close_confirmations()
    for s in u3:
        response = fed.clients[s].answer(request)
        if s == "site-00":  # the lowest index: its share is always interpolated
            response = _forge(response, "site-04" if key else "site-02", key=key)
        fed.server.receive_unmask(response)
    match = "advertised public key" if key else "does not match its commitment"
    with pytest.raises(SecAggAbort, match=f"stage 'unmasking'.*{match}"):
        fed.server.result()


def test_a_share_carrying_another_index_is_rejected_on_receipt() -> None:
    p = until_masked(4)
    everyone = list(p.u2)
    for s, c in p.fed.clients.items():
        p.fed.server.receive_confirmation(s, c.confirm(everyone))
    request = p.fed.server.close_confirmations()
    response = p.fed.clients["site-00"].answer(request)
    share = response.seed_shares["site-01"]
    moved = {**response.seed_shares, "site-01": SecretShare(3, share.value)}
    with pytest.raises(IntegrityError, match="share index"):
        p.fed.server.receive_unmask(dataclasses.replace(response, seed_shares=moved))
    with pytest.raises(IntegrityError, match="expected"):
        p.fed.server.receive_unmask(dataclasses.replace(response, key_shares={"site-01": share}))


def test_a_missing_own_advert_is_refused() -> None:
    fed = Federation.create(4, vector_length=4, ids=IDS)
    adverts = {s: c.advertise() for s, c in fed.clients.items()}
    others = {s: a for s, a in adverts.items() if s != "site-00"}
    refuses(fed.clients["site-00"].share_keys, others, match="own advert is missing")


def test_a_share_sealed_with_the_wrong_index_is_refused() -> None:
    # site-01 is malicious: it seals, under the genuine pair key, shares at another index.
    fed = Federation.create(4, vector_length=4, ids=IDS)
    adverts = {s: c.advertise() for s, c in fed.clients.items()}
    sealed = {s: c.share_keys(adverts) for s, c in fed.clients.items()}
    pair_key = agree_key(
        fed.clients["site-01"]._cipher_key,
        adverts["site-00"].cipher_key,
        purpose=KeyPurpose.SHARE_ENCRYPTION,
        context=fed.setup.context,
        sites=("site-01", "site-00"),
    )
    wrong = SecretShare(3, bytes(32))
    box = seal_shares(
        pair_key,
        context=fed.setup.context,
        sender="site-01",
        recipient="site-00",
        key_share=wrong,
        seed_share=wrong,
    )
    mine = {u: sealed[u]["site-00"] for u in sealed if u != "site-00"}
    refuses(fed.clients["site-00"].receive_shares, {**mine, "site-01": box}, match="index 3")


def test_a_signed_advert_with_a_low_order_key_is_refused_before_any_share_leaves() -> None:
    fed = Federation.create(4, vector_length=4, ids=IDS)
    adverts = {s: c.advertise() for s, c in fed.clients.items()}
    bad = dataclasses.replace(adverts["site-03"], mask_key=bytes(32))
    bad = dataclasses.replace(bad, signature=IDS.keys["site-03"].sign(bad.signed_bytes()))
    client = fed.clients["site-00"]
    refuses(client.share_keys, {**adverts, "site-03": bad}, match="low-order")
    assert client.stage is ClientStage.ADVERTISED
