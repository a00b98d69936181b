"""The transport contract, run against every transport: in memory, HTTPS with mutual TLS, files.

One suite, every transport (DESIGN §4): each test states one rule of the contract in the same
words for every transport, through a harness per transport (``transport_harness.py``), so the
simulation, the network and the file bundles cannot drift apart. A transport that does not
give a guarantee says why, and its tests are skipped with that reason.

What each transport guarantees today (✓ holds, — not a property of that transport):

=========================  ===============================  =====================================
guarantee                  memory (``InMemoryTransport``)   https (``HttpSiteLink`` + server +
                                                            ``CoordinatorService``)
=========================  ===============================  =====================================
ordering and routing       ✓ FIFO queue per recipient;      ✓ a site gets only what is addressed
                           routed by the header's           to the name in its TLS certificate;
                           recipient                        its link refuses to fetch for another
duplicate submissions      collected twice: the transport   ✓ acknowledged ``duplicate`` and
                           keeps no state; the consumer     counted once (the coordinator knows
                           (``Coordinator.accept``) drops   nonce and content digest)
                           the copy
replay detection           — (the simulation's coordinator  ✓ the same bytes again: ``duplicate``,
                           refuses replayed nonces)         nothing changes; the same nonce on
                                                            other content: refused, "replayed"
expiry of signed messages  — (not signed)                   ✓ both ways: an expired or
                                                            future-dated message is refused
size limit on submissions  ✓ ``max_bytes``, on publish     ✓ uploads, capped before they are
                           and submit; a message of         read (``max_upload_bytes``, from the
                           exactly the limit passes; the    model size); a message of exactly
                           error is a ProtocolError         the limit passes; an upload without
                                                            Content-Length is refused, naming
                                                            its size
round-trip fidelity        ✓ header, JSON body and arrays   ✓ both ways; updates as the
                           of every allowed dtype, bit      coordinator stores them (float32,
                           for bit                          finite, the model's shapes)
tampering detected         — (not signed)                   ✓ Ed25519 over the whole frame
a party speaks only for    — (one shared object)            ✓ fetch and submit only as the
itself                                                      certificate's site
a site's channel carries   — (one shared object)            ✓ an update signed by another site
only its own messages                                       than the TLS client's is refused
rejected input changes     ✓ (for what it refuses)          ✓ a refused message burns no nonce;
nothing                                                     the next valid one is delivered
=========================  ===============================  =====================================

The files transport (``FileMailbox`` at the coordinator, ``FileSiteLink`` at each site, a
``BundleLedger`` at each end, ``carry`` as the courier). A refused bundle is recorded, not
raised: it is moved to ``rejected/`` with a ``.reason`` file and listed in ``rejections``, and
the suite reads that reason (:meth:`FilesHarness.refusal`):

=========================  ========================================================================
guarantee                  files (sealed bundles in folders)
=========================  ========================================================================
ordering and routing       ✓ by bundle creation time, not by arrival: the courier may deliver
                           files in any order, each read takes a folder's bundles oldest first
                           (ties by file name); routed by the sealed recipient
duplicate submissions      ✓ collected once: two copies in transit are one file (named by nonce);
                           a copy after the first was read is set aside as a replay (recorded)
replay detection           ✓ the ledger, by (sender, nonce): the same bytes or the same nonce on
                           other content are set aside; the reason says "replay", not "replayed"
                           (strict xfail)
expiry of signed messages  ✓ both ways: an expired or future-dated bundle is set aside
size limit on submissions  ✓ ``max_bytes`` on the file's size before it is read; a bundle of
                           exactly the limit passes; the reason names both sizes
round-trip fidelity        ✓ both ways, as for memory (the codec inside a sealed box)
tampering detected         ✓ Ed25519 over the whole bundle, and again over the sealed message;
                           but the rejection keeps only the reason's text, not that it was an
                           IntegrityError (strict xfail)
a party speaks only for    ✓ a link fetches only its own site's inbox; a bundle counts as the
itself                     party that signed it
a site's channel carries   — no channel belongs to a site: the coordinator has one inbox, any
only its own messages      courier carries any bundle (another site relaying site-a's bundle
                           delivers site-a's message, once)
rejected input changes     ✓ a set-aside bundle burns no nonce; the next valid one is delivered
nothing
=========================  ========================================================================

Every transport carries bodies as JSON: a body arrives equal as JSON (key order sorted, ``-0.0``,
``1`` and ``1.0`` kept apart), and arrays arrive C-contiguous and little-endian with the same
values and bytes.

How the HTTPS harness is built: the real uvicorn server with the project's own CA and
certificates (one per module), a real :class:`~alliance.transport.https_link.HttpSiteLink` per
site, and behind the server a fresh :class:`~alliance.coordinator.service.CoordinatorService`
per test with round 1 of a study open. The service has no publish (each poll derives a site's
message from the open round, repeating a task until it is answered), so the harness queues
published messages in its place; everything a submission meets (TLS identity, the upload cap,
signature, expiry, signer binding, replay and duplicate checks, the store) is the service's own.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alliance.core.errors import AllianceError, IntegrityError, ProtocolError
from alliance.protocol.codec import ALLOWED_DTYPES
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from tests.contract.transport_harness import (
    FEDERATION,
    MODEL_SHAPES,
    SITES,
    STUDY,
    Duplicates,
    FilesHarness,
    Guarantee,
    HttpsDeployment,
    HttpsHarness,
    InMemoryHarness,
    TransportHarness,
    https_deployment,
)

A, B, C = SITES
HARNESSES: dict[str, Callable[[pytest.FixtureRequest, Path], TransportHarness]] = {
    "memory": lambda request, state: InMemoryHarness(),
    "https": lambda request, state: HttpsHarness(request.getfixturevalue("https"), state),
    "files": lambda request, state: FilesHarness(state),
}


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsDeployment]:
    with https_deployment(tmp_path_factory.mktemp("https")) as deployment:
        yield deployment


@pytest.fixture(params=list(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TransportHarness]:
    h = HARNESSES[request.param](request, tmp_path)
    bug = next(filter(None, map(h.known_bugs.get, bug_keys(request.node))), None)
    if bug is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=bug))
    yield h
    h.close()


def bug_keys(node: Any) -> list[str]:
    """A test's keys in ``known_bugs``: its name, and for one parametrized case of it the name
    with the case, e.g. ``test_refused_input_says_why_and_changes_nothing[tampered]``."""
    callspec = getattr(node, "callspec", None)
    cases = [str(v) for k, v in (callspec.params if callspec else {}).items() if k != "harness"]
    return [node.originalname, *([f"{node.originalname}[{'-'.join(cases)}]"] if cases else [])]


def require(h: TransportHarness, guarantee: Guarantee) -> None:
    if guarantee in h.lacks:
        pytest.skip(f"{h.name} transport, {guarantee.value}: {h.lacks[guarantee]}")


def task(site: str, seq: int, **arrays: Any) -> Envelope:
    """A coordinator message for ``site``, told apart by ``seq``."""
    header = Header(MessageKind.TRAIN_TASK, FEDERATION, STUDY, 1, COORDINATOR, site)
    return Envelope(header, {"seq": seq}, arrays)


def canonical(body: Any) -> str:
    """JSON text that tells ``-0.0`` from ``0.0`` and ``1`` from ``1.0`` or ``True``."""
    return json.dumps(body, sort_keys=True, ensure_ascii=False, allow_nan=False)


def assert_same(got: Envelope | None, want: Envelope) -> None:
    """Same header, same JSON body, same arrays: names, shapes, little-endian dtypes, bytes."""
    assert got is not None, f"nothing arrived; expected {want.header.kind.value} {want.body}"
    assert got.header == want.header
    assert canonical(got.body) == canonical(want.body)
    assert sorted(got.arrays) == sorted(want.arrays)
    for name, value in want.arrays.items():
        sent = np.asarray(value)
        little = sent.dtype.newbyteorder("<") if sent.dtype.byteorder == ">" else sent.dtype
        arrived = got.arrays[name]
        assert (arrived.dtype, arrived.shape) == (little, sent.shape), name
        assert arrived.flags.c_contiguous, name
        assert arrived.tobytes() == sent.astype(little).tobytes(), name


def assert_collected(h: TransportHarness, *want: Envelope) -> None:
    got = h.collect()
    assert [e.header.nonce for e in got] == [e.header.nonce for e in want]
    for arrived, sent in zip(got, want, strict=True):
        assert_same(arrived, sent)


def refused(h: TransportHarness, action: Callable[[], object]) -> AllianceError:
    """The error with which the transport refused ``action``."""
    return h.refusal(action)


def attempt(action: Callable[[], object]) -> str:
    """What became of ``action``: ``receipt …`` or ``refused: …``."""
    try:
        return f"receipt {action()!r}"
    except AllianceError as exc:
        return f"refused: {exc}"


def with_metrics(update: Envelope, **metrics: float) -> Envelope:
    """The same update (same header, same nonce) with other metrics."""
    return replace(update, body={**update.body, "metrics": metrics})


# --- 1. ordering and routing ---------------------------------------------------------------------


def test_messages_to_a_site_are_fetched_in_publish_order(harness: TransportHarness) -> None:
    require(harness, Guarantee.ORDER)
    sent = [task(A, 1), task(B, 1), task(A, 2), task(A, 3), task(B, 2)]
    for message in sent:
        harness.publish(message)
    for site, count in ((A, 3), (B, 2)):
        got = [harness.fetch(site) for _ in range(count)]
        assert [e.body["seq"] if e else None for e in got] == list(range(1, count + 1))
        mine = [m for m in sent if m.header.recipient == site]
        for arrived, message in zip(got, mine, strict=True):
            assert_same(arrived, message)
        assert harness.fetch(site) is None
    assert harness.fetch(C) is None  # nothing addressed to A or B reached C


def test_fetch_with_nothing_published_returns_none(harness: TransportHarness) -> None:
    require(harness, Guarantee.ORDER)
    for site in SITES:
        assert harness.fetch(site) is None
        assert harness.fetch(site) is None


def test_submissions_are_collected_in_arrival_order(harness: TransportHarness) -> None:
    require(harness, Guarantee.ORDER)
    updates = [harness.update(site) for site in (C, A, B)]
    for update in updates:
        harness.submit(update)
    assert_collected(harness, *updates)
    assert harness.collect() == []


def test_a_site_cannot_fetch_another_sites_messages(harness: TransportHarness) -> None:
    require(harness, Guarantee.IDENTITY)
    message = task(B, 1)
    harness.publish(message)
    error = refused(harness, lambda: harness.fetch_as(A, B))
    assert "'site-b'" in str(error)
    assert harness.fetch(A) is None
    assert_same(harness.fetch(B), message)


# --- 2. duplicates ---------------------------------------------------------------------------


def test_the_same_envelope_submitted_twice(harness: TransportHarness) -> None:
    require(harness, Guarantee.DUPLICATES)
    update = harness.update(A)
    assert harness.submit(update) in (None, "accepted")
    if harness.duplicates is Duplicates.REFUSED:
        assert "duplicate" in str(refused(harness, lambda: harness.submit(update)))
        assert_collected(harness, update)
    elif harness.duplicates is Duplicates.ACKNOWLEDGED_ONCE:
        assert harness.submit(update) in (None, "duplicate")
        assert_collected(harness, update)
    elif harness.duplicates is Duplicates.SET_ASIDE:
        assert harness.submit(update) is None  # both in transit: one file name, one bundle
        assert_collected(harness, update)
        # Once the first was read, a copy is a replay: recorded, not raised.
        assert "replay" in str(refused(harness, lambda: harness.submit(update)))
    else:
        assert harness.submit(update) is None
        assert_collected(harness, update, update)
    assert harness.collect() == []


# --- 3. replays ------------------------------------------------------------------------------


def test_the_same_bytes_replayed_change_nothing(harness: TransportHarness) -> None:
    require(harness, Guarantee.REPLAY)
    update = harness.update(A)
    harness.submit(update)
    assert_collected(harness, update)
    captured = harness.sent_wire(A)
    outcome = attempt(lambda: harness.submit_wire(A, captured))
    # Acknowledged as what it is, or refused as a replay; either way nothing may change.
    assert outcome in ("receipt None", "receipt 'duplicate'") or "replay" in outcome, outcome
    assert harness.collect() == []
    other = harness.update(B)
    harness.submit(other)
    assert_collected(harness, other)


# --- 4. expiry -------------------------------------------------------------------------------


def test_an_expired_message_to_a_site_is_refused(harness: TransportHarness) -> None:
    require(harness, Guarantee.EXPIRY)
    stale = task(A, 1)
    harness.publish_wire(A, harness.wire(stale, issued_at=time.time() - 7200, ttl_s=3600))
    assert "expired" in str(refused(harness, lambda: harness.fetch(A)))
    fresh = task(A, 2)
    harness.publish(fresh)
    assert_same(harness.fetch(A), fresh)
    assert harness.fetch(A) is None


# --- 5. size limits ---------------------------------------------------------------------------


def _numbers(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"\d+", text)}


def test_a_submission_one_byte_over_the_limit_is_refused_and_one_at_it_passes(
    harness: TransportHarness,
) -> None:
    require(harness, Guarantee.SIZE_LIMIT)
    at = harness.update(A, metrics={"train_loss": 0.5})
    over = with_metrics(at, train_loss=0.25)  # same nonce, one character longer
    data_at, data_over = harness.wire(at), harness.wire(over)
    assert len(data_over) == len(data_at) + 1
    harness.set_limit(len(data_at))
    reason = str(refused(harness, lambda: harness.submit_wire(A, data_over)))
    assert "limit" in reason
    assert {len(data_over), len(data_at)} <= _numbers(reason), reason
    assert harness.collect() == []
    harness.submit_wire(A, data_at)
    assert_collected(harness, at)


def test_an_oversized_message_is_a_protocol_error(harness: TransportHarness) -> None:
    """The error tree: ProtocolError is "malformed, oversized or of another version"."""
    require(harness, Guarantee.SIZE_LIMIT)
    harness.set_limit(len(harness.wire(harness.update(A))) + 64)
    big = harness.update(A, metrics={f"pad_{i}": 0.125 for i in range(64)})
    assert isinstance(refused(harness, lambda: harness.submit(big)), ProtocolError)


# --- 6. round-trip fidelity --------------------------------------------------------------------

BODY = {
    "text": 'Chinese 罕见病, emoji 🧬, quotes "\\", a NUL \u0000 and a newline \n',
    "ints": [0, -1, 2**53 + 1, 2**64 + 7, -(2**70)],
    "floats": [0.1, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e22],
    "one_and_one_point_oh_and_true": [1, 1.0, True],
    "nested": {"list": [1, [2, [3, {"deep": None}]]], "empty": {}, "none": [], "b": False},
    "": "an empty key",
}


def every_dtype() -> dict[str, Any]:
    """Arrays of every allowed dtype with random bytes (NaN payloads, subnormals, odd bools),
    plus 0-d, empty, big-endian, transposed and Fortran-ordered ones."""
    rng = np.random.default_rng(20240611)
    arrays: dict[str, Any] = {}
    for code in sorted({np.dtype(d).str for d in ALLOWED_DTYPES}):
        dtype = np.dtype(code)
        raw = rng.integers(0, 256, size=6 * dtype.itemsize, dtype=np.uint8)
        arrays[f"random_{dtype.kind}{dtype.itemsize}"] = raw.view(dtype).reshape(2, 3)
    arrays["zero_d"] = np.array(-0.0, dtype=np.float64)
    arrays["zero_d_int"] = np.array(-7, dtype=np.int8)
    arrays["empty"] = np.zeros((0,), dtype=np.float32)
    arrays["hollow"] = np.zeros((3, 0, 2), dtype=np.int16)
    arrays["big_endian"] = np.arange(6, dtype=">f8").reshape(3, 2) / 3
    arrays["transposed"] = np.arange(12, dtype=np.uint16).reshape(3, 4).T
    arrays["fortran"] = np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3))
    return arrays


def test_a_message_to_a_site_arrives_bit_identical(harness: TransportHarness) -> None:
    require(harness, Guarantee.FIDELITY)
    message = Envelope(
        Header(MessageKind.TRAIN_TASK, FEDERATION, STUDY, 1, COORDINATOR, B), BODY, every_dtype()
    )
    harness.publish(message)
    assert_same(harness.fetch(B), message)


def test_an_update_arrives_bit_identical(harness: TransportHarness) -> None:
    """Float32 of the model's shapes: finite values are all a coordinator accepts."""
    require(harness, Guarantee.FIDELITY)
    f32 = np.finfo(np.float32)
    special = [-0.0, float(f32.smallest_subnormal), float(f32.max), float(-f32.max), 1 / 3]
    delta = {
        "scalar": np.array(-0.0, dtype=np.float32),
        "empty": np.zeros(MODEL_SHAPES["empty"], np.float32),
        "hollow": np.zeros(MODEL_SHAPES["hollow"], np.float32),
        "matrix": np.resize(np.array(special, np.float32), MODEL_SHAPES["matrix"]),
        "vector": np.nextafter(np.arange(5, dtype=np.float32), np.float32(9)),
    }
    metrics = {"train_loss": 0.1, "tiny": 5e-324, "huge": 1.7976931348623157e308, "zero": -0.0}
    update = harness.update(A, delta=delta, metrics=metrics, num_examples=2**40)
    harness.submit(update)
    assert_collected(harness, update)


# --- 7. refused input changes nothing ------------------------------------------------------------
#
# Each case returns the action the transport must refuse, the guarantee it needs and words the
# reason must contain. It is given a valid update from site-a that has not been sent; the refused
# message carries that update's nonce (except a replay, which reuses an accepted one), so the
# test can then check that the refusal burned no nonce: the update is delivered afterwards.

Refusal = tuple[Guarantee, Callable[[TransportHarness, Envelope], Callable[[], object]], str]


def _oversized(h: TransportHarness, update: Envelope) -> Callable[[], object]:
    # Room for the update itself, whose timestamps the site's link writes to full precision.
    h.set_limit(len(h.wire(update)) + 64)
    padded = with_metrics(update, **{f"pad_{i}": 0.125 for i in range(64)})
    return lambda: h.submit(padded)


def _expired(h: TransportHarness, update: Envelope) -> Callable[[], object]:
    data = h.wire(update, issued_at=float(int(time.time()) - 7200), ttl_s=3600)
    return lambda: h.submit_wire(A, data)


def _future(h: TransportHarness, update: Envelope) -> Callable[[], object]:
    data = h.wire(update, issued_at=float(int(time.time()) + 3600))
    return lambda: h.submit_wire(A, data)


def _tampered(h: TransportHarness, update: Envelope) -> Callable[[], object]:
    data = h.tampered(h.wire(update))
    return lambda: h.submit_wire(A, data)


def _replayed_nonce(h: TransportHarness, update: Envelope) -> Callable[[], object]:
    earlier = h.update(A, metrics={"train_loss": 9.0})
    h.submit(earlier)
    assert_collected(h, earlier)
    # A second message of site-a on the nonce of one already accepted, the content of another.
    forged = replace(update, header=replace(update.header, nonce=earlier.header.nonce))
    return lambda: h.submit(forged)


def _as_another_site(h: TransportHarness, update: Envelope) -> Callable[[], object]:
    data = h.wire(update)
    return lambda: h.submit_wire(B, data)  # site-a's signed update on site-b's channel


REFUSALS: dict[str, Refusal] = {
    "oversized": (Guarantee.SIZE_LIMIT, _oversized, "limit"),
    "expired": (Guarantee.EXPIRY, _expired, "expired"),
    "dated in the future": (Guarantee.EXPIRY, _future, "in the future"),
    "tampered": (Guarantee.INTEGRITY, _tampered, "signature"),
    "replayed nonce": (Guarantee.REPLAY, _replayed_nonce, "replayed"),
    "sent as another site": (Guarantee.CHANNEL, _as_another_site, "'site-a'"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_input_says_why_and_changes_nothing(harness: TransportHarness, case: str) -> None:
    guarantee, make, words = REFUSALS[case]
    require(harness, guarantee)
    update = harness.update(A)
    action = make(harness, update)
    error = refused(harness, action)
    assert words in str(error), error
    if guarantee is Guarantee.INTEGRITY:
        assert isinstance(error, IntegrityError)
    assert harness.collect() == []
    # The next valid messages flow as if nothing had happened, the refused nonce included.
    if case != "replayed nonce":
        harness.submit(update)
        assert_collected(harness, update)
    message = task(A, 1)
    harness.publish(message)
    assert_same(harness.fetch(A), message)
    other = harness.update(B)
    harness.submit(other)
    assert_collected(harness, other)


# --- HTTPS only: what the contract says about a channel the other transports do not have --------


def test_https_an_oversized_upload_of_unannounced_length_names_its_size(
    https: HttpsDeployment, tmp_path: Path
) -> None:
    h = HttpsHarness(https, tmp_path)
    try:
        data = h.wire(h.update(A))
        h.set_limit(len(data) - 1)

        def chunked() -> Iterator[bytes]:  # no Content-Length: the server must count
            yield from (data[i : i + 1000] for i in range(0, len(data), 1000))

        def post() -> object:
            return https.clients[A].request(
                "POST",
                "/v1/updates",
                content=chunked(),
                headers={"content-type": "application/octet-stream"},
            )

        reason = str(refused(h, post))
        assert "limit" in reason
        assert len(data) - 1 in _numbers(reason)
        assert any(n > len(data) - 1 for n in _numbers(reason)), reason
        assert h.collect() == []
    finally:
        h.close()
