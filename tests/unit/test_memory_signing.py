"""The in-memory transport in its signed mode: every frame signed and verified as over HTTPS."""

from __future__ import annotations

import pytest

from alliance.core.errors import ConfigError, IntegrityError, ProtocolError
from alliance.crypto.authority import CertificateAuthority
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.signing import Signer
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.codec import decode_signed
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.transport import InMemoryTransport, Sent, Signing

FED = "fed"


@pytest.fixture(scope="module")
def pki() -> tuple[dict[str, Signer], MessageVerifier, MessageVerifier]:
    ca = CertificateAuthority.create(FED)
    issued = {s: ca.issue(s, Role.SITE) for s in ("site-a", "site-b")}
    issued[COORDINATOR] = ca.issue(COORDINATOR, Role.COORDINATOR, hosts=("localhost",))
    signers = {s: Signer(p.signing_key, p.certificate) for s, p in issued.items()}
    trust = TrustStore(ca.certificate)
    return (
        signers,
        MessageVerifier(trust, role=Role.COORDINATOR),
        MessageVerifier(trust, role=Role.SITE),
    )


def message(sender: str, recipient: str) -> Envelope:
    header = Header(MessageKind.REFUSAL, FED, "study-1", 1, sender, recipient)
    return Envelope(header, {"reason": "budget"})


def signing(
    pki: tuple[dict[str, Signer], MessageVerifier, MessageVerifier], **signers: Signer
) -> Signing:
    own, from_coordinator, from_sites = pki
    return Signing({**own, **signers}, from_coordinator, from_sites)


def test_every_frame_is_signed_by_its_sender_and_verified_by_its_recipient(
    pki: tuple[dict[str, Signer], MessageVerifier, MessageVerifier],
) -> None:
    frames: list[tuple[str, str, bytes]] = []
    transport = InMemoryTransport(
        signing=signing(pki), tap=lambda s, r, data: frames.append((s, r, data))
    )
    down = message(COORDINATOR, "site-a")
    transport.publish(down)
    assert transport.fetch("site-a") == down
    up = message("site-a", COORDINATOR)
    sent = transport.submit(up)
    assert transport.collect() == [up]
    (_, _, first), (_, _, second) = frames
    assert sent == Sent(len(second), "in memory")
    _, from_coordinator, from_sites = pki
    assert decode_signed(first, from_coordinator).signer == COORDINATOR
    assert decode_signed(second, from_sites).signer == "site-a"
    with pytest.raises(IntegrityError):  # a site's frame is no coordinator's
        decode_signed(second, from_coordinator)


def test_a_party_signs_only_as_itself_and_a_frame_past_its_validity_is_refused(
    pki: tuple[dict[str, Signer], MessageVerifier, MessageVerifier],
) -> None:
    signers = pki[0]
    lying = InMemoryTransport(signing=signing(pki, **{"site-a": signers["site-b"]}))
    with pytest.raises(ProtocolError, match="'site-b' cannot sign a message whose sender is"):
        lying.submit(message("site-a", COORDINATOR))
    unknown = InMemoryTransport(signing=signing(pki))
    with pytest.raises(ProtocolError, match="'site-c' has no signing identity"):
        unknown.submit(message("site-c", COORDINATOR))
    own, from_coordinator, from_sites = pki
    stale = InMemoryTransport(signing=Signing(own, from_coordinator, from_sites, ttl_s=-1.0))
    stale.submit(message("site-a", COORDINATOR))
    with pytest.raises(ProtocolError, match="expired"):
        stale.collect()


def test_only_an_encoding_transport_can_sign(
    pki: tuple[dict[str, Signer], MessageVerifier, MessageVerifier],
) -> None:
    with pytest.raises(ConfigError, match="must encode"):
        InMemoryTransport(encode=False, signing=signing(pki))
    assert InMemoryTransport(encode=False).submit(message("site-a", COORDINATOR)).size == 0
