"""How messages move between the coordinator and the sites, whatever the channel.

Sites always initiate: a site *fetches* its next message and *submits* its replies; the
coordinator *publishes* messages addressed to sites and *collects* what sites submitted. The
coordinator never opens a connection to a site. Two protocols express the two ends:

- :class:`SiteLink`, what a site holds (in-memory, file bundles, or an HTTPS client);
- :class:`CoordinatorMailbox`, what the coordinator holds (in-memory, file bundles, or the HTTPS
  server's queues).

Both carry :class:`~alliance.protocol.envelope.Envelope` objects; implementations must pass
them through :mod:`alliance.protocol.codec` so that every channel exercises the same bytes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from alliance.protocol.envelope import Envelope

__all__ = ["CoordinatorMailbox", "SiteLink"]


@runtime_checkable
class SiteLink(Protocol):
    """A site's end of a channel."""

    def fetch(self, site: str) -> Envelope | None:
        """The next message addressed to ``site``, or ``None`` if there is none yet."""
        ...

    def submit(self, envelope: Envelope) -> None:
        """Send a message from this site to the coordinator."""
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
