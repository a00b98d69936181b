"""The wire codec: exact round trips, deterministic bytes, a golden file, and hostile input.

Every malformed message must raise :class:`ProtocolError` naming the problem; never another
exception, since the coordinator and the site agents only catch the package's own errors.

Regenerate the golden file (only together with a format version bump) with::

    ALLIANCE_REGEN_GOLDEN=1 pytest tests/unit/test_codec.py -k golden
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alliance.core.errors import ProtocolError
from alliance.protocol.codec import ALLOWED_DTYPES, decode, encode
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind

GOLDEN = Path(__file__).parents[1] / "golden" / "model_update_v1.bin"
_FIXED = struct.Struct("<4sHI")

# ---------------------------------------------------------------------------------------------
# helpers


def assert_same_envelope(got: Envelope, want: Envelope) -> None:
    """Headers and bodies equal; arrays equal name by name in dtype, shape and raw bytes."""
    assert got.header == want.header
    assert got.body == want.body
    assert set(got.arrays) == set(want.arrays)
    for name, arr in want.arrays.items():
        out = got.arrays[name]
        assert out.dtype == arr.dtype, name
        assert out.shape == arr.shape, name
        # Raw bytes: NaN payloads and -0.0 must survive too.
        assert out.tobytes() == np.ascontiguousarray(arr).tobytes(), name


def header(**overrides: Any) -> Header:
    fields: dict[str, Any] = {
        "kind": MessageKind.MODEL_UPDATE,
        "federation": "rare-disease-consortium",
        "study": "study-1",
        "round": 3,
        "sender": "site-a",
        "recipient": COORDINATOR,
        "nonce": "00112233445566778899aabbccddeeff",
    }
    fields.update(overrides)
    return Header(**fields)


def small_envelope() -> Envelope:
    return Envelope(
        header(),
        {"model_version": 2, "num_examples": 7, "metrics": {"train_loss": 0.25}},
        {
            "b": np.array([1, -2], dtype=np.int64),
            "w": np.array([[0.5, -1.5], [2.0, 0.0]], dtype=np.float32),
        },
    )


def raw_message(
    preamble: Any, blobs: bytes = b"", *, magic: bytes = b"GALM", fmt: int = 1
) -> bytes:
    """Bytes laid out as the codec does, from a preamble written by hand."""
    text = json.dumps(preamble, allow_nan=True).encode("utf-8")
    return _FIXED.pack(magic, fmt, len(text)) + text + blobs


def raw_preamble(**overrides: Any) -> dict[str, Any]:
    pre: dict[str, Any] = {"header": header().to_json(), "body": {}, "arrays": []}
    pre.update(overrides)
    return pre


def decode_error(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# round trip

_CHINESE = st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), max_size=6)
_STRINGS = st.one_of(
    st.text(max_size=8), _CHINESE, st.sampled_from(["罕见病", "北京协和医院", "ü→€"])
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    _STRINGS,
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_STRINGS, inner, max_size=4)
    ),
    max_leaves=12,
)
_NAME = st.text(min_size=1, max_size=12)
_HEADERS = st.builds(
    Header,
    kind=st.sampled_from(MessageKind),
    federation=st.one_of(_NAME, _CHINESE.filter(bool)),
    study=_NAME,
    round=st.integers(min_value=0, max_value=2**63),
    sender=_NAME,
    recipient=_NAME,
    nonce=_NAME,
)
_ARRAYS = hnp.arrays(
    dtype=st.sampled_from(sorted(ALLOWED_DTYPES)).map(np.dtype),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
_ENVELOPES = st.builds(
    Envelope,
    header=_HEADERS,
    body=st.dictionaries(_STRINGS, _JSON, max_size=5),
    arrays=st.dictionaries(st.text(max_size=10), _ARRAYS, max_size=4),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ENVELOPES)
def test_round_trip_is_exact(env: Envelope) -> None:
    assert_same_envelope(decode(encode(env)), env)


def test_every_message_kind_and_edge_shape_round_trips() -> None:
    arrays = {
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0,), dtype=np.float32),
        "empty_2d": np.zeros((3, 0), dtype=np.int16),
        "flags": np.array([True, False]),
        "half": np.array([1.5, -0.0, np.nan], dtype=np.float16),
    }
    for kind in MessageKind:
        env = Envelope(header(kind=kind), {"名称": "罕见病", "n": [1, 2.5, {"x": None}]}, arrays)
        out = decode(encode(env))
        assert_same_envelope(out, env)
        assert out.arrays["scalar"].ndim == 0


def test_non_contiguous_and_big_endian_arrays_arrive_little_endian_and_equal() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    env = Envelope(header(), {}, {"t": base.T, "be": base.astype(">f8")})
    out = decode(encode(env))
    np.testing.assert_array_equal(out.arrays["t"], base.T)
    assert out.arrays["be"].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(out.arrays["be"], base.astype(np.float64))


def test_decoded_arrays_are_writable_copies() -> None:
    data = encode(small_envelope())
    out = decode(data)
    out.arrays["w"][0, 0] = 99.0  # must not raise (read-only view) nor touch `data`
    assert decode(data).arrays["w"][0, 0] == 0.5


# ---------------------------------------------------------------------------------------------
# determinism and the golden file


def test_encoding_is_deterministic() -> None:
    env = small_envelope()
    assert encode(env) == encode(env)
    # Insertion order of body keys and arrays does not change the bytes.
    shuffled = Envelope(
        env.header,
        dict(reversed(list(env.body.items()))),
        dict(reversed(list(env.arrays.items()))),
    )
    assert encode(shuffled) == encode(env)


def golden_envelope() -> Envelope:
    """Fixed forever for format version 1; changing it means a new golden file and version."""
    return Envelope(
        Header(
            kind=MessageKind.MODEL_UPDATE,
            federation="guardian-alliance",
            study="rare-disease-ranker",
            round=4,
            sender="hospital-07",
            recipient=COORDINATOR,
            nonce="0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        ),
        {
            "model_version": 3,
            "num_examples": 128,
            "metrics": {"train_loss": 0.8125, "test_cases": 12, "top1_hits": 5},
        },
        {
            "bias": np.array([0.5, -0.25, 1.0], dtype=np.float32),
            "counts": np.array([[1, -2], [3, 2**40]], dtype=np.int64),
            "weight": np.array([[1.5, -2.0, 0.125], [0.0, 3.25, -0.5]], dtype=np.float32),
        },
    )


def test_golden_wire_file() -> None:
    if os.environ.get("ALLIANCE_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_bytes(encode(golden_envelope()))
    committed = GOLDEN.read_bytes()
    assert encode(golden_envelope()) == committed, (
        "the wire format changed: bump FORMAT_VERSION/PROTOCOL_VERSION and add a new golden file"
    )
    assert_same_envelope(decode(committed), golden_envelope())


# ---------------------------------------------------------------------------------------------
# rejection


def test_bad_magic() -> None:
    data = b"XXXX" + encode(small_envelope())[4:]
    assert "magic" in decode_error(data)


def test_unknown_format_version() -> None:
    data = bytearray(encode(small_envelope()))
    struct.pack_into("<H", data, 4, 2)
    assert "format version 2" in decode_error(bytes(data))


def test_every_truncation_raises_protocol_error() -> None:
    data = encode(small_envelope())
    messages = {decode_error(data[:n]) for n in range(len(data))}
    assert any("too short" in m for m in messages)
    assert any("inside its preamble" in m for m in messages)
    assert any("'w': message truncated" in m for m in messages)


def test_trailing_bytes() -> None:
    assert "1 trailing bytes" in decode_error(encode(small_envelope()) + b"\x00")


def test_size_limit() -> None:
    data = encode(small_envelope())
    assert decode(data, max_bytes=len(data)).header == header()
    message = decode_error(data, max_bytes=len(data) - 1)
    assert f"{len(data)} bytes exceeds the limit of {len(data) - 1}" in message


@pytest.mark.parametrize("dtype", ["|O", "|O8", "<U4", "|S3", ">f4", "<c16", "<M8[s]", "|V8"])
def test_disallowed_dtype_in_spec(dtype: str) -> None:
    spec = {"name": "x", "dtype": dtype, "shape": [1]}
    message = decode_error(raw_message(raw_preamble(arrays=[spec]), b"\x00" * 16))
    assert f"'x': dtype {dtype!r} is not allowed" in message


@pytest.mark.parametrize(
    "array",
    [
        np.array([1, "a"], dtype=object),
        np.array(["abcd"]),
        np.array([1 + 2j]),
        np.array([b"x"]),
    ],
)
def test_encode_refuses_non_numeric_arrays(array: np.ndarray[Any, Any]) -> None:
    with pytest.raises(ProtocolError, match=r"array 'bad': dtype .* cannot be sent"):
        encode(Envelope(header(), {}, {"bad": array}))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_encode_refuses_non_finite_body_numbers(value: float) -> None:
    env = Envelope(header(), {"metrics": {"loss": [0.0, value]}}, {})
    with pytest.raises(ProtocolError, match=r"body\.metrics\.loss\[1\]: non-finite number"):
        encode(env)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_decode_refuses_non_finite_literals_in_body(literal: str) -> None:
    text = json.dumps(raw_preamble(body={"loss": "PLACEHOLDER"})).replace('"PLACEHOLDER"', literal)
    data = _FIXED.pack(b"GALM", 1, len(text)) + text.encode()
    assert "body.loss: non-finite number" in decode_error(data)


def test_decode_refuses_non_finite_literals_elsewhere() -> None:
    pre = raw_preamble()
    pre["header"]["round"] = float("nan")
    assert "'round' must be an integer" in decode_error(raw_message(pre))


def test_header_with_missing_field() -> None:
    pre = raw_preamble()
    del pre["header"]["nonce"]
    assert "header must have exactly the fields" in decode_error(raw_message(pre))


def test_header_with_extra_field() -> None:
    pre = raw_preamble()
    pre["header"]["signature"] = "abc"
    assert "header must have exactly the fields" in decode_error(raw_message(pre))


@pytest.mark.parametrize("version", [0, 2, True, 1.0, "1", None])
def test_wrong_protocol_version(version: Any) -> None:
    pre = raw_preamble()
    pre["header"]["version"] = version
    assert "protocol version" in decode_error(raw_message(pre))


def test_wrong_protocol_version_from_encode() -> None:
    data = encode(Envelope(header(version=2), {}, {}))
    assert "protocol version 2, this build reads 1" in decode_error(data)


def test_negative_round() -> None:
    data = encode(Envelope(header(round=-1), {}, {}))
    assert "'round' must be an integer >= 0, got -1" in decode_error(data)


@pytest.mark.parametrize("field", ["federation", "study", "sender", "recipient", "nonce"])
@pytest.mark.parametrize("value", ["", 7, None])
def test_header_string_fields(field: str, value: Any) -> None:
    pre = raw_preamble()
    pre["header"][field] = value
    assert f"{field!r} must be a non-empty string" in decode_error(raw_message(pre))


def test_unknown_message_kind() -> None:
    pre = raw_preamble()
    pre["header"]["kind"] = "launch_missiles"
    assert "unknown message kind 'launch_missiles'" in decode_error(raw_message(pre))


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_non_dict_body(body: Any) -> None:
    assert "body must be a JSON object" in decode_error(raw_message(raw_preamble(body=body)))


@pytest.mark.parametrize(
    ("preamble", "expected"),
    [
        ([], "exactly header, body and arrays"),
        ({"header": {}, "body": {}}, "exactly header, body and arrays"),
        (raw_preamble(arrays={}), "'arrays' must be a list"),
        (raw_preamble(arrays=[["x"]]), "spec #0 must have exactly"),
        (raw_preamble(arrays=[{"name": 1, "dtype": "<f4", "shape": []}]), "name 1"),
        (raw_preamble(arrays=[{"name": "x", "dtype": ["<f4"], "shape": []}]), "not allowed"),
        (raw_preamble(arrays=[{"name": "x", "dtype": "<f4", "shape": [-1]}]), "non-negative"),
        (raw_preamble(arrays=[{"name": "x", "dtype": "<f4", "shape": [True]}]), "non-negative"),
        (raw_preamble(arrays=[{"name": "x", "dtype": "<f4", "shape": 4}]), "non-negative"),
        (raw_preamble(arrays=[{"name": "x", "dtype": "<f4", "shape": [1.0]}]), "non-negative"),
        (raw_preamble(arrays=[{"name": "x", "dtype": "<f4", "shape": [1] * 65}]), "larger"),
        (raw_preamble(arrays=[{"name": "x", "dtype": "<f4", "shape": [0, 10**30]}]), "larger"),
        (
            raw_preamble(arrays=[{"name": "x", "dtype": "<f4", "shape": [0, 2**62, 2**62]}]),
            "cannot be built",
        ),
        (
            raw_preamble(arrays=[{"name": "x", "dtype": "<f4", "shape": [2**62, 2**62]}]),
            "truncated",
        ),
    ],
)
def test_malformed_preamble(preamble: Any, expected: str) -> None:
    assert expected in decode_error(raw_message(preamble))


def test_duplicate_array_names() -> None:
    spec = {"name": "x", "dtype": "|u1", "shape": [1]}
    assert "duplicate name 'x'" in decode_error(
        raw_message(raw_preamble(arrays=[spec, spec]), b"ab")
    )


def test_preamble_not_utf8_json() -> None:
    body = b"\xff\xfe{"
    assert "not valid UTF-8 JSON" in decode_error(_FIXED.pack(b"GALM", 1, len(body)) + body)
    body = b'{"header": '
    assert "not valid UTF-8 JSON" in decode_error(_FIXED.pack(b"GALM", 1, len(body)) + body)


def test_hostile_json_depth_and_integer_size() -> None:
    head = json.dumps(header().to_json()).encode()
    for value in [b"[" * 100_000 + b"]" * 100_000, b"9" * 5000]:
        text = b'{"header":' + head + b',"arrays":[],"body":{"a":' + value + b"}}"
        assert "not valid UTF-8 JSON" in decode_error(_FIXED.pack(b"GALM", 1, len(text)) + text)


# ---------------------------------------------------------------------------------------------
# fuzz

_VALID = encode(small_envelope())
_MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "set"]),
    st.integers(min_value=0, max_value=len(_VALID)),
    st.integers(min_value=0, max_value=255),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, pos, value in mutations:
        if op == "insert":
            buf.insert(min(pos, len(buf)), value)
        elif not buf:
            continue
        elif op == "delete":
            del buf[pos % len(buf)]
        elif op == "flip":
            buf[pos % len(buf)] ^= 1 << (value % 8)
        else:
            buf[pos % len(buf)] = value
    return bytes(buf)


@settings(max_examples=400, deadline=None)
@given(st.lists(_MUTATION, min_size=1, max_size=6))
def test_mutated_bytes_decode_or_raise_protocol_error(
    mutations: list[tuple[str, int, int]],
) -> None:
    data = _mutate(_VALID, mutations)
    try:
        env = decode(data)
    except ProtocolError:
        return
    assert isinstance(env, Envelope)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_tail_after_valid_fixed_part(tail: bytes) -> None:
    data = _FIXED.pack(b"GALM", 1, len(tail)) + tail
    try:
        env = decode(data)
    except ProtocolError:
        return
    assert isinstance(env, Envelope)
