"""A signed message's validity window against the receiver's clock, and clock skew in words.

A signed message carries when its signer made it and until when it is valid, both by the
signer's clock. The receiver refuses one that has expired or that is dated more than
:data:`MAX_CLOCK_SKEW_S` ahead. Over HTTPS a message is signed for the very delivery that
carries it (the coordinator signs a task when a hospital's poll takes it; a hospital signs an
update when it posts it), so a message that arrives expired, like one from the future, can only
mean that the two machines' clocks disagree: the error then says whose clock is ahead, by about
how much, and what to do (fix the system clock, NTP), instead of asking the sender for a fresh
message it cannot make any fresher.
"""

from __future__ import annotations

import time

from alliance.core.errors import ProtocolError
from alliance.protocol.envelope import COORDINATOR

__all__ = ["MAX_CLOCK_SKEW_S", "check_validity"]

#: How far a sender's clock may run ahead of the receiver's.
MAX_CLOCK_SKEW_S = 300.0


def check_validity(
    signer: str, *, issued: float, expires: float, clock: float, here: str | None = None
) -> None:
    """Raise :class:`ProtocolError` unless ``clock`` is inside a message's validity window.

    Parameters
    ----------
    signer
        Who signed the message.
    issued, expires
        Its validity window, unix seconds by the signer's clock.
    clock
        The receiver's clock, unix seconds.
    here
        Who receives, in words (``"this hospital"``), when the signer made the message for
        this very delivery: then a message that arrives expired is clock skew, and said so.
    """
    sender = "the coordinator" if signer == COORDINATOR else repr(signer)
    if clock > expires and here is not None:
        raise ProtocolError(
            f"message from {signer!r} expired on arrival: {here}'s clock is about "
            f"{_duration(clock - issued)} ahead of {sender}'s ({_times(issued, clock)}); it was "
            f"signed for this delivery and valid for {expires - issued:.0f} s, so fix the "
            "system clock (NTP)"
        )
    if clock > expires:
        raise ProtocolError(
            f"message from {signer!r} expired {clock - expires:.0f} s ago; the sender must "
            "send a fresh one"
        )
    if issued > clock + MAX_CLOCK_SKEW_S:
        raise ProtocolError(
            f"message from {signer!r} is dated {issued - clock:.0f} s in the future; check the "
            f"clocks of both machines: {sender}'s clock is about {_duration(issued - clock)} "
            f"ahead of {here or 'this machine'}'s ({_times(issued, clock)}); fix the wrong one "
            "(NTP)"
        )


def _duration(seconds: float) -> str:
    """``"45 s"``, ``"4 minutes"``, ``"3 hours"``, ``"2 days"``: how far apart two clocks are."""
    for unit, size in (("days", 86_400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    if seconds >= 90:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds:.0f} s"


def _times(issued: float, clock: float) -> str:
    def show(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))

    return f"message created at {show(issued)}, local time {show(clock)}"
