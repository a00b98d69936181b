"""A site's end of the HTTPS channel: :class:`~alliance.transport.base.SiteLink`, signed.

:class:`HttpSiteLink` gives a site the same two verbs it has over the in-memory transport,
``fetch`` and ``submit``, on top of :class:`~alliance.transport.http.HttpClient`: ``fetch``
long-polls the coordinator and returns the next message only once the coordinator's signature,
certificate and validity window verify; ``submit`` signs the message with the site's key and
posts it, retrying network failures with the same bytes (same nonce), so a coordinator that
stored the update before its answer was lost counts it once.

The coordinator signs each message when it hands it out, so one that arrives expired means the
two clocks disagree: ``fetch`` says so, naming by how much, rather than blaming the sender.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from alliance.core.errors import ConfigError, ProtocolError
from alliance.protocol.codec import (
    MessageSigner,
    SignatureVerifier,
    decode_signed,
    encode_signed,
)
from alliance.protocol.envelope import Envelope
from alliance.protocol.study import is_study_id
from alliance.transport.base import Sent
from alliance.transport.http import HttpClient

__all__ = ["HttpSiteLink"]

logger = logging.getLogger(__name__)


class HttpSiteLink:
    """A site's signed link to the coordinator over HTTPS with mutual TLS.

    Parameters
    ----------
    client
        The site's mTLS client of the coordinator.
    signer
        The site's signing identity.
    verify
        Checks that a message comes from the consortium's coordinator.
    poll_s
        How long one long-poll waits for a message.
    ttl_s
        How long a sent update stays valid.
    clock
        This hospital's clock, unix seconds (the system clock; tests set another).
    """

    def __init__(
        self,
        client: HttpClient,
        *,
        signer: MessageSigner,
        verify: SignatureVerifier,
        poll_s: float = 25.0,
        ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.signer = signer
        self.verify = verify
        self.poll_s = poll_s
        self.ttl_s = ttl_s
        self.clock = clock

    def fetch(self, site: str) -> Envelope | None:
        """The next message for this site, verified; ``None`` if none came within ``poll_s``.

        ``site`` must be the name in this link's certificate: the coordinator knows the caller
        from the TLS session, so a link can only ever fetch its own messages.
        """
        if site != self.signer.name:
            raise ConfigError(f"this link belongs to {self.signer.name!r}, not {site!r}")
        response = self.client.request(
            "GET", "/v1/messages/next", params={"wait": self.poll_s}, extra_timeout_s=self.poll_s
        )
        if response.status_code == 204:
            return None
        return decode_signed(
            response.content, self.verify, now=self.clock(), here="this hospital"
        ).envelope

    def submit(self, envelope: Envelope) -> Sent:
        """Sign ``envelope`` and post it; its signed size and the coordinator's receipt."""
        payload = encode_signed(envelope, self.signer, ttl_s=self.ttl_s, now=self.clock())
        answer = self.client.request(
            "POST",
            "/v1/updates",
            content=payload,
            headers={"content-type": "application/octet-stream"},
        )
        return Sent(len(payload), str(answer.json().get("receipt")))

    def study_spec(self, study_id: str) -> str:
        """The text of a study file as the coordinator serves it (the site hashes it itself).

        Raises
        ------
        ProtocolError
            ``study_id`` (from a message of the coordinator) is no study id: nothing but a
            well-formed id is put in a URL.
        """
        if not is_study_id(study_id):
            raise ProtocolError(
                f"refused a task for study {study_id!r}: not a study id (1-63 lowercase "
                "letters, digits or '-'); the coordinator sent a malformed task"
            )
        return self.client.request("GET", f"/v1/studies/{study_id}/spec").text
