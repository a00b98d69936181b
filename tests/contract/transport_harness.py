"""Harnesses for the transport contract suite (``test_transports.py``): one class per transport.

A harness stands a transport up with both of its ends and gives the suite the same verbs for
each: the coordinator *publishes* and *collects*, a site *fetches* and *submits*, and, where the
transport has a notion of them, hooks to put raw bytes on a channel (replays, expired or
tampered messages) and to set the size limit. Each harness says which guarantees it lacks and
why (:attr:`TransportHarness.lacks`); the suite skips those tests with that reason.

To add a transport, subclass :class:`TransportHarness`, fill in the verbs and the hooks its
guarantees need, and add its factory to ``HARNESSES`` in ``test_transports.py``. A transport
that refuses bad input later than at the call that delivered it (a files transport finds a bad
bundle when the receiver reads its folder) overrides :meth:`TransportHarness.refusal` to run the
receiving side and return the reason it recorded.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from alliance.coordinator.service import CoordinatorService
from alliance.core.errors import AllianceError, ConfigError, ProtocolError
from alliance.crypto import CertificateAuthority, Role, Signer, TrustStore
from alliance.crypto.tls import client_context, server_context
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.bundles import bundle_name, peek_header, seal_bundle
from alliance.protocol.codec import (
    DEFAULT_MAX_BYTES,
    SIGNATURE_BYTES,
    decode,
    encode,
    encode_signed,
)
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.model_spec import NoOptions, register_model_options
from alliance.store.audit import AuditLog
from alliance.store.memory import MemoryStore
from alliance.store.state import UpdateMeta
from alliance.transport.files import BUNDLE_SUFFIX, BundleLedger, FileMailbox, FileSiteLink, carry
from alliance.transport.http import HttpClient, RetryPolicy, create_app
from alliance.transport.https_link import HttpSiteLink
from alliance.transport.memory import InMemoryTransport
from tests.https_server import serve_app
from tests.integration.test_https import _bundle

FEDERATION = "guardian"
STUDY = "contract"
SITES = ("site-a", "site-b", "site-c")
#: The model every harness's coordinator expects updates for: float32 (the coordinator keeps
#: weights in float32), with a 0-d and two empty parameters beside ordinary ones.
MODEL_SHAPES: Mapping[str, tuple[int, ...]] = {
    "scalar": (),
    "empty": (0,),
    "hollow": (2, 0, 3),
    "matrix": (3, 4),
    "vector": (5,),
}
Arrays = dict[str, npt.NDArray[Any]]


class Guarantee(enum.Enum):
    """A property of the contract, as the table in ``test_transports.py`` names it."""

    ORDER = "ordering and routing"
    DUPLICATES = "duplicate submissions"
    REPLAY = "replay detection"
    EXPIRY = "expiry of signed messages"
    SIZE_LIMIT = "size limit on submissions"
    FIDELITY = "round-trip fidelity"
    INTEGRITY = "tampering detected"
    IDENTITY = "a party speaks only for itself"
    CHANNEL = "a site's channel carries only its own messages"


class Duplicates(enum.Enum):
    """What a transport does with the same envelope submitted twice."""

    DELIVERED_AGAIN = "collected twice; the consumer (Coordinator.accept) must drop the copy"
    ACKNOWLEDGED_ONCE = "acknowledged as a duplicate and collected once"
    REFUSED = "refused the second time with an error"
    SET_ASIDE = "set aside as a replay (recorded, not raised) and collected once"


def model_delta(value: float = 0.0) -> Arrays:
    """A delta of the contract model's shapes, every element ``value``."""
    return {k: np.full(s, value, dtype=np.float32) for k, s in MODEL_SHAPES.items()}


class TransportHarness:
    """Both ends of one transport, as the contract suite drives them (one per test)."""

    name: ClassVar[str]
    #: Guarantees this transport does not give, each with the reason shown when skipped.
    lacks: ClassVar[Mapping[Guarantee, str]] = {}
    duplicates: ClassVar[Duplicates]
    #: Contract tests this transport fails today (test name → the bug); marked strict xfail.
    #: One case of a parametrized test is ``name[case]``, e.g. ``test_x[tampered]``.
    known_bugs: ClassVar[Mapping[str, str]] = {}
    round: int = 1
    model_version: int = 0

    # --- the four verbs ----------------------------------------------------------------------
    def publish(self, envelope: Envelope) -> None:
        """The coordinator sends ``envelope`` to its header's recipient."""
        raise NotImplementedError

    def fetch(self, site: str) -> Envelope | None:
        """``site``'s next message, or ``None``."""
        raise NotImplementedError

    def submit(self, envelope: Envelope) -> str | None:
        """The header's sender sends ``envelope``; returns the receipt where there is one."""
        raise NotImplementedError

    def collect(self) -> list[Envelope]:
        """What the coordinator received since the last call, in arrival order."""
        raise NotImplementedError

    # --- hooks -------------------------------------------------------------------------------
    def wire(
        self, envelope: Envelope, *, issued_at: float | None = None, ttl_s: float = 3600.0
    ) -> bytes:
        """The bytes the header's sender puts on the channel for ``envelope``.

        ``issued_at`` and ``ttl_s`` set the validity window of transports that sign.
        """
        raise NotImplementedError

    def submit_wire(self, site: str, data: bytes) -> str | None:
        """Put ``data`` on ``site``'s channel to the coordinator; returns the receipt."""
        raise NotImplementedError

    def publish_wire(self, site: str, data: bytes) -> None:
        """Put ``data`` on the coordinator's channel to ``site``."""
        raise NotImplementedError

    def sent_wire(self, site: str) -> bytes:
        """The bytes of ``site``'s last submission, as they travelled (to replay them)."""
        raise NotImplementedError

    def tampered(self, data: bytes) -> bytes:
        """``data`` with one byte of the signed content changed (INTEGRITY)."""
        raise NotImplementedError

    def fetch_as(self, holder: str, site: str) -> Envelope | None:
        """``holder``'s end of the channel asking for ``site``'s messages (IDENTITY)."""
        raise NotImplementedError

    def set_limit(self, max_bytes: int) -> None:
        """Largest submission, in wire bytes, accepted from now on (before any traffic)."""
        raise NotImplementedError

    def refusal(self, action: Callable[[], object]) -> AllianceError:
        """Run ``action``, which the transport must refuse; the error it refused it with.

        A transport that only records why it refused (a files transport's ``.reason`` file)
        returns ``ProtocolError(reason)``.
        """
        try:
            action()
        except AllianceError as exc:
            return exc
        pytest.fail(f"the {self.name} transport accepted what it must refuse")

    def close(self) -> None:
        """Release what the harness holds."""

    # --- messages ----------------------------------------------------------------------------
    def update(
        self,
        site: str,
        *,
        delta: Arrays | None = None,
        metrics: Mapping[str, float] | None = None,
        num_examples: int = 7,
    ) -> Envelope:
        """A model update from ``site`` that this harness's coordinator accepts."""
        header = Header(MessageKind.MODEL_UPDATE, FEDERATION, STUDY, self.round, site, COORDINATOR)
        body = {
            "model_version": self.model_version,
            "num_examples": num_examples,
            "metrics": dict(metrics or {"train_loss": 0.5}),
        }
        return Envelope(header, body, model_delta() if delta is None else delta)


# --- in memory ---------------------------------------------------------------------------------


class InMemoryHarness(TransportHarness):
    """:class:`InMemoryTransport` with its default codec path (every message encoded)."""

    name = "memory"
    lacks: ClassVar[Mapping[Guarantee, str]] = {
        Guarantee.REPLAY: "no nonce is checked in the transport; in the simulation "
        "Coordinator.accept refuses replayed nonces (tests/unit/test_coordinator.py)",
        Guarantee.EXPIRY: "messages are not signed, so they carry no validity window",
        Guarantee.INTEGRITY: "messages are not signed; one process, nothing to tamper with",
        Guarantee.IDENTITY: "one shared object: any caller may fetch or submit for any site",
        Guarantee.CHANNEL: "one shared object: no channel belongs to a site",
    }
    duplicates = Duplicates.DELIVERED_AGAIN

    def __init__(self) -> None:
        self._limit = DEFAULT_MAX_BYTES
        self._sent: dict[str, bytes] = {}
        self._traffic = False
        self.transport = self._new()

    def _new(self) -> InMemoryTransport:
        return InMemoryTransport(max_bytes=self._limit, tap=self._tap)

    def _tap(self, sender: str, recipient: str, data: bytes) -> None:
        self._sent[sender] = data

    def publish(self, envelope: Envelope) -> None:
        self._traffic = True
        self.transport.publish(envelope)

    def fetch(self, site: str) -> Envelope | None:
        return self.transport.fetch(site)

    def submit(self, envelope: Envelope) -> str | None:
        self._traffic = True
        self.transport.submit(envelope)
        return None

    def collect(self) -> list[Envelope]:
        return self.transport.collect()

    def wire(
        self, envelope: Envelope, *, issued_at: float | None = None, ttl_s: float = 3600.0
    ) -> bytes:
        assert issued_at is None, "the in-memory transport does not sign"
        return encode(envelope)

    def _envelope(self, data: bytes) -> Envelope:
        # The transport takes envelopes, not bytes. The codec is canonical, so decoding and
        # handing the envelope over queues these very bytes again.
        envelope = decode(data)
        assert encode(envelope) == data
        return envelope

    def submit_wire(self, site: str, data: bytes) -> str | None:
        return self.submit(self._envelope(data))

    def publish_wire(self, site: str, data: bytes) -> None:
        self.publish(self._envelope(data))

    def sent_wire(self, site: str) -> bytes:
        return self._sent[site]

    def set_limit(self, max_bytes: int) -> None:
        assert not self._traffic, "set the limit before any message is sent"
        self._limit = max_bytes
        self.transport = self._new()


# --- HTTPS -------------------------------------------------------------------------------------


class RecordingStore(MemoryStore):
    """The coordinator's store, noting each stored update in the order the service stored it.

    What it notes is read back from the store itself (:meth:`load_delta`), so a harness's
    ``collect`` returns what the coordinator kept, not what it was handed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stored: list[tuple[int, UpdateMeta, Arrays]] = []

    def add_update(self, study_id: str, round_: int, meta: UpdateMeta, delta: Any) -> None:
        super().add_update(study_id, round_, meta, delta)
        self.stored.append((round_, meta, self.load_delta(study_id, round_, meta.site)))


class _ContractModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name, shape in MODEL_SHAPES.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))


class ContractModelKind:
    """The study model of the HTTPS harness: :data:`MODEL_SHAPES`, all zeros."""

    kind = "contract"

    @staticmethod
    def check(table: Mapping[str, Any]) -> None:
        """The contract model takes no options."""
        if dict(table) != {"kind": "contract"}:
            raise ConfigError(f"[model] the contract model takes no options, got {dict(table)}")

    def build(self, seed: int) -> nn.Module:
        return _ContractModel()

    def load(self, source: Any) -> Any:
        raise NotImplementedError("the contract study has no cases")

    def collate(self, items: list[Any]) -> Any:
        raise NotImplementedError("the contract study has no cases")


# Study files may name the contract model (it takes no options).
register_model_options(ContractModelKind.kind, NoOptions.from_table)

STUDY_TOML = f"""[study]
id = "{STUDY}"
rounds = 1
sites = [{", ".join(f'"{s}"' for s in SITES)}]
quorum = 1
round_timeout_s = 3600

[model]
kind = "contract"
"""


class ContractService(CoordinatorService):
    """The coordinator service, with a queue in place of its round loop's outgoing messages.

    The real service has no publish: each poll derives the site's next message from the open
    round (:meth:`Coordinator.outgoing`), repeating a task until it is answered. The suite
    needs to send any envelope, so published messages are queued per site and each poll takes
    the next one; the long-poll (:meth:`next_message`), the caller's identity, the upload cap
    and every check of an update (:meth:`submit_update`) stay the service's own.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outbox: dict[str, list[bytes]] = {}
        self.upload_limit: int | None = None

    def publish_wire(self, site: str, data: bytes) -> None:
        with self._changed:
            self.outbox.setdefault(site, []).append(data)
            self._changed.notify_all()

    def _message_for(self, site: str) -> bytes | None:
        queue = self.outbox.get(site)
        return queue.pop(0) if queue else None

    def max_upload_bytes(self) -> int:
        return super().max_upload_bytes() if self.upload_limit is None else self.upload_limit


class SwappableEndpoints:
    """The server's :class:`CoordinatorEndpoints`: forwards to this test's service.

    The HTTPS server runs once per module; each test gets a fresh service behind it.
    """

    def __init__(self) -> None:
        self.federation = FEDERATION
        self.target: ContractService | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


class RecordingClient(HttpClient):
    """An mTLS client that keeps the body of its last POST (the bytes a replay sends)."""

    last_posted: bytes | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if method == "POST" and isinstance(kwargs.get("content"), bytes):
            self.last_posted = kwargs["content"]
        return super().request(method, path, **kwargs)


@dataclass
class HttpsDeployment:
    """A coordinator on loopback over mutual TLS and each site's client (once per module)."""

    root: Path
    url: str
    endpoints: SwappableEndpoints
    trust: TrustStore
    signers: dict[str, Signer]
    clients: dict[str, RecordingClient] = field(default_factory=dict)


@contextmanager
def https_deployment(root: Path) -> Iterator[HttpsDeployment]:
    """Provision a consortium in ``root`` and serve the coordinator API on a free port."""
    ca = CertificateAuthority.create(FEDERATION)
    (root / "ca").mkdir()
    ca.save(root / "ca")
    ca_crt = root / "ca" / "ca.crt"
    folders = {COORDINATOR: _bundle(ca, root, COORDINATOR, Role.COORDINATOR, hosts=["127.0.0.1"])}
    folders |= {site: _bundle(ca, root, site, Role.SITE) for site in SITES}
    signers = {
        name: Signer.from_files(f / "party.crt", f / "signing.key") for name, f in folders.items()
    }
    coord = folders[COORDINATOR]
    context = server_context(
        certificate=coord / "party.crt", key=coord / "party.key", ca=ca_crt, crl=None
    )
    endpoints = SwappableEndpoints()
    with serve_app(create_app(endpoints), context) as port:  # type: ignore[arg-type]
        url = f"https://127.0.0.1:{port}"
        deployment = HttpsDeployment(root, url, endpoints, TrustStore.load(ca_crt), signers)
        for site in SITES:
            f = folders[site]
            deployment.clients[site] = RecordingClient(
                url,
                ssl_context=client_context(
                    certificate=f / "party.crt", key=f / "party.key", ca=ca_crt
                ),
                # A refused request is never retried; a broken server should fail a test quickly.
                retry=RetryPolicy(base_s=0.05, cap_s=0.2, give_up_s=5.0),
                timeout_s=10.0,
            )
        try:
            yield deployment
        finally:
            for client in deployment.clients.values():
                client.close()


class HttpsHarness(TransportHarness):
    """HTTPS with mutual TLS: the real server, :class:`HttpSiteLink` at each site, and the
    coordinator service (with a publish queue, see :class:`ContractService`) behind it.

    Each harness opens round 1 of a fresh study whose participants are :data:`SITES`.
    """

    name = "https"
    duplicates = Duplicates.ACKNOWLEDGED_ONCE

    def __init__(self, deployment: HttpsDeployment, state: Path) -> None:
        self.d = deployment
        store = RecordingStore()
        self.store = store
        self.service = ContractService(
            federation=FEDERATION,
            store=store,
            signer=deployment.signers[COORDINATOR],
            trust=deployment.trust,
            audit=AuditLog(state / "audit.log", actor=COORDINATOR),
            model_kind=lambda table: ContractModelKind(),  # type: ignore[arg-type,return-value]
            model_check=ContractModelKind.check,
        )
        self.service.submit_study("operator", STUDY_TOML)
        for site in SITES:  # each site has polled once, so the round opens for all three
            self.service.next_message(site, 0)
        self.service.tick()
        status = self.service.study_status(STUDY)
        assert status["open_round"]["participants"] == list(SITES), status
        deployment.endpoints.target = self.service
        verify = MessageVerifier(deployment.trust, role=Role.COORDINATOR)
        self.links = {
            site: HttpSiteLink(
                deployment.clients[site], signer=deployment.signers[site], verify=verify, poll_s=0
            )
            for site in SITES
        }

    def publish(self, envelope: Envelope) -> None:
        self.publish_wire(envelope.header.recipient, self.wire(envelope))

    def fetch(self, site: str) -> Envelope | None:
        return self.links[site].fetch(site)

    def submit(self, envelope: Envelope) -> str | None:
        link = self.links[envelope.header.sender]
        return link.submit(envelope).receipt

    def collect(self) -> list[Envelope]:
        # The service keeps an update's header fields and body apart; the model version is not
        # stored, since the coordinator accepts an update only for its current version.
        out = [
            Envelope(
                Header(
                    MessageKind.MODEL_UPDATE,
                    FEDERATION,
                    STUDY,
                    round_,
                    meta.site,
                    COORDINATOR,
                    meta.nonce,
                ),
                {
                    "model_version": self.model_version,
                    "num_examples": meta.num_examples,
                    "metrics": dict(meta.metrics),
                },
                delta,
            )
            for round_, meta, delta in self.store.stored
        ]
        self.store.stored.clear()
        return out

    def wire(
        self, envelope: Envelope, *, issued_at: float | None = None, ttl_s: float = 3600.0
    ) -> bytes:
        # Whole seconds: the signed preamble then has the same length every time, which the
        # size-limit tests need to build a message exactly at the limit.
        now = float(int(time.time())) if issued_at is None else issued_at
        signer = self.d.signers[envelope.header.sender]
        return encode_signed(envelope, signer, ttl_s=ttl_s, now=now)

    def submit_wire(self, site: str, data: bytes) -> str | None:
        answer = self.d.clients[site].request(
            "POST",
            "/v1/updates",
            content=data,
            headers={"content-type": "application/octet-stream"},
        )
        return str(answer.json()["receipt"])

    def publish_wire(self, site: str, data: bytes) -> None:
        self.service.publish_wire(site, data)

    def sent_wire(self, site: str) -> bytes:
        data = self.d.clients[site].last_posted
        assert data is not None, f"{site} has sent nothing"
        return data

    def tampered(self, data: bytes) -> bytes:
        # The last byte before the signature: the payload's last array byte (or its preamble).
        at = len(data) - SIGNATURE_BYTES - 1
        return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]

    def fetch_as(self, holder: str, site: str) -> Envelope | None:
        return self.links[holder].fetch(site)

    def set_limit(self, max_bytes: int) -> None:
        self.service.upload_limit = max_bytes

    def close(self) -> None:
        self.d.endpoints.target = None
        self.service.stop()


# --- files ---------------------------------------------------------------------------------------


class FilesHarness(TransportHarness):
    """The files transport: a :class:`FileMailbox` for the coordinator, a :class:`FileSiteLink`
    per site, each with its own :class:`BundleLedger`, and :func:`carry` as the courier.

    Identities come from an in-memory consortium CA, as in the simulation's files channel
    (``alliance.sim.simulation._FilesChannel``). Every folder lies under ``root``::

        coordinator/to-<site>/   the mailbox's outbox per site (carried to <site>/inbox)
        coordinator/inbox/       bundles from the sites (carried from <site>/outbox)
        <site>/inbox/, <site>/outbox/

    A bundle the receiver refuses is not raised: it is moved to ``rejected/`` with a ``.reason``
    file and listed in the end's ``rejections``. :meth:`refusal` therefore reads the folders
    after the action and returns the newly recorded reason.
    """

    name = "files"
    lacks: ClassVar[Mapping[Guarantee, str]] = {
        Guarantee.CHANNEL: "no channel belongs to a site: any courier carries any bundle into "
        "the coordinator's one inbox, and a bundle counts as its signer's (site-b relaying "
        "site-a's signed bundle delivers site-a's message, once)",
    }
    duplicates = Duplicates.SET_ASIDE

    def __init__(self, root: Path) -> None:
        self.root = root
        ca = CertificateAuthority.create(FEDERATION)
        parties = {site: ca.issue(site, Role.SITE) for site in SITES}
        parties[COORDINATOR] = ca.issue(COORDINATOR, Role.COORDINATOR, hosts=("localhost",))
        self.signers = {n: Signer(p.signing_key, p.certificate) for n, p in parties.items()}
        self.keys = {n: p.signing_key for n, p in parties.items()}
        trust = TrustStore(ca.certificate)
        self._from_sites = MessageVerifier(trust, role=Role.SITE)
        self._from_coordinator = MessageVerifier(trust, role=Role.COORDINATOR)
        self.ledgers = {
            name: BundleLedger(root / name / "state" / "bundles.db") for name in parties
        }
        self._sent: dict[str, bytes] = {}
        self._wired = 0
        # What refusal() read from the folders besides the refused bundle, for collect/fetch.
        self._collected: list[Envelope] = []
        self._fetched: dict[str, list[Envelope]] = {site: [] for site in SITES}
        self._build(DEFAULT_MAX_BYTES)

    def _build(self, max_bytes: int) -> None:
        self.mailbox = FileMailbox(
            federation=FEDERATION,
            root=self.root / COORDINATOR,
            signer=self.signers[COORDINATOR],
            key=self.keys[COORDINATOR],
            site_keys={site: self.keys[site].public_key() for site in SITES},
            verify=self._from_sites,
            ledger=self.ledgers[COORDINATOR],
            max_bytes=max_bytes,
        )
        self.links = {
            site: FileSiteLink(
                site,
                federation=FEDERATION,
                inbox=self.inbox(site),
                outbox=self.root / site / "outbox",
                signer=self.signers[site],
                key=self.keys[site],
                coordinator_key=self.keys[COORDINATOR].public_key(),
                verify=self._from_coordinator,
                ledger=self.ledgers[site],
                max_bytes=max_bytes,
            )
            for site in SITES
        }

    def inbox(self, site: str) -> Path:
        """Where the courier puts the coordinator's bundles for ``site``."""
        return self.root / site / "inbox"

    def publish(self, envelope: Envelope) -> None:
        site = envelope.header.recipient
        self.mailbox.publish(envelope)
        for _ in carry(self.mailbox.outbox(site), self.inbox(site)):
            pass

    def fetch(self, site: str) -> Envelope | None:
        if self._fetched[site]:
            return self._fetched[site].pop(0)
        return self.links[site].fetch(site)

    def submit(self, envelope: Envelope) -> str | None:
        site = envelope.header.sender
        link = self.links[site]
        link.submit(envelope)
        for file in carry(link.outbox, self.mailbox.inbox):
            self._sent[site] = file.read_bytes()
        return None

    def collect(self) -> list[Envelope]:
        out, self._collected = [*self._collected, *self.mailbox.collect()], []
        return out

    def wire(
        self, envelope: Envelope, *, issued_at: float | None = None, ttl_s: float = 3600.0
    ) -> bytes:
        # Whole seconds, as for HTTPS: the header and the sealed preamble then have the same
        # length every time (the size-limit tests build a bundle exactly at the limit).
        now = float(int(time.time())) if issued_at is None else issued_at
        h = envelope.header
        return seal_bundle(
            envelope,
            signer=self.signers[h.sender],
            recipient_key=self.keys[h.recipient].public_key(),
            ttl_s=ttl_s,
            now=now,
        )

    def _write(self, folder: Path, data: bytes) -> None:
        # Named as its sender names it; bytes that are no bundle get a name of their own.
        try:
            name = bundle_name(peek_header(data))
        except ProtocolError:
            self._wired += 1
            name = f"wire-{self._wired:04d}{BUNDLE_SUFFIX}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)

    def submit_wire(self, site: str, data: bytes) -> str | None:
        # Into the site's outbox, then the courier: the coordinator's inbox is one folder for
        # every site, so whoever carried a bundle is not known to the coordinator.
        outbox = self.links[site].outbox
        self._write(outbox, data)
        for _ in carry(outbox, self.mailbox.inbox):
            pass
        return None

    def publish_wire(self, site: str, data: bytes) -> None:
        self._write(self.inbox(site), data)

    def sent_wire(self, site: str) -> bytes:
        assert site in self._sent, f"{site} has sent nothing"
        return self._sent[site]

    def tampered(self, data: bytes) -> bytes:
        # One byte in the middle of the sealed ciphertext (see alliance.protocol.bundles).
        start = 10 + int.from_bytes(data[6:10], "little") + 8
        at = start + int.from_bytes(data[start - 8 : start], "little") // 2
        return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]

    def fetch_as(self, holder: str, site: str) -> Envelope | None:
        return self.links[holder].fetch(site)

    def set_limit(self, max_bytes: int) -> None:
        self._build(max_bytes)

    def refusal(self, action: Callable[[], object]) -> AllianceError:
        """Run ``action`` and read every folder; the reason recorded for the refused bundle.

        An error the action raises (a link asked for another site) is returned as it is.
        """
        before = {end: len(end.rejections) for end in (self.mailbox, *self.links.values())}
        try:
            action()
        except AllianceError as exc:
            return exc
        # The reading side: what it accepts meanwhile is kept for the next collect or fetch.
        self._collected.extend(self.mailbox.collect())
        for site in SITES:
            if _pending(self.inbox(site)):
                got = self.links[site].fetch(site)
                if got is not None:
                    self._fetched[site].append(got)
        new = [r for end, seen in before.items() for r in end.rejections[seen:]]
        if not new:
            pytest.fail(f"the {self.name} transport accepted what it must refuse")
        assert len(new) == 1, f"one refusal expected, {len(new)} recorded: {new}"
        file = Path(new[0].file)
        recorded = (file.parent / "rejected" / f"{file.name}.reason").read_text("utf-8")
        assert recorded == new[0].reason + "\n", recorded
        # Rejection records no error class today (see known_bugs); use one once it does.
        error: type[AllianceError] = getattr(new[0], "error", ProtocolError)
        return error(new[0].reason)

    def close(self) -> None:
        for ledger in self.ledgers.values():
            ledger.close()


def _pending(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.endswith(BUNDLE_SUFFIX) for p in folder.iterdir())
