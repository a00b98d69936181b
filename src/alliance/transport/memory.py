"""The in-memory transport: a whole federation in one process, still speaking bytes.

Every message is encoded on the way in and decoded on the way out (unless ``encode=False``), so a
simulation exercises the very bytes that travel over HTTPS or in a file bundle, including the
size limit. It counts what each party sent, which the benchmark and the privacy tests read.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable

from alliance.core.errors import ProtocolError
from alliance.protocol.codec import DEFAULT_MAX_BYTES, decode, encode
from alliance.protocol.envelope import COORDINATOR, Envelope
from alliance.transport.base import Sent

__all__ = ["InMemoryTransport"]


class InMemoryTransport:
    """Queues per recipient, implementing both :class:`SiteLink` and :class:`CoordinatorMailbox`.

    Parameters
    ----------
    encode
        Pass every message through the codec (the default; turn off only to measure its cost).
    max_bytes
        Largest encoded message accepted, as the HTTP and file transports enforce.
    tap
        Called with ``(sender, recipient, data)`` for every encoded message; tests use it to see
        exactly what left a site.
    """

    def __init__(
        self,
        *,
        encode: bool = True,
        max_bytes: int = DEFAULT_MAX_BYTES,
        tap: Callable[[str, str, bytes], None] | None = None,
    ) -> None:
        self._encode = encode
        self._max_bytes = max_bytes
        self._tap = tap
        self._queues: defaultdict[str, deque[bytes | Envelope]] = defaultdict(deque)
        self.bytes_sent: Counter[str] = Counter()

    def _put(self, recipient: str, envelope: Envelope) -> int:
        """Queue ``envelope``; its encoded size (0 when messages are not encoded)."""
        if not self._encode:
            self._queues[recipient].append(envelope)
            return 0
        data = encode(envelope)
        if len(data) > self._max_bytes:
            # Oversized is the message's fault, not the channel's: a ProtocolError, as the HTTPS
            # and files transports say too.
            raise ProtocolError(
                f"message {envelope.header.kind.value} from {envelope.header.sender} "
                f"is {len(data)} bytes, over the transport limit of {self._max_bytes}"
            )
        self.bytes_sent[envelope.header.sender] += len(data)
        if self._tap is not None:
            self._tap(envelope.header.sender, recipient, data)
        self._queues[recipient].append(data)
        return len(data)

    def _take(self, recipient: str) -> Envelope | None:
        queue = self._queues.get(recipient)
        if not queue:
            return None
        item = queue.popleft()
        return item if isinstance(item, Envelope) else decode(item, max_bytes=self._max_bytes)

    # SiteLink
    def fetch(self, site: str) -> Envelope | None:
        """The next message addressed to ``site``."""
        return self._take(site)

    def submit(self, envelope: Envelope) -> Sent:
        """Queue a site's message for the coordinator."""
        return Sent(self._put(COORDINATOR, envelope), "in memory")

    # CoordinatorMailbox
    def publish(self, envelope: Envelope) -> None:
        """Queue a coordinator message for its recipient."""
        self._put(envelope.header.recipient, envelope)

    def collect(self) -> list[Envelope]:
        """Drain the coordinator's queue."""
        out: list[Envelope] = []
        while (env := self._take(COORDINATOR)) is not None:
            out.append(env)
        return out
