"""The in-memory transport: a whole federation in one process, still speaking bytes.

Every message is encoded on the way in and decoded on the way out (unless ``encode=False``), so a
simulation exercises the very bytes that travel over HTTPS or in a file bundle, including the
size limit. With :class:`Signing`, each message is signed by its sender and verified by its
recipient exactly as over HTTPS (:func:`~alliance.protocol.codec.encode_signed`, then
:func:`~alliance.protocol.codec.decode_signed` against the consortium's certificates), so a
simulation runs signed frames too. It counts what each party sent, which the benchmark and the
privacy tests read.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from alliance.core.errors import ConfigError, ProtocolError
from alliance.protocol.codec import (
    DEFAULT_MAX_BYTES,
    MessageSigner,
    SignatureVerifier,
    decode,
    decode_signed,
    encode,
    encode_signed,
)
from alliance.protocol.envelope import COORDINATOR, Envelope
from alliance.transport.base import Sent

__all__ = ["InMemoryTransport", "Signing"]


@dataclass(frozen=True)
class Signing:
    """How an in-memory federation signs and checks its messages, as over HTTPS.

    Attributes
    ----------
    signers
        Each party's signing identity, by name (the sites' ids and
        :data:`~alliance.protocol.envelope.COORDINATOR`).
    from_coordinator
        What a site checks a message from the coordinator with (the consortium's CA, the
        coordinator's role).
    from_sites
        What the coordinator checks a site's message with (the CA, the site role).
    ttl_s
        How long a message stays valid.
    """

    signers: Mapping[str, MessageSigner]
    from_coordinator: SignatureVerifier
    from_sites: SignatureVerifier
    ttl_s: float = 3600.0


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
    signing
        Sign every message by its sender and verify it at its recipient (``None``: unsigned).

    Raises
    ------
    ConfigError
        ``signing`` without ``encode``: only bytes can be signed.
    """

    def __init__(
        self,
        *,
        encode: bool = True,
        max_bytes: int = DEFAULT_MAX_BYTES,
        tap: Callable[[str, str, bytes], None] | None = None,
        signing: Signing | None = None,
    ) -> None:
        if signing is not None and not encode:
            raise ConfigError("an in-memory transport that signs must encode (encode=True)")
        self._signing = signing
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
        data = self._bytes(envelope)
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

    def _bytes(self, envelope: Envelope) -> bytes:
        if self._signing is None:
            return encode(envelope)
        sender = envelope.header.sender
        signer = self._signing.signers.get(sender)
        if signer is None:
            raise ProtocolError(f"{sender!r} has no signing identity in this federation")
        return encode_signed(envelope, signer, ttl_s=self._signing.ttl_s)

    def _take(self, recipient: str) -> Envelope | None:
        queue = self._queues.get(recipient)
        if not queue:
            return None
        item = queue.popleft()
        if isinstance(item, Envelope):
            return item
        if self._signing is None:
            return decode(item, max_bytes=self._max_bytes)
        signing = self._signing
        verify = signing.from_sites if recipient == COORDINATOR else signing.from_coordinator
        return decode_signed(item, verify, max_bytes=self._max_bytes).envelope

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
