"""Reading a secure-aggregation payload strictly, one field at a time.

:mod:`alliance.protocol.secagg_messages` reads each stage's payload with a
:class:`PayloadReader`: every refusal is a :class:`~alliance.core.errors.ProtocolError` that
names the stage, the field (``adverts[1]['site-b']``) and the sender, and says what was
expected. Hex fields have a length cap, so no field can make a receiver hold more than the
message's own size limit allows in one value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy.typing as npt

from alliance.core.errors import ProtocolError
from alliance.secagg import MAX_KEY_BATCH, KeyAdvert
from alliance.secagg.sealing import MAX_SEALED_SIZE

__all__ = ["PayloadReader"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class PayloadReader:
    """One received secure-aggregation payload, read field by field.

    Parameters
    ----------
    stage
        The message's stage name.
    sender
        Who sent it (the header's sender).
    payload
        The body's ``payload``, as decoded from JSON.
    arrays
        The envelope's arrays.
    """

    stage: str
    sender: str
    payload: Any = field(repr=False)
    arrays: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict, repr=False)

    def error(self, name: str, problem: str) -> ProtocolError:
        """The refusal of field ``name``: ``problem`` says what is wrong with it."""
        return ProtocolError(
            f"secure aggregation {self.stage!r} message from {self.sender}: {name} {problem}"
        )

    def __getitem__(self, name: str) -> Any:
        """The payload's field ``name`` (after :meth:`form` checked it is there)."""
        return self.payload[name]

    def form(self, *forms: set[str]) -> set[str]:
        """Check the payload has exactly the fields of one of ``forms``; return that form."""
        if isinstance(self.payload, dict):
            for fields in forms:
                if set(self.payload) == fields:
                    return fields
        got = sorted(self.payload) if isinstance(self.payload, dict) else type(self.payload)
        expected = " or ".join(str(sorted(f)) for f in forms)
        raise self.error("payload", f"must have exactly the fields {expected}, got {got}")

    def slots(self, name: str) -> list[Any]:
        """A key batch's list, one entry per slot (one slot is sent in the single form)."""
        value = self.payload[name]
        if not isinstance(value, list) or not 2 <= len(value) <= MAX_KEY_BATCH:
            raise self.error(
                name, f"must be a list with one entry per key slot (2 to {MAX_KEY_BATCH})"
            )
        return value

    def object(self, value: Any, name: str) -> dict[str, Any]:
        """``value`` as a JSON object."""
        if not isinstance(value, dict):
            raise self.error(name, f"must be an object, got {type(value).__name__}")
        return value

    def hex(self, value: Any, name: str, limit: int) -> bytes:
        """``value`` as hex of 1 to ``limit`` bytes."""
        if not isinstance(value, str):
            raise self.error(name, f"must be a hex string, got {type(value).__name__}")
        if not 0 < len(value) <= 2 * limit:
            raise self.error(name, f"must be 1 to {limit} bytes, got {len(value) // 2}")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise self.error(name, "is not valid hex") from None

    def sites(self, value: Any, name: str) -> tuple[str, ...]:
        """``value`` as a list of site ids."""
        if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
            raise self.error(name, "must be a list of site ids")
        return tuple(value)

    def by_site(self, value: Any, name: str, read: Callable[[Any, str], _T]) -> dict[str, _T]:
        """An object keyed by site id, each value read by ``read(value, where)``."""
        raw = self.object(value, name)
        if not all(raw):
            raise self.error(name, "must be keyed by non-empty site ids")
        return {site: read(v, f"{name}[{site!r}]") for site, v in raw.items()}

    def parse(self, read: Callable[[Any], _T], value: Any, name: str) -> _T:
        """``read(value)``, its refusal named after this field."""
        try:
            return read(value)
        except ProtocolError as exc:
            raise self.error(name, f"is invalid: {exc}") from None

    def advert(self, value: Any, name: str) -> KeyAdvert:
        """``value`` as a key advert."""
        return self.parse(KeyAdvert.from_json, value, name)

    def adverts(self, value: Any, name: str) -> dict[str, KeyAdvert]:
        """``value`` as site → key advert."""
        return self.by_site(value, name, self.advert)

    def sealed(self, value: Any, name: str) -> dict[str, bytes]:
        """``value`` as site → sealed shares (hex)."""
        return self.by_site(value, name, lambda c, where: self.hex(c, where, MAX_SEALED_SIZE))

    def routing(self, value: Any, prefix: str) -> tuple[dict[str, bytes], tuple[str, ...]]:
        """One slot's share routing: the sealed shares by sender and the slot's U2."""
        entry = self.object(value, prefix.rstrip(".") or "payload")
        if set(entry) != {"ciphertexts", "survivors"}:
            raise self.error(
                prefix.rstrip(".") or "payload",
                f"must have exactly the fields ['ciphertexts', 'survivors'], got {sorted(entry)}",
            )
        return (
            self.sealed(entry["ciphertexts"], f"{prefix}ciphertexts"),
            self.sites(entry["survivors"], f"{prefix}survivors"),
        )
