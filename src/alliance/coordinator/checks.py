"""What every message must satisfy before a round sees it, whatever the round's mode.

A message is bound to its federation, study and recipient (the coordinator) and comes from an
invited site (:func:`check_binding`); the open round then checks the round it names and its
sender's place in it. An update whose nonce was seen before is a replay, unless it is the very
update already stored (same sender, nonce and content digest): a site whose answer was lost
(coordinator killed, network cut) sends the same bytes again, and that is acknowledged as a
duplicate (:func:`is_resend`), never counted twice.
"""

from __future__ import annotations

from collections.abc import Collection

from alliance.core.errors import ProtocolError
from alliance.protocol.codec import content_digest
from alliance.protocol.envelope import COORDINATOR, Envelope, Header
from alliance.store.state import CoordinatorStore

__all__ = ["check_binding", "is_resend"]


def check_binding(h: Header, *, federation: str, study: str, sites: Collection[str]) -> None:
    """Raise :class:`~alliance.core.errors.ProtocolError` unless ``h`` is bound to this
    federation, study and the coordinator, from an invited site."""
    if (h.federation, h.study, h.recipient) != (federation, study, COORDINATOR):
        raise ProtocolError(
            f"message bound to federation {h.federation!r}, study {h.study!r}, recipient "
            f"{h.recipient!r}; this coordinator runs {federation!r}/{study!r}"
        )
    if h.sender not in sites:
        raise ProtocolError(f"sender {h.sender!r} is not invited to study {study!r}")


def is_resend(
    env: Envelope, store: CoordinatorStore, *, federation: str, study: str, last_round: int
) -> bool:
    """Whether ``env`` is the very update already stored (same sender, nonce, content), under
    its round or, late in an asynchronous study, a later one up to ``last_round``."""
    h = env.header
    if (h.federation, h.study) != (federation, study):
        return False
    for round_ in range(max(h.round, 1), last_round + 1):
        stored = {u.site: u for u in store.updates(h.study, round_)}.get(h.sender)
        if stored is not None and stored.nonce == h.nonce:
            return stored.digest == content_digest(env)
    return False
