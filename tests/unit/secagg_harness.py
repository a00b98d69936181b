"""Test harness for alliance.secagg: real Ed25519 identities and an honest coordinator loop.

Every message goes through ``to_json`` → ``json.dumps`` → ``json.loads`` → ``from_json`` (and
the sealed shares through hex), as it would in a protocol envelope.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alliance.secagg import (
    AggregateSum,
    KeyAdvert,
    RoundContext,
    RoundSetup,
    SecAggClient,
    SecAggServer,
    UnmaskRequest,
    UnmaskResponse,
)

UIntArray = npt.NDArray[np.unsignedinteger[Any]]


class Stage(enum.Enum):
    """Where a site may drop: it sends nothing from this stage on."""

    ADVERTISE = "advertise"
    SHARE = "share"
    MASK = "mask"
    CONFIRM = "confirm"
    UNMASK = "unmask"


STAGES = tuple(Stage)


class Identities:
    """One real Ed25519 key pair per site; ``signer(site)`` and ``verify`` are the callbacks."""

    def __init__(self, sites: Iterable[str]) -> None:
        self.keys = {s: Ed25519PrivateKey.generate() for s in sites}
        self.public = {s: k.public_key() for s, k in self.keys.items()}

    def signer(self, site: str) -> Any:
        return self.keys[site].sign

    def verify(self, site: str, data: bytes, signature: bytes) -> bool:
        public = self.public.get(site)
        if public is None:
            return False
        try:
            public.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def site_names(n: int) -> list[str]:
    return [f"site-{i:02d}" for i in range(n)]


def wire(message: Any) -> Any:
    """Round-trip a message through JSON text, as a protocol envelope would."""
    return type(message).from_json(json.loads(json.dumps(message.to_json())))


def wire_bytes(sealed: Mapping[str, bytes]) -> dict[str, bytes]:
    return {k: bytes.fromhex(json.loads(json.dumps(v.hex()))) for k, v in sealed.items()}


@dataclass
class Federation:
    """An honest coordinator and honest sites running one attempt, with chosen dropouts."""

    setup: RoundSetup
    ids: Identities
    clients: dict[str, SecAggClient] = field(default_factory=dict)
    server: SecAggServer = field(init=False)
    #: Every unmask response an honest client released.
    releases: list[UnmaskResponse] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = SecAggServer(self.setup, verify=self.ids.verify)
        for s in self.setup.sites:
            self.clients[s] = SecAggClient(
                self.setup, s, sign=self.ids.signer(s), verify=self.ids.verify
            )

    @classmethod
    def create(
        cls,
        n: int,
        *,
        vector_length: int = 8,
        modulus_bits: int = 32,
        round_: int = 1,
        attempt: int = 0,
        threshold: int | None = None,
        neighbours: int | None = None,
        ids: Identities | None = None,
    ) -> Federation:
        sites = site_names(n)
        setup = RoundSetup(
            context=RoundContext("consortium", "study", round_, attempt),
            sites=tuple(sites),
            vector_length=vector_length,
            modulus_bits=modulus_bits,
            threshold=threshold,
            neighbours=neighbours,
        )
        return cls(setup, ids or Identities(sites))

    def run(
        self, inputs: Mapping[str, UIntArray], drops: Mapping[Stage, Iterable[str]] | None = None
    ) -> AggregateSum:
        """Run every stage; a site listed under a stage sends nothing from that stage on."""
        gone: set[str] = set()
        plan = {stage: set((drops or {}).get(stage, ())) for stage in STAGES}

        def alive(stage: Stage, sites: Iterable[str]) -> list[str]:
            gone.update(plan[stage])
            return [s for s in sorted(sites) if s not in gone]

        for s in alive(Stage.ADVERTISE, self.setup.sites):
            self.server.receive_advert(wire(self.clients[s].advertise()))
        u1 = self.server.close_adverts()
        for s in alive(Stage.SHARE, u1):
            adverts = {k: wire(a) for k, a in u1.items()}
            sealed = self.clients[s].share_keys(adverts)
            self.server.receive_shares(s, wire_bytes(sealed))
        routing = self.server.close_shares()
        for s in alive(Stage.MASK, routing.survivors):
            self.clients[s].receive_shares(wire_bytes(routing.sealed[s]))
            masked = self.clients[s].mask(inputs[s], survivors=list(routing.survivors))
            self.server.receive_masked(s, masked)
        u3 = self.server.close_masked()
        for s in alive(Stage.CONFIRM, u3):
            self.server.receive_confirmation(s, self.clients[s].confirm(list(u3)))
        request: UnmaskRequest = wire(self.server.close_confirmations())
        for s in alive(Stage.UNMASK, request.confirmations):
            response = self.clients[s].answer(request)
            self.releases.append(response)
            self.server.receive_unmask(wire(response))
        return self.server.result()


def random_inputs(
    sites: Sequence[str], setup: RoundSetup, rng: np.random.Generator
) -> dict[str, UIntArray]:
    high = 1 << setup.modulus_bits
    return {
        s: rng.integers(0, high, size=setup.vector_length, dtype=np.uint64, endpoint=False).astype(
            setup.dtype
        )
        for s in sites
    }


def modular_sum(vectors: Iterable[UIntArray], modulus_bits: int, length: int) -> list[int]:
    """The exact sum in Python integers (no numpy wrap-around involved)."""
    total = [0] * length
    for v in vectors:
        for i, x in enumerate(v.tolist()):
            total[i] += int(x)
    return [x % (1 << modulus_bits) for x in total]


def reconstructable(
    releases: Iterable[UnmaskResponse], threshold: int
) -> tuple[set[str], set[str]]:
    """Owners whose seed ``b``, and owners whose mask key ``s_sk``, could be rebuilt from the
    released shares (at least ``threshold`` distinct share indices)."""
    seeds: dict[str, set[int]] = {}
    keys: dict[str, set[int]] = {}
    for response in releases:
        for owner, share in response.seed_shares.items():
            seeds.setdefault(owner, set()).add(share.index)
        for owner, share in response.key_shares.items():
            keys.setdefault(owner, set()).add(share.index)
    return (
        {o for o, idx in seeds.items() if len(idx) >= threshold},
        {o for o, idx in keys.items() if len(idx) >= threshold},
    )


def most_shares_released(releases: Iterable[UnmaskResponse]) -> int:
    """The largest number of shares released of any one secret."""
    counts: dict[tuple[str, str], int] = {}
    for response in releases:
        for owner in response.seed_shares:
            counts[("seed", owner)] = counts.get(("seed", owner), 0) + 1
        for owner in response.key_shares:
            counts[("key", owner)] = counts.get(("key", owner), 0) + 1
    return max(counts.values(), default=0)


__all__ = [
    "STAGES",
    "Federation",
    "Identities",
    "KeyAdvert",
    "Stage",
    "modular_sum",
    "most_shares_released",
    "random_inputs",
    "reconstructable",
    "site_names",
    "wire",
    "wire_bytes",
]
