"""Reading what a simulation sent: its frames are signed, as over HTTPS or in a bundle."""

from __future__ import annotations

from alliance.protocol.codec import decode_signed
from alliance.protocol.envelope import Envelope


def _anyone(signer: str, certificate_der: bytes, data: bytes, signature: bytes) -> None:
    """Accept every signer: a test reads what was sent; the recipients checked it."""


def opened(data: bytes) -> Envelope:
    """The message inside a signed frame (its signature is not checked here)."""
    return decode_signed(data, _anyone).envelope
