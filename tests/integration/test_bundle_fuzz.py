"""Fuzzing sealed bundles: no mutation of a valid bundle is ever accepted, or fails untidily.

A handful of valid bundles (sites to the coordinator and back, two rounds, a secure-aggregation
stage) are sealed once; then 12,000 mutations of them, drawn from a seeded generator, are opened
by the party each mutation targets. Mutations: byte flips, insertions, deletions, truncations,
appended bytes, random files; header edits with the old signature, re-signed by the sender
(spliced) and re-signed by another site under its own name; byte edits of the header JSON,
re-signed; a damaged signed message sealed by a malicious sender; another bundle's ciphertext
spliced under a header (a replay of another round or another pair); opening as another
recipient or with another key; opening too late, too early or in another federation. Each
must raise :class:`ProtocolError` (or :class:`IntegrityError`) with a reason that does not echo
the sealed content; any other outcome fails the test.
"""

from __future__ import annotations

import collections
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from nacl.bindings import crypto_sign_ed25519_sk_to_curve25519
from nacl.public import PrivateKey, SealedBox
from tests.unit.test_bundles import (
    FED,
    NOW,
    PLANTED,
    Party,
    Pki,
    build,
    make_pki,
    message,
    resign,
    seal,
    split,
    x25519,
)

from alliance.core.errors import ProtocolError
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.bundles import open_bundle
from alliance.protocol.envelope import COORDINATOR, MessageKind

SEED = 20_250_611
ATTEMPTS = 12_000


@dataclass(frozen=True)
class Attempt:
    """What is handed to ``open_bundle``: bytes, and who opens them, where and when."""

    data: bytes
    recipient: str
    key: ed25519.Ed25519PrivateKey
    federation: str = FED
    now: float = NOW


@dataclass(frozen=True)
class Valid:
    """A valid bundle, its sender and its recipient."""

    data: bytes
    sender: Party
    recipient: Party

    def attempt(self, data: bytes | None = None) -> Attempt:
        return Attempt(self.data if data is None else data, self.recipient.name, self.recipient.key)


@dataclass(frozen=True)
class World:
    pki: Pki
    bundles: tuple[Valid, ...]

    @property
    def parties(self) -> tuple[Party, ...]:
        return (self.pki.coordinator, self.pki.site_a, self.pki.site_b)


@pytest.fixture(scope="module")
def world() -> World:
    pki = make_pki()
    envelopes = [
        message("site-a", nonce=f"{1:032x}"),
        message("site-b", nonce=f"{2:032x}"),
        message("site-a", round=2, nonce=f"{3:032x}"),
        message(COORDINATOR, "site-a", kind=MessageKind.TRAIN_TASK, nonce=f"{4:032x}"),
        message(COORDINATOR, "site-b", kind=MessageKind.TRAIN_TASK, round=2, nonce=f"{5:032x}"),
        message(
            "site-b",
            kind=MessageKind.SECAGG,
            body={"stage": "masked", "attempt": 0, "payload": {"note": PLANTED}},
            nonce=f"{6:032x}",
        ),
    ]
    bundles = tuple(
        Valid(seal(pki, env), pki.party(env.header.sender), pki.party(env.header.recipient))
        for env in envelopes
    )
    return World(pki, bundles)


def verifier(world: World, recipient: str) -> MessageVerifier:
    return MessageVerifier(world.pki.trust, role=None)


# ---------------------------------------------------------------------------------------------
# mutations: each takes the generator, the world and a valid bundle, and returns an attempt

Mutation = Callable[[random.Random, World, Valid], Attempt]


def _noise(rng: random.Random, low: int, high: int) -> bytes:
    return rng.randbytes(rng.randint(low, high))


def flip(rng: random.Random, world: World, valid: Valid) -> Attempt:
    data = bytearray(valid.data)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= rng.randint(1, 255)
    return valid.attempt(bytes(data))


def insert(rng: random.Random, world: World, valid: Valid) -> Attempt:
    at = rng.randrange(len(valid.data) + 1)
    return valid.attempt(valid.data[:at] + _noise(rng, 1, 16) + valid.data[at:])


def delete(rng: random.Random, world: World, valid: Valid) -> Attempt:
    at = rng.randrange(len(valid.data))
    return valid.attempt(valid.data[:at] + valid.data[at + rng.randint(1, 16) :])


def truncate(rng: random.Random, world: World, valid: Valid) -> Attempt:
    return valid.attempt(valid.data[: rng.randrange(len(valid.data))])


def append(rng: random.Random, world: World, valid: Valid) -> Attempt:
    return valid.attempt(valid.data + _noise(rng, 1, 16))


def garbage(rng: random.Random, world: World, valid: Valid) -> Attempt:
    prefix = rng.choice([b"", b"GABN", b"GABN\x01\x00", valid.data[:10]])
    return valid.attempt(prefix + _noise(rng, 0, 3000))


def _edit(rng: random.Random, world: World, header: dict[str, Any]) -> dict[str, Any]:
    """A changed value for one header field: of the right type, or not."""
    field = rng.choice(sorted(header))
    choices: list[Any] = [None, True, -1, 2**70, 1.5, "", "x", [], {}, "\u00e9t\u00e9"]
    typed: dict[str, list[Any]] = {
        "federation": ["other-fed", FED + "x"],
        "study": ["other", "study2"],
        "round": [0, 1, 2, 3, 10**6],
        "stage": ["train_task", "model_update", "refusal", "masked", "keys"],
        "sender": [p.name for p in world.parties] + ["site-d"],
        "recipient": [p.name for p in world.parties],
        "nonce": [f"{i:032x}" for i in range(1, 8)],
        "created_at": [NOW - 1, NOW + 1, NOW - 86400, NOW + 10**6],
        "expires_at": [NOW + 1, NOW + 10**7, NOW - 1],
        "certificate": [
            rng.choice([p.signer.certificate_der for p in world.parties]).hex(),
            "QUJD",
        ],
    }
    value = rng.choice(typed[field] + choices if rng.random() < 0.3 else typed[field])
    return {field: value} if value != header[field] else _edit(rng, world, header)


def header_unsigned(rng: random.Random, world: World, valid: Valid) -> Attempt:
    return valid.attempt(resign(valid.data, None, **_edit(rng, world, split(valid.data).header)))


def header_resigned(rng: random.Random, world: World, valid: Valid) -> Attempt:
    """The true sender signs a header that is not the sealed message's (splicing)."""
    edits = _edit(rng, world, split(valid.data).header)
    attempt = valid.attempt(resign(valid.data, valid.sender, **edits))
    if edits.get("recipient") in [p.name for p in world.parties]:
        target = world.pki.party(edits["recipient"])  # opened by the party it now names
        attempt = replace(attempt, recipient=target.name, key=target.key)
    return attempt


def other_signer(rng: random.Random, world: World, valid: Valid) -> Attempt:
    """Another party re-signs the bundle: as itself, or claiming to be the sender."""
    forger = rng.choice([p for p in world.parties if p.name != valid.sender.name])
    edits = {"sender": forger.name} if rng.random() < 0.7 else {}
    if rng.random() < 0.3:
        edits.update(_edit(rng, world, split(valid.data).header))
    if edits.get("sender") == forger.name:
        return valid.attempt(resign(valid.data, forger, **edits))
    # Keeps the claimed sender's certificate, signs with the forger's key.
    parts = split(valid.data)
    return valid.attempt(build({**parts.header, **edits}, parts.ciphertext, forger.signer.sign))


def header_bytes(rng: random.Random, world: World, valid: Valid) -> Attempt:
    """A byte of the header JSON changed, signed again by the true sender."""
    parts = split(valid.data)
    raw = bytearray(parts.header_raw)
    raw[rng.randrange(len(raw))] ^= rng.choice([1, 2, 4, 8, 16, 32, 64, 128, rng.randint(1, 255)])
    return valid.attempt(build(bytes(raw), parts.ciphertext, valid.sender.signer.sign))


def splice(rng: random.Random, world: World, valid: Valid) -> Attempt:
    """Another bundle's ciphertext (another round, pair or stage) under this header."""
    donor = rng.choice([b for b in world.bundles if b.data != valid.data])
    parts = split(valid.data)
    ciphertext = split(donor.data).ciphertext
    sign = valid.sender.signer.sign if rng.random() < 0.7 else parts.signature
    attempt = valid.attempt(build(parts.header, ciphertext, sign))
    if rng.random() < 0.3:  # opened by the donor's recipient, who can decrypt it
        attempt = replace(attempt, key=donor.recipient.key)
    return attempt


def _inner(valid: Valid) -> bytes:
    """The signed frame sealed in ``valid`` (the fuzzer holds every key)."""
    key = valid.recipient.key
    secret = crypto_sign_ed25519_sk_to_curve25519(
        key.private_bytes_raw() + key.public_key().public_bytes_raw()
    )
    return SealedBox(PrivateKey(secret)).decrypt(split(valid.data).ciphertext)


def inner_mutated(rng: random.Random, world: World, valid: Valid) -> Attempt:
    """A malicious sender seals a damaged signed frame under a correct header and signature."""
    inner = bytearray(_inner(valid))
    if rng.random() < 0.5:
        for _ in range(rng.randint(1, 4)):
            inner[rng.randrange(len(inner))] ^= rng.randint(1, 255)
    else:
        del inner[rng.randrange(len(inner)) :]
    parts = split(valid.data)
    sealed = SealedBox(x25519(valid.recipient.public)).encrypt(bytes(inner))
    return valid.attempt(build(parts.header, sealed, valid.sender.signer.sign))


def wrong_recipient(rng: random.Random, world: World, valid: Valid) -> Attempt:
    other = rng.choice([p for p in world.parties if p.name != valid.recipient.name])
    mode = rng.randrange(3)
    if mode == 0:  # another party opens it as itself
        return Attempt(valid.data, other.name, other.key)
    if mode == 1:  # claims to be the recipient, holds another key
        return Attempt(valid.data, valid.recipient.name, other.key)
    # The sender re-addresses the header to another party, who opens it.
    return Attempt(resign(valid.data, valid.sender, recipient=other.name), other.name, other.key)


def wrong_time(rng: random.Random, world: World, valid: Valid) -> Attempt:
    header = split(valid.data).header
    if rng.random() < 0.5:
        now = header["expires_at"] + rng.uniform(0.001, 1e8)
    else:
        now = header["created_at"] - 300 - rng.uniform(0.001, 1e8)
    return replace(valid.attempt(), now=now)


def wrong_federation(rng: random.Random, world: World, valid: Valid) -> Attempt:
    return replace(valid.attempt(), federation=rng.choice(["other-fed", "", FED.upper()]))


MUTATIONS: dict[str, Mutation] = {
    "flip": flip,
    "insert": insert,
    "delete": delete,
    "truncate": truncate,
    "append": append,
    "garbage": garbage,
    "header unsigned": header_unsigned,
    "header re-signed": header_resigned,
    "other signer": other_signer,
    "header bytes": header_bytes,
    "splice": splice,
    "inner mutated": inner_mutated,
    "wrong recipient": wrong_recipient,
    "wrong time": wrong_time,
    "wrong federation": wrong_federation,
}

# Where a refusal came from, by its reason: every check must be reached by some mutation.
CHECKS = {
    "sealed message": r"sealed message refused",  # first: it wraps the codec's own reasons
    "frame": r"too short|truncated|trailing|exceeds|bad magic|format version|ciphertext of",
    "header": r"bundle header",
    "address": r"belongs to federation|addressed to|expired|in the future",
    "signature": r"signature of|certificate",
    "box": r"does not open",
    "binding": r"seals a message signed by|disagrees with the sealed message",
}


def _check_of(reason: str) -> str:
    for check, pattern in CHECKS.items():
        if re.search(pattern, reason):
            return check
    return "other"


# A flipped byte inside a certificate can make cryptography parse a serial number as negative;
# it warns (pytest turns warnings into errors). That is the trust store's business, not ours.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_no_mutated_bundle_is_ever_accepted(world: World) -> None:
    rng = random.Random(SEED)
    names = list(MUTATIONS)
    per_mutation: collections.Counter[str] = collections.Counter()
    per_check: collections.Counter[str] = collections.Counter()
    originals = {b.data for b in world.bundles}
    tried = 0
    while tried < ATTEMPTS:
        name = names[tried % len(names)]
        valid = rng.choice(world.bundles)
        attempt = MUTATIONS[name](rng, world, valid)
        if attempt.data in originals and attempt == valid.attempt(attempt.data):
            continue  # the mutation happened to give back a valid bundle, opened as meant
        tried += 1
        per_mutation[name] += 1
        try:
            opened = open_bundle(
                attempt.data,
                verify=verifier(world, attempt.recipient),
                recipient=attempt.recipient,
                recipient_key=attempt.key,
                federation=attempt.federation,
                now=attempt.now,
            )
        except ProtocolError as exc:
            reason = str(exc)
            assert reason, f"{name}: empty reason"
            assert PLANTED not in reason, f"{name}: the reason echoes sealed content"
            per_check[_check_of(reason)] += 1
        except Exception as exc:  # the point of the test: nothing else may escape
            pytest.fail(f"{name} (attempt {tried}) raised {type(exc).__name__}: {exc}")
        else:
            h = opened.header
            pytest.fail(f"{name} (attempt {tried}) was accepted: {h.sender} to {h.recipient}")
    assert sum(per_mutation.values()) == ATTEMPTS
    assert min(per_mutation.values()) >= ATTEMPTS // len(MUTATIONS) - 1
    assert per_check["other"] == 0, per_check
    assert set(per_check) == set(CHECKS), per_check  # every check was reached


def test_every_valid_bundle_opens(world: World) -> None:
    """The control: unmutated, each bundle opens for its recipient."""
    for valid in world.bundles:
        attempt = valid.attempt()
        opened = open_bundle(
            attempt.data,
            verify=verifier(world, attempt.recipient),
            recipient=attempt.recipient,
            recipient_key=attempt.key,
            federation=FED,
            now=NOW,
        )
        assert opened.header.sender == valid.sender.name
