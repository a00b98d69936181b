"""The coordinator as a service: studies queued and run one after the other, over HTTPS.

:class:`CoordinatorService` is what the HTTP server (:mod:`alliance.transport.http`) calls. It
keeps no state of its own that a restart would lose: studies, model versions, rounds and updates
are in the :class:`~alliance.store.state.CoordinatorStore`. A driver thread calls
:meth:`CoordinatorService.tick`, which starts the oldest queued study when none is running
(building its model from the study's ``[model]`` and seed, exactly as every site will) and steps
its :class:`~alliance.coordinator.driver.RoundDriver` — the same driver the simulation runs —
with the service's clock: rounds open for the sites alive (polled recently), close when complete
or at their deadline, and the study finishes after its last round; each participant is then told
so when it next polls.

Sites are identified by their TLS client certificate; every message they get is signed by the
coordinator, and every update must be signed by the site at the other end of the socket. Each
step is written to the hash-chained audit log.

Hospitals that allow no network connection (``[files]`` of ``coordinator.toml``, see
:mod:`alliance.coordinator.offline`) are always counted as alive. At every tick the service reads
the bundles imported into its files inbox and counts each message through the very checks an
HTTPS upload passes, then writes what each such hospital should receive next (task, stage, study
end) as a bundle, once. Every bundle written, read or refused is an audit line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from alliance.coordinator.dashboard import AuditWatch, Presence, PublishedModels, dashboard_view
from alliance.coordinator.distribution import Homecoming
from alliance.coordinator.driver import Step
from alliance.coordinator.queue import fail_study, last_ended, next_study, queue_study
from alliance.coordinator.registry import ModelRegistry
from alliance.coordinator.rounds import Receipt
from alliance.coordinator.running import UPLOAD_MARGIN, RunningStudy
from alliance.coordinator.status import describe_privacy, list_studies, study_logs, study_status
from alliance.core.errors import AllianceError, FederationError
from alliance.core.faults import crash_point
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.verifier import MessageVerifier
from alliance.models.tasks import StudyModel, check_model_options, make_study_model
from alliance.protocol.codec import MessageSigner, decode_signed, encode_signed
from alliance.protocol.envelope import Envelope, MessageKind
from alliance.store.audit import AuditLog
from alliance.store.state import CoordinatorStore, StoredEvent, StudyRecord, StudyStatus
from alliance.transport.http import NotFoundError, PermissionDenied
from alliance.transport.longpoll import ChangeNotifier

if TYPE_CHECKING:
    from alliance.coordinator.offline import OfflineSites

__all__ = ["CoordinatorService", "describe_privacy"]

logger = logging.getLogger(__name__)
#: A site that has not polled for this long is not offered a place in a new round.
ALIVE_S = 90.0


class CoordinatorService:
    """Runs queued studies for one federation.

    Parameters
    ----------
    federation
        The consortium's name; every message is bound to it.
    store
        Durable state.
    signer
        The coordinator's signing identity.
    trust
        The consortium CA and CRL, to identify callers and verify their signatures.
    audit
        The coordinator's audit log.
    model_kind
        Builds a study's model kind from its ``[model]`` table (default: the registry).
    model_check
        Checks a submitted study's ``[model]`` table without building the model (default: the
        registry's bounds); goes with ``model_kind``.
    clock
        Time source.
    offline
        The hospitals on files and their folders (``None``: every hospital is online).
    registry
        Where finished studies' models are published (:mod:`alliance.coordinator.registry`);
        ``None``: no model is published or sent home.
    """

    def __init__(
        self,
        *,
        federation: str,
        store: CoordinatorStore,
        signer: MessageSigner,
        trust: TrustStore,
        audit: AuditLog,
        model_kind: Callable[[dict[str, Any]], StudyModel] = make_study_model,
        model_check: Callable[[Mapping[str, Any]], None] = check_model_options,
        clock: Callable[[], float] = time.time,
        offline: OfflineSites | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        self.federation = federation
        #: The last finished study's model on its way to the participants.
        self.home = Homecoming(
            registry, store, federation=federation, model_kind=model_kind, audit=audit, clock=clock
        )
        self.offline = offline
        self.store = store
        self.signer = signer
        self.trust = trust
        self.audit = audit
        self.model_kind = model_kind
        self.model_check = model_check
        self.clock = clock
        self._verify = MessageVerifier(trust, role=Role.SITE)
        self._lock = threading.RLock()
        self._changed = ChangeNotifier(self._lock)
        #: What long-polls wait on (asyncio or threads): every change of state is announced.
        self.changes = self._changed
        self._seen: dict[str, float] = {}
        self._running: RunningStudy | None = None
        self._stop = threading.Event()
        self._identities: dict[bytes, tuple[str, str]] = {}
        #: The certificate each party last connected with (the dashboard shows revocations).
        self._certificates: dict[str, bytes] = {}
        self._audit_watch = AuditWatch(audit.path)
        self._listed = None if registry is None else PublishedModels(registry)

    # --- identity ------------------------------------------------------------------------------
    def identify(self, peer_certificate_der: bytes | None) -> tuple[str, str]:
        """``(name, role)`` of the TLS peer, checked against the CA and the current CRL."""
        if peer_certificate_der is None:
            raise PermissionDenied("no client certificate: connect with mutual TLS")
        self.trust.reload_crl()
        try:
            identity = self.trust.verify(peer_certificate_der)
        except AllianceError as exc:
            raise PermissionDenied(str(exc)) from None
        if identity.consortium != self.federation:
            raise PermissionDenied(
                f"certificate of consortium {identity.consortium!r}, this is {self.federation!r}"
            )
        if identity.role is Role.SITE:
            self._certificates[identity.name] = peer_certificate_der
        return identity.name, identity.role.value

    # --- the round driver ------------------------------------------------------------------------
    def serve_forever(self, interval_s: float = 0.2) -> None:
        """Call :meth:`tick` until :meth:`stop` (run it in a thread)."""
        self.audit.append("coordinator_started", federation=self.federation)
        while not self._stop.is_set():
            try:
                self.tick()
            except AllianceError as exc:
                logger.error("study driver: %s", exc)
            except Exception:
                # The driver must outlive any one study's fault; the traceback goes to the log.
                logger.exception("study driver: unexpected error; continuing")
            with self._changed:
                self._changed.wait(interval_s)

    def stop(self) -> None:
        """Stop :meth:`serve_forever` and wake every long-poll."""
        self._stop.set()
        self._changed.close()

    def tick(self) -> None:
        """Advance the running study by at most one step (see the module docstring)."""
        with self._lock:
            run = self._running or self._start_next_study()
            if self.offline is not None:
                self._read_bundles(run)
            if run is not None:
                step = run.driver.step(self.clock())
                if step is Step.FINISHED:
                    self._finish(run.spec.study_id)
                elif step not in (Step.IDLE, Step.WAITING):
                    self._changed.notify_all()
            if self.offline is not None:
                self._write_bundles()

    def _report(self, event: str, details: dict[str, Any]) -> None:
        self.audit.append(event, **details)

    def _alive(self, now: float) -> set[str]:
        """Sites that may be given a place in a round: those that polled recently, and the
        hospitals on files, which the courier reaches whenever it comes."""
        polled = {s for s, t in self._seen.items() if now - t <= ALIVE_S}
        return polled | (self.offline.sites if self.offline is not None else set())

    def _finish(self, study_id: str) -> None:
        self.home.finish(study_id)  # its participants are told when they next poll
        self._running = None
        self._changed.notify_all()

    def _start_next_study(self) -> RunningStudy | None:
        if self.home.ended is None and (ended := last_ended(self.store)) is not None:
            self._finish(ended)
        record = next_study(self.store)
        if record is None:
            return None
        try:
            self._running = self._load(record)
        except (AllianceError, TypeError, ValueError, RuntimeError, MemoryError) as exc:
            fail_study(self.store, self.audit, record, exc)  # and the queue moves on
            return None
        if record.status is StudyStatus.QUEUED:
            self.store.set_study_status(record.study_id, StudyStatus.RUNNING)
            self.audit.append("study_started", study=record.study_id, hash=record.spec_hash)
        return self._running

    def _load(self, record: StudyRecord) -> RunningStudy:
        return RunningStudy.load(
            record,
            federation=self.federation,
            store=self.store,
            clock=self.clock,
            model_kind=self.model_kind,
            peers=self._verify,
            offline=self.offline,
            alive=self._alive,
            report=self._report,
        )

    def _log(self, run: RunningStudy, kind: str, message: str) -> None:
        run.coordinator.log_event(kind, message)

    # --- what the HTTP API calls ----------------------------------------------------------------
    def max_upload_bytes(self) -> int:
        """The running study's model size plus a margin (1 MiB when no study runs)."""
        run = self._current()
        return UPLOAD_MARGIN if run is None else run.upload_limit

    def _current(self) -> RunningStudy | None:
        """The running study, loaded from the store first if this process has not yet."""
        with self._lock:
            return self._running or self._start_next_study()

    def next_message(self, site: str, wait_s: float) -> bytes | None:
        """The site's task or study end, signed; waits up to ``wait_s`` for one."""
        if self.offline is not None and site in self.offline.sites:
            raise PermissionDenied(
                f"site {site!r} is configured to exchange files ([files.sites] of the "
                "coordinator's config); it cannot also fetch over HTTPS"
            )
        give_up = time.monotonic() + wait_s
        with self._changed:
            if site not in self._seen:
                self.audit.append("site_joined", site=site)
                self._changed.notify_all()
            self._seen[site] = self.clock()
            while True:
                message = self._message_for(site)
                if message is not None:
                    return message
                remaining = give_up - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._changed.wait(remaining)
                self._seen[site] = self.clock()

    def _message_for(self, site: str) -> bytes | None:
        run = self._running
        envelope = self._envelope_for(site)
        if envelope is None:
            return None
        if envelope.header.kind is MessageKind.STUDY_END or run is None:
            return encode_signed(envelope, self.signer)
        return encode_signed(envelope, self.signer, ttl_s=run.spec.round_timeout_s * 4)

    def _envelope_for(self, site: str) -> Envelope | None:
        """What ``site`` should receive now: its task or stage message, or the study's end."""
        run = self._running
        message = None if run is None else run.coordinator.outgoing(site)
        if message is not None:
            return message
        return self.home.study_end_for(site)

    # --- hospitals on files ------------------------------------------------------------------
    def _read_bundles(self, run: RunningStudy | None) -> None:
        """Count every message imported into the files inbox, as if uploaded over HTTPS."""
        assert self.offline is not None

        def count(site: str, envelope: Envelope, size: int, name: str) -> None:
            if envelope.header.kind is MessageKind.FINAL_EVALUATION:
                self.final_evaluation(site, envelope, size)
            else:
                self._count(run, site, envelope, size, via=name)

        self.offline.read(count, self.audit)

    def _write_bundles(self) -> None:
        """Write what each hospital on files should receive next, once."""
        assert self.offline is not None
        self.offline.write(self._envelope_for, self.audit)

    def submit_update(self, site: str, data: bytes) -> str:
        """Verify a signed update from ``site`` and count it (once)."""
        run = self._current()
        try:
            if self.offline is not None and site in self.offline.sites:
                raise PermissionDenied(
                    f"site {site!r} is configured to exchange files ([files.sites] of the "
                    "coordinator's config); it cannot also upload over HTTPS"
                )
            signed = decode_signed(
                data, self._verify, max_bytes=self.max_upload_bytes(), here="the coordinator"
            )
            if signed.signer != site:
                raise PermissionDenied(
                    f"update signed by {signed.signer!r} arrived over the connection of {site!r}"
                )
            final = signed.envelope.header.kind is MessageKind.FINAL_EVALUATION
            if run is None and not final:
                raise FederationError("no study is running; this update belongs to none")
        except AllianceError as exc:
            if run is not None:
                self._log(run, "update_rejected", f"{site}: {exc}")
            self.audit.append("update_rejected", site=site, bytes=len(data), reason=str(exc))
            raise
        if final:
            return self.final_evaluation(site, signed.envelope, len(data))
        return self._count(run, site, signed.envelope, len(data))

    def final_evaluation(self, site: str, envelope: Envelope, size: int) -> str:
        """Record a participant's verified evaluation of a finished study's model (once) and
        re-issue its card; ``"duplicate"`` for a repeat.

        Raises
        ------
        ProtocolError, IntegrityError, FederationError, NotFoundError
            Malformed, misaddressed, from a site that did not take part, for an unknown study,
            one that has not finished, or a version never published.
        """
        with self._changed:
            receipt = self.home.record_evaluation(site, envelope, size)
            self._changed.notify_all()
        return receipt

    def study_model(self, study_id: str, version: int | None, *, site: str | None) -> bytes:
        """The published model file's bytes (:func:`find_published`)."""
        return bytes(self.home.find(study_id, version, site=site).model)

    def study_model_card(self, study_id: str, version: int | None, *, site: str | None) -> bytes:
        """The published model's newest signed card (:func:`find_published`)."""
        return bytes(self.home.find(study_id, version, site=site).card_bytes)

    def _count(
        self, run: RunningStudy | None, site: str, envelope: Envelope, size: int, via: str = ""
    ) -> str:
        """Count one verified message from ``site`` in the running study (once)."""
        if run is None:
            error = FederationError("no study is running; this message belongs to none")
            self.audit.append("update_rejected", site=site, bytes=size, reason=str(error))
            raise error
        details: dict[str, Any] = {"bundle": via} if via else {}
        crash_point("service.before_update_commit")
        with self._changed:
            if self._running is not run:
                raise FederationError("the study this update belongs to is no longer running")
            try:
                receipt = run.coordinator.accept(envelope)
            except AllianceError as exc:
                self.audit.append(
                    "update_rejected", site=site, bytes=size, reason=str(exc), **details
                )
                raise
            if receipt is Receipt.ACCEPTED:
                h = envelope.header
                event = {
                    MessageKind.MODEL_UPDATE: "update_received",
                    MessageKind.REFUSAL: "round_refused",
                    MessageKind.SECAGG: "secagg_received",
                }.get(h.kind, "message_received")
                if h.kind is MessageKind.SECAGG:
                    details["stage"] = envelope.body.get("stage")
                if h.kind is MessageKind.REFUSAL:
                    details["reason"] = envelope.body.get("reason")
                self.audit.append(
                    event,
                    study=run.spec.study_id,
                    round=h.round,
                    site=site,
                    bytes=size,
                    **details,
                )
            self._changed.notify_all()
        crash_point("service.after_update_commit")
        return receipt.value

    def submit_study(self, operator: str, spec: str) -> dict[str, Any]:
        """Queue a study file submitted by ``operator`` (:func:`queue_study`)."""
        with self._lock:
            study_id = queue_study(
                self.store,
                self.audit,
                operator=operator,
                text=spec,
                model_check=self.model_check,
                now=self.clock(),
            )
            self._changed.notify_all()
        return self.study_status(study_id)

    def cancel_study(self, operator: str, study_id: str) -> dict[str, Any]:
        """Cancel a queued or running study: the next queued one may start, and every hospital
        that took part is told the study ended when it next polls (or by its next bundle).

        Raises
        ------
        NotFoundError
            No such study.
        FederationError
            The study has already ended (finished, failed or cancelled).
        """
        with self._changed:
            record = self._record(study_id)
            if record.status not in (StudyStatus.QUEUED, StudyStatus.RUNNING):
                raise FederationError(
                    f"study {study_id!r} is {record.status.value}; only a queued or running "
                    "study can be cancelled"
                )
            reason = f"cancelled by {operator}"
            run = self._running
            if run is not None and run.spec.study_id == study_id:
                run.coordinator.cancel(reason)
            else:
                self.store.set_study_status(study_id, StudyStatus.CANCELLED, error=reason)
                self.store.add_event(
                    StoredEvent(study_id, self.clock(), "study_cancelled", f"study {reason}")
                )
            self.audit.append(
                "study_cancelled", study=study_id, by=operator, was=record.status.value
            )
            if record.status is StudyStatus.RUNNING:
                self._finish(study_id)  # participants are told the study ended
            self._changed.notify_all()
        return self.study_status(study_id)

    def _record(self, study_id: str) -> StudyRecord:
        record = self.store.study(study_id)
        if record is None:
            raise NotFoundError(f"no study {study_id!r}; `alliance study status` lists them")
        return record

    def list_studies(self) -> list[dict[str, Any]]:
        """Every study's id, status and hash."""
        return list_studies(self.store)

    def study_status(self, study_id: str, *, site: str | None = None) -> dict[str, Any]:
        """Status, rounds and per-round metrics of a study (:func:`study_status`); a ``site``
        sees only the consortium's aggregates and its own figures."""
        record = self._record(study_id)
        run = self._running
        live = run.driver if run is not None and run.spec.study_id == study_id else None
        return study_status(self.store, record, live=live, site=site)

    def dashboard(self, name: str, role: str) -> dict[str, Any]:
        """The consortium dashboard's document (:mod:`alliance.coordinator.dashboard`) as the
        party ``name`` of ``role`` may see it."""
        run = self._running
        presence = Presence(
            now=self.clock(),
            alive_s=ALIVE_S,
            polled=dict(self._seen),
            files=self.offline.sites if self.offline is not None else frozenset(),
            certificates=dict(self._certificates),
        )
        return dashboard_view(
            self.store,
            federation=self.federation,
            presence=presence,
            trust=self.trust,
            audit=self._audit_watch,
            published=self._listed,
            viewer=(name, role),
            live=None if run is None else (run.spec.study_id, run.driver),
        )

    def study_spec(self, study_id: str) -> str:
        """The study file exactly as submitted."""
        return self._record(study_id).spec

    def study_logs(
        self, study_id: str, after: int, *, site: str | None = None
    ) -> list[dict[str, Any]]:
        """Log lines (rounds, rejections) after sequence number ``after``; a ``site`` gets
        the consortium's lines and its own only."""
        self._record(study_id)
        return study_logs(self.store, study_id, after, site=site)
