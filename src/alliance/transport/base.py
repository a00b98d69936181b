"""How messages move between the coordinator and the sites, whatever the channel.

Sites always initiate: a site *fetches* its next message and *submits* its replies; the
coordinator *publishes* messages addressed to sites and *collects* what sites submitted. The
coordinator never opens a connection to a site. Two protocols express the two ends:

- :class:`SiteLink`, what a site holds (in-memory, file bundles, or an HTTPS client);
- :class:`CoordinatorMailbox`, what the coordinator holds (in-memory, file bundles, or the HTTPS
  server's queues).

Both carry :class:`~alliance.protocol.envelope.Envelope` objects; implementations must pass
them through :mod:`alliance.protocol.codec` so that every channel exercises the same bytes.
A site's ``submit`` answers with :class:`Sent`: the size of what left the site and the channel's
receipt, which the hospital writes to its audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from alliance.protocol.envelope import Envelope

__all__ = ["CoordinatorMailbox", "Sent", "SiteLink"]


@dataclass(frozen=True)
class Sent:
    """A message a site submitted, as it left the site.

    Attributes
    ----------
    size
        Its size in bytes on the channel (signed, sealed or encoded as the channel carries it).
    receipt
        What the channel says of it: the coordinator's receipt over HTTPS, the bundle's file
        name on files, ``"in memory"`` in one process.
    """

    size: int
    receipt: str


@runtime_checkable
class SiteLink(Protocol):
    """A site's end of a channel."""

    def fetch(self, site: str) -> Envelope | None:
        """The next message addressed to ``site``, or ``None`` if there is none yet."""
        ...

    def submit(self, envelope: Envelope) -> Sent:
        """Send a message from this site to the coordinator; say what left the site."""
        ...


@runtime_checkable
class CoordinatorMailbox(Protocol):
    """The coordinator's end of a channel."""

    def publish(self, envelope: Envelope) -> None:
        """Queue a message for the site named in its header's recipient."""
        ...

    def collect(self) -> list[Envelope]:
        """All messages submitted by sites since the last call, in arrival order."""
        ...
