"""Which secure-aggregation attempt a message belongs to, and the canonical bytes that bind it.

Design
------
Every key, mask, share, signature and ciphertext of secure aggregation is bound to one
:class:`RoundContext`: the federation, the study, the round and an attempt counter (a round
that is aborted and restarted gets a new attempt, hence fresh keys and masks). A message made
for one context cannot be replayed into another: its signature, its AEAD associated data or its
key derivation no longer match.

A context may also name a *key slot* (:mod:`alliance.secagg.batched`): slot ``j`` of the key batch
set up in that round and attempt. A slot is one independent instance of the protocol whose keys
were advertised and shared in advance; its context encodes under its own label, so nothing made
for one slot verifies for another slot, for another batch, or for a context without a slot (whose
encoding is unchanged).

What is signed, hashed or fed to a key derivation is always :func:`canonical_bytes`: each part
tagged with its type and prefixed with its length, so that no two different tuples of parts
share an encoding (``("ab", "c")`` and ``("a", "bc")`` differ). Every use starts with its own
label (a domain-separation string ending in a version), so bytes made for one purpose never
verify for another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alliance.core.errors import ConfigError, ProtocolError

__all__ = ["RoundContext", "canonical_bytes"]

_SEED_LABEL = "alliance-secagg-round-seed-v1"
_CONTEXT_LABEL = "alliance-secagg-context-v1"
_SLOT_CONTEXT_LABEL = "alliance-secagg-slot-context-v1"
_FIELDS = frozenset({"federation", "study", "round", "attempt"})


def canonical_bytes(*parts: str | bytes | int | Sequence[str]) -> bytes:
    """Encode ``parts`` unambiguously: a type tag and a 4-byte length before each part.

    Strings are UTF-8, integers (``>= 0``) 8 bytes big-endian, sequences of strings are encoded
    recursively as one part. Used for everything that is signed, hashed or key-derived.
    """
    out = bytearray()
    for part in parts:
        if isinstance(part, bytes):
            tag, raw = b"b", part
        elif isinstance(part, str):
            tag, raw = b"s", part.encode("utf-8")
        elif isinstance(part, int) and not isinstance(part, bool):
            if part < 0:
                raise ValueError(f"canonical_bytes encodes integers >= 0, got {part}")
            tag, raw = b"i", part.to_bytes(8, "big")
        elif isinstance(part, Sequence):
            tag, raw = b"l", canonical_bytes(*part)
        else:
            raise TypeError(f"canonical_bytes cannot encode {type(part).__name__}")
        out += tag + len(raw).to_bytes(4, "big") + raw
    return bytes(out)


@dataclass(frozen=True)
class RoundContext:
    """The attempt of a round that every secure-aggregation value is bound to.

    Parameters
    ----------
    federation, study
        The consortium and the study (non-empty).
    round
        The round number (``>= 0``).
    attempt
        Which try of the round (``>= 0``); a restarted round uses a new attempt.
    slot
        ``None`` for a per-round attempt; ``j >= 0`` for slot ``j`` of the key batch set up in
        this round and attempt.
    """

    federation: str
    study: str
    round: int
    attempt: int = 0
    slot: int | None = None

    def __post_init__(self) -> None:
        for name in ("federation", "study"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"round context: {name} must be a non-empty string, got {value!r}"
                )
        for name in ("round", "attempt"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"round context: {name} must be an integer >= 0, got {value!r}")
        if self.slot is not None and (
            not isinstance(self.slot, int) or isinstance(self.slot, bool) or self.slot < 0
        ):
            raise ConfigError(
                f"round context: slot must be None or an integer >= 0, got {self.slot!r}"
            )

    def with_slot(self, slot: int) -> RoundContext:
        """Slot ``slot`` of the key batch set up in this attempt."""
        return RoundContext(self.federation, self.study, self.round, self.attempt, slot)

    def to_bytes(self) -> bytes:
        """The canonical encoding of the context (part of every signed or derived value)."""
        if self.slot is None:
            return canonical_bytes(
                _CONTEXT_LABEL, self.federation, self.study, self.round, self.attempt
            )
        return canonical_bytes(
            _SLOT_CONTEXT_LABEL, self.federation, self.study, self.round, self.attempt, self.slot
        )

    @property
    def public_seed(self) -> bytes:
        """A 32-byte public seed of this attempt (orders the sites of a sparse masking graph)."""
        return hashlib.sha256(canonical_bytes(_SEED_LABEL, self.to_bytes())).digest()

    def describe(self) -> str:
        """Human-readable form for error messages."""
        where = (
            f"federation {self.federation!r} study {self.study!r} round {self.round} "
            f"attempt {self.attempt}"
        )
        return (
            where if self.slot is None else f"key slot {self.slot} of the batch set up in {where}"
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form: ``{"federation", "study", "round", "attempt"}``, and ``"slot"`` only
        for a key slot."""
        out: dict[str, Any] = {
            "federation": self.federation,
            "study": self.study,
            "round": self.round,
            "attempt": self.attempt,
        }
        if self.slot is not None:
            out["slot"] = self.slot
        return out

    @classmethod
    def from_json(cls, raw: Any) -> RoundContext:
        """Validate a context received in a message.

        Raises
        ------
        ProtocolError
            ``raw`` is not an object with exactly the four fields (five with ``slot``), or a field
            is invalid.
        """
        if not isinstance(raw, dict) or set(raw) not in (_FIELDS, _FIELDS | {"slot"}):
            raise ProtocolError(
                f"secagg round context must have exactly the fields {sorted(_FIELDS)} "
                "(and 'slot' for a key slot)"
            )
        slot = raw.get("slot")
        if "slot" in raw and slot is None:
            raise ProtocolError("secagg round context: slot must be an integer >= 0")
        try:
            return cls(raw["federation"], raw["study"], raw["round"], raw["attempt"], slot)
        except ConfigError as exc:
            raise ProtocolError(str(exc)) from None
