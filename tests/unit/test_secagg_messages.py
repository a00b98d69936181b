"""The typed messages of a secure round (alliance.protocol.secagg_messages).

- per-round keys (a batch of one slot) keep the wire form of before: the same payload keys;
- a key batch sends one list entry per slot, and one slot is never sent as a list;
- every message round-trips through the codec's bytes, and the base class decodes any stage;
- decoding is strict: a missing, extra, mistyped, non-hex or oversized field is refused with an
  error naming the stage, the field and the sender.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from alliance.core.errors import ProtocolError
from alliance.protocol.codec import decode, encode
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.secagg_messages import (
    MAX_CERTIFICATE_SIZE,
    CohortKeys,
    Confirmation,
    ConfirmRequest,
    KeyAdverts,
    MaskedInput,
    RoutedShares,
    SealedShares,
    SecAggMessage,
    SecAggStage,
    SlotShares,
    UnmaskCall,
    UnmaskShares,
)
from alliance.secagg import (
    KeyAdvert,
    KeyBatchSetup,
    RoundContext,
    SecretShare,
    UnmaskRequest,
    UnmaskResponse,
)

CONTEXT = RoundContext("fed", "study", 4, 2)
UP = Header(MessageKind.SECAGG, "fed", "study", 4, "site-a", COORDINATOR)
DOWN = Header(MessageKind.SECAGG, "fed", "study", 4, COORDINATOR, "site-a")


def advert(site: str, context: RoundContext = CONTEXT) -> KeyAdvert:
    fill = sum(site.encode()) % 250
    return KeyAdvert(
        site=site,
        context=context,
        cipher_key=bytes([fill]) * 32,
        mask_key=bytes([fill + 1]) * 32,
        seed_commitment=bytes([fill + 2]) * 32,
        signature=bytes([fill + 3]) * 64,
    )


REQUEST = UnmaskRequest(CONTEXT, ("site-a", "site-b"), ("site-c",), {"site-a": b"\x07" * 64})
RESPONSE = UnmaskResponse(
    "site-a",
    CONTEXT,
    {"site-b": SecretShare(1, b"\x01" * 32)},
    {"site-c": SecretShare(1, b"\x02" * 32)},
)

#: Per-round keys: each message and the payload it had before the messages were typed.
SINGLE: list[tuple[SecAggMessage, dict[str, Any]]] = [
    (
        KeyAdverts(UP, 2, (advert("site-a"),), b"\x30\x82"),
        {"advert": advert("site-a").to_json(), "certificate": "3082"},
    ),
    (SealedShares(UP, 2, ({"site-b": b"\xaa\xbb"},)), {"ciphertexts": {"site-b": "aabb"}}),
    (Confirmation(UP, 2, b"\x05" * 64), {"signature": "05" * 64}),
    (UnmaskShares(UP, 2, RESPONSE), {"response": RESPONSE.to_json()}),
    (
        CohortKeys(DOWN, 2, ({"site-a": advert("site-a")},), {"site-a": b"\x30"}),
        {"adverts": {"site-a": advert("site-a").to_json()}, "certificates": {"site-a": "30"}},
    ),
    (
        RoutedShares(DOWN, 2, (SlotShares({"site-b": b"\x01"}, ("site-a", "site-b")),)),
        {"ciphertexts": {"site-b": "01"}, "survivors": ["site-a", "site-b"]},
    ),
    (ConfirmRequest(DOWN, 2, ("site-a", "site-b")), {"survivors": ["site-a", "site-b"]}),
    (UnmaskCall(DOWN, 2, REQUEST), {"request": REQUEST.to_json()}),
]

SLOTS = [CONTEXT.with_slot(0), CONTEXT.with_slot(1)]
#: A key batch of two slots, in which site-a is not in slot 1.
BATCH: list[tuple[SecAggMessage, dict[str, Any]]] = [
    (
        KeyAdverts(UP, 2, tuple(advert("site-a", c) for c in SLOTS), b"\x30"),
        {"adverts": [advert("site-a", c).to_json() for c in SLOTS], "certificate": "30"},
    ),
    (SealedShares(UP, 2, ({"site-b": b"\xaa"}, None)), {"ciphertexts": [{"site-b": "aa"}, None]}),
    (
        CohortKeys(
            DOWN, 2, tuple({"site-b": advert("site-b", c)} for c in SLOTS), {"site-b": b"\x30"}
        ),
        {
            "adverts": [{"site-b": advert("site-b", c).to_json()} for c in SLOTS],
            "certificates": {"site-b": "30"},
        },
    ),
    (
        RoutedShares(DOWN, 2, (SlotShares({"site-b": b"\x01"}, ("site-a", "site-b")), None)),
        {"slots": [{"ciphertexts": {"site-b": "01"}, "survivors": ["site-a", "site-b"]}, None]},
    ),
]


def through_bytes(msg: SecAggMessage) -> Envelope:
    return decode(encode(msg.to_envelope()))


def with_payload(msg: SecAggMessage, payload: Any) -> Envelope:
    env = msg.to_envelope()
    return dataclasses.replace(env, body={**env.body, "payload": payload})


@pytest.mark.parametrize(("msg", "payload"), SINGLE + BATCH, ids=lambda v: getattr(v, "stage", ""))
def test_each_message_keeps_its_payload_and_round_trips_through_bytes(
    msg: SecAggMessage, payload: dict[str, Any]
) -> None:
    env = msg.to_envelope()
    assert json.loads(json.dumps(env.body)) == {
        "stage": msg.stage,
        "attempt": 2,
        "payload": payload,
    }
    assert SecAggMessage.from_envelope(through_bytes(msg)) == msg
    assert type(msg).from_envelope(through_bytes(msg)) == msg


def test_a_masked_input_travels_as_its_one_array() -> None:
    vector = np.arange(5, dtype=np.uint32)
    env = MaskedInput(UP, 2, vector).to_envelope()
    assert dict(env.body) == {"stage": "masked", "attempt": 2, "payload": {}}
    back = SecAggMessage.from_envelope(decode(encode(env)))
    assert isinstance(back, MaskedInput)
    np.testing.assert_array_equal(back.vector, vector)
    signed = dataclasses.replace(env, arrays={"masked": vector.astype(np.int32)})
    with pytest.raises(ProtocolError, match=r"'masked' message from site-a: masked must be"):
        SecAggMessage.from_envelope(signed)
    extra = dataclasses.replace(env, arrays={"masked": vector, "more": vector})
    with pytest.raises(ProtocolError, match="arrays must be exactly"):
        SecAggMessage.from_envelope(extra)
    smuggled = dataclasses.replace(
        Confirmation(UP, 2, b"\x05").to_envelope(), arrays={"masked": vector}
    )
    with pytest.raises(ProtocolError, match=r"'confirmation' message from site-a: arrays"):
        SecAggMessage.from_envelope(smuggled)


def test_the_stages_compare_as_their_names() -> None:
    assert [str(s) for s in SecAggStage] == ["train", "keys", "shares", "confirm", "unmask", "done"]
    assert SecAggStage.KEYS == "keys"
    assert CohortKeys.stage == SecAggStage.KEYS


def test_a_per_round_batch_is_one_slot_bound_to_the_attempt_itself() -> None:
    setup = KeyBatchSetup(
        context=CONTEXT, size=1, sites=("a", "b", "c"), vector_length=4, modulus_bits=32
    )
    assert [s.context for s in setup.slots] == [CONTEXT]
    two = KeyBatchSetup(
        context=CONTEXT, size=2, sites=("a", "b", "c"), vector_length=4, modulus_bits=32
    )
    assert [s.context for s in two.slots] == SLOTS


def test_a_subclass_decodes_its_own_stage_only() -> None:
    env = Confirmation(UP, 2, b"\x05").to_envelope()
    with pytest.raises(ProtocolError, match="expected stage 'keys', got 'confirmation'"):
        CohortKeys.from_envelope(env)


def test_one_slot_is_never_sent_as_a_list_and_the_only_slot_is_never_empty() -> None:
    single = KeyAdverts(UP, 2, (advert("site-a"),), b"\x30")
    listed = with_payload(single, {"adverts": [advert("site-a").to_json()], "certificate": "30"})
    with pytest.raises(
        ProtocolError, match=r"'advert' message from site-a: adverts must be a list"
    ):
        SecAggMessage.from_envelope(listed)
    with pytest.raises(ProtocolError, match="only key slot is empty"):
        SealedShares(UP, 2, (None,))
    with pytest.raises(ProtocolError, match="1 to 100 key slots, got 0"):
        RoutedShares(DOWN, 2, ())


_ADVERTS = KeyAdverts(UP, 2, (advert("site-a"),), b"\x30")
_KEYS = CohortKeys(DOWN, 2, ({"site-a": advert("site-a")},), {"site-a": b"\x30"})
_SHARES = RoutedShares(DOWN, 2, (SlotShares({"site-b": b"\x01"}, ("site-a",)),))
_TOO_LONG = "00" * (MAX_CERTIFICATE_SIZE + 1)


@pytest.mark.parametrize(
    ("msg", "payload", "match"),
    [
        (_ADVERTS, {"advert": advert("site-a").to_json()}, "payload must have exactly the fields"),
        (_ADVERTS, [], "payload must have exactly the fields"),
        (_ADVERTS, {"advert": {}, "certificate": "30"}, r"advert is invalid: key advert must"),
        (_ADVERTS, {"advert": advert("site-a").to_json(), "certificate": 5}, "certificate must"),
        (_ADVERTS, {"advert": advert("site-a").to_json(), "certificate": "zz"}, "not valid hex"),
        (_ADVERTS, {"advert": advert("site-a").to_json(), "certificate": ""}, "1 to 16384 bytes"),
        (
            _ADVERTS,
            {"advert": advert("site-a").to_json(), "certificate": _TOO_LONG},
            "certificate must be 1 to 16384 bytes",
        ),
        (_KEYS, {"adverts": {"site-a": 3}, "certificates": {}}, r"adverts\['site-a'\] is invalid"),
        (_KEYS, {"adverts": {}, "certificates": {"": "30"}}, "keyed by non-empty site ids"),
        (_KEYS, {"adverts": {}, "certificates": {"site-a": "3"}}, r"certificates\['site-a'\]"),
        (_SHARES, {"slots": [None, {"ciphertexts": {}}]}, r"slots\[1\] must have exactly"),
        (_SHARES, {"ciphertexts": {}, "survivors": "site-a"}, "survivors must be a list"),
        (_SHARES, {"ciphertexts": {"site-b": "ab" * 5000}, "survivors": []}, "1 to 4096 bytes"),
        (SealedShares(UP, 2, ({},)), {"ciphertexts": "ab"}, "ciphertexts must be a list"),
        (Confirmation(UP, 2, b"\x05"), {"signature": "05" * 1025}, "signature must be 1 to 1024"),
        (UnmaskShares(UP, 2, RESPONSE), {"response": {}}, "response is invalid"),
        (UnmaskCall(DOWN, 2, REQUEST), {"request": None}, "request is invalid"),
        (ConfirmRequest(DOWN, 2, ()), {"survivors": ["site-a", ""]}, "list of site ids"),
    ],
)
def test_a_malformed_payload_is_refused_naming_stage_field_and_sender(
    msg: SecAggMessage, payload: Any, match: str
) -> None:
    sender = msg.header.sender
    with pytest.raises(ProtocolError, match=rf"'{msg.stage}' message from {sender}: .*{match}"):
        SecAggMessage.from_envelope(with_payload(msg, payload))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"stage": "keys", "attempt": 1}, "exactly the fields"),
        ({"stage": "gossip", "attempt": 1, "payload": {}}, "unknown stage 'gossip'"),
        ({"stage": 3, "attempt": 1, "payload": {}}, "unknown stage 3"),
        ({"stage": "confirm", "attempt": -1, "payload": {}}, "attempt must be an integer >= 0"),
        ({"stage": "confirm", "attempt": True, "payload": {}}, "attempt must be an integer >= 0"),
    ],
)
def test_a_malformed_body_is_refused(body: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        SecAggMessage.from_envelope(Envelope(DOWN, body))


def test_another_kind_of_message_is_refused() -> None:
    header = dataclasses.replace(DOWN, kind=MessageKind.TRAIN_TASK)
    with pytest.raises(ProtocolError, match="expected a secagg message, got train_task"):
        SecAggMessage.from_envelope(Envelope(header, {}))
