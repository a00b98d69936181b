"""Transports: the two ends of a channel and their implementations."""

from alliance.transport.base import CoordinatorMailbox, Sent, SiteLink
from alliance.transport.memory import InMemoryTransport, Signing

__all__ = ["CoordinatorMailbox", "InMemoryTransport", "Sent", "Signing", "SiteLink"]
