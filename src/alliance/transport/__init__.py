"""Transports: the two ends of a channel and their implementations."""

from alliance.transport.base import CoordinatorMailbox, SiteLink
from alliance.transport.memory import InMemoryTransport

__all__ = ["CoordinatorMailbox", "InMemoryTransport", "SiteLink"]
