"""The coordinator as a service: studies queued and run one after the other, over HTTPS.

:class:`CoordinatorService` is what the HTTP server (:mod:`alliance.transport.http`) calls. It
keeps no state of its own that a restart would lose: studies, model versions, rounds and updates
are in the :class:`~alliance.store.state.CoordinatorStore`, and the round loop is the same
:class:`~alliance.coordinator.rounds.Coordinator` the simulation runs. A driver thread calls
:meth:`CoordinatorService.tick`, which:

- starts the oldest queued study when none is running (building its model from the study's
  ``[model]`` and seed, exactly as every site will);
- opens a round when enough invited sites are alive (polled recently): for the first round of a
  study with a site list, all of them, or the quorum once ``round_timeout_s`` has passed;
- closes it as soon as every participant answered, or at its deadline if the quorum did (else the
  deadline moves and the log says who is missing);
- finishes the study after its last round; each participant is then told so when it next polls.

A study with ``[aggregation] mode = "async"`` changes these steps: the first round opens for
every invited site once all are alive, or ``buffer`` of them after ``round_timeout_s``; a round
closes as soon as ``buffer`` updates are in (possibly late ones, discounted by their staleness)
or at its deadline with at least one; and the next one opens at once, waiting for nobody.

Sites are identified by their TLS client certificate; every message they get is signed by the
coordinator, and every update must be signed by the site at the other end of the socket. Each
step is written to the hash-chained audit log.

Hospitals that allow no network connection (``[files]`` of ``coordinator.toml``, see
:mod:`alliance.coordinator.offline`) are always counted as reachable. At every tick the service
reads the bundles imported into its files inbox and counts each message through the very checks
an HTTPS upload passes, then writes what each such hospital should receive next (task, stage,
study end) as a bundle, once. Every bundle written, read or refused is an audit line. In an
asynchronous study a restarted service reads from the bundle ledger which task each such
hospital holds, so it is handed no second task while its reply is on the road.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alliance.algorithms.strategies import build_strategy
from alliance.coordinator.rounds import Coordinator, Receipt
from alliance.coordinator.study_check import load_study
from alliance.coordinator.visibility import site_log, site_status
from alliance.core.errors import AllianceError, ConfigError, FederationError
from alliance.core.faults import crash_point
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.verifier import MessageVerifier
from alliance.models.tasks import StudyModel, check_model_options, make_study_model
from alliance.models.training import get_weights
from alliance.privacy.accountant import SampledGaussian, epsilon
from alliance.protocol.codec import MessageSigner, decode_signed, encode_signed
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import StudyEnd
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.protocol.study import StudySpec
from alliance.store.audit import AuditLog
from alliance.store.state import CoordinatorStore, StoredEvent, StudyRecord, StudyStatus
from alliance.transport.http import NotFoundError, PermissionDenied
from alliance.transport.longpoll import ChangeNotifier

if TYPE_CHECKING:
    from alliance.coordinator.offline import OfflineSites
    from alliance.protocol.bundles import OpenedBundle

__all__ = ["CoordinatorService", "describe_privacy"]

logger = logging.getLogger(__name__)
#: A site that has not polled for this long is not offered a place in a new round.
ALIVE_S = 90.0
#: Bytes allowed in an update beyond the model's own size (header, metrics, signature).
UPLOAD_MARGIN = 1 << 20


@dataclass
class _Running:
    spec: StudySpec
    coordinator: Coordinator
    started: float
    upload_limit: int


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
    ) -> None:
        self.federation = federation
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
        self._running: _Running | None = None
        # The last finished study, whose participants are told so when they next poll.
        self._finished: tuple[str, int, set[str]] | None = None
        self._ended_sent: set[str] = set()
        self._stop = threading.Event()
        self._identities: dict[bytes, tuple[str, str]] = {}

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
            self._advance(run)
            if self.offline is not None:
                self._write_bundles()

    def _advance(self, run: _Running | None) -> None:
        """One step of the running study (see :meth:`tick`)."""
        with self._lock:
            if run is None:
                return
            coord, spec, now = run.coordinator, run.spec, self.clock()
            if coord.is_open and coord.secure_round is not None:
                self._advance_secure(run, now)
            if coord.is_open:
                self._maybe_close(run, now)
            if coord.is_open:
                return
            if len(coord.history) >= spec.rounds:
                coord.finish()
                self.audit.append(
                    "study_finished", study=spec.study_id, model_version=coord.version
                )
                self._finish(spec.study_id)
                return
            self._maybe_open(run, now)

    def _advance_secure(self, run: _Running, now: float) -> None:
        """Move the open secure round through its stages; retry an aborted attempt."""
        coord = run.coordinator
        secure = coord.secure_round
        assert secure is not None
        if secure.aborted is not None:
            reachable = set(self._alive(now))
            alive = [s for s in coord.participants if s in reachable and s not in coord.refusals]
            self.audit.append(
                "secure_round_retried", study=run.spec.study_id, round=coord.round, sites=alive
            )
            coord.retry_secure_round(alive, deadline=now + run.spec.round_timeout_s)
            self._changed.notify_all()
            return
        if coord.advance(now=now):
            self._changed.notify_all()

    def _maybe_close(self, run: _Running, now: float) -> None:
        coord = run.coordinator
        current = self.store.current_round(run.spec.study_id)
        deadline = None if current is None else current.deadline
        if coord.secure_round is not None and not coord.complete:
            return  # a secure round's stages keep their own deadlines
        if not coord.complete and (deadline is None or now < deadline):
            return
        try:
            record = coord.close_round()
        except FederationError as exc:
            missing = sorted(set(coord.participants) - coord.answered() - set(coord.refusals))
            coord.store.set_deadline(run.spec.study_id, coord.round, now + run.spec.round_timeout_s)
            self._log(run, "round_waiting", f"{exc}; still waiting for {', '.join(missing)}")
            return
        self.audit.append(
            "round_closed",
            study=run.spec.study_id,
            round=record.round,
            model_version=record.model_version,
            sites=list(record.sites),
            cases=record.num_examples,
        )
        self._changed.notify_all()

    def _maybe_open(self, run: _Running, now: float) -> None:
        coord, spec = run.coordinator, run.spec
        alive = self._alive(now)
        if spec.sites is None:
            for site in alive:
                coord.invite(site)
        ready = [s for s in alive if s in coord.sites]
        everyone = spec.sites is None or len(ready) == len(coord.sites)
        waited = now - run.started >= spec.round_timeout_s or coord.round > 0
        # Asynchronous rounds wait for nobody after the first: the next version opens at once.
        asynchronous = coord.aggregation.is_async
        needed = coord.aggregation.buffer_for(len(coord.sites)) if asynchronous else spec.quorum
        go_on = asynchronous and coord.round > 0
        if not go_on and (len(ready) < needed or not (everyone or waited)):
            return
        if asynchronous:
            ready = list(coord.sites)  # every invited site may answer whenever it can
        round_ = coord.start_round(participants=ready, deadline=now + spec.round_timeout_s)
        self.audit.append(
            "round_opened",
            study=spec.study_id,
            round=round_,
            model_version=coord.version,
            participants=ready,
        )
        self._changed.notify_all()

    def _alive(self, now: float) -> list[str]:
        """Sites that may be given a place in a round: those that polled recently, and the
        hospitals on files, which the courier reaches whenever it comes."""
        polled = {s for s, t in self._seen.items() if now - t <= ALIVE_S}
        return sorted(polled | (self.offline.sites if self.offline is not None else set()))

    def _finish(self, study_id: str) -> None:
        rounds = self.store.rounds(study_id)
        # A cancelled study may end with its round open: its summary is still empty.
        last = rounds[-1] if rounds else None
        version = 0 if last is None else int(last.summary.get("model_version", last.model_version))
        self._finished = (study_id, version, {s for r in rounds for s in r.participants})
        self._ended_sent = set()
        self._running = None
        self._changed.notify_all()

    def _start_next_study(self) -> _Running | None:
        records = self.store.studies()
        if self._finished is None:
            done = [
                r
                for r in records
                if r.status in (StudyStatus.FINISHED, StudyStatus.CANCELLED) and r.finished_at
            ]
            done.sort(key=lambda r: r.finished_at or 0.0)
            if done:
                self._finish(done[-1].study_id)
        running = [r for r in records if r.status is StudyStatus.RUNNING]
        queued = [r for r in records if r.status is StudyStatus.QUEUED]
        if not running and not queued:
            return None
        record = (running or queued)[0]
        try:
            self._running = self._load(record)
        except (AllianceError, TypeError, ValueError, RuntimeError, MemoryError) as exc:
            # TypeError, ValueError: [model] or [strategy] options of the wrong type, which only
            # building the model or strategy meets; RuntimeError, MemoryError: a model that does
            # not fit in memory. Either way the study fails and the queue moves on.
            error = str(exc)
            if not isinstance(exc, AllianceError):
                error = f"its [model] or [strategy] options do not fit: {exc}"
            self.store.set_study_status(record.study_id, StudyStatus.FAILED, error=error)
            self.audit.append("study_failed", study=record.study_id, error=error)
            logger.error("study %s cannot run: %s", record.study_id, error)
            return None
        if record.status is StudyStatus.QUEUED:
            self.store.set_study_status(record.study_id, StudyStatus.RUNNING)
            self.audit.append("study_started", study=record.study_id, hash=record.spec_hash)
        return self._running

    def _load(self, record: StudyRecord) -> _Running:
        spec = StudySpec.parse(record.spec, where=f"study {record.study_id}")
        model = self.model_kind(spec.model.to_table()).build(spec.seed)
        weights = get_weights(model)
        strategy = build_strategy(spec.strategy)
        previous = self.store.rounds(spec.study_id)
        sites = spec.sites or tuple(sorted({s for r in previous for s in r.participants}))
        coordinator = Coordinator(
            federation=self.federation,
            study=spec.study_id,
            sites=sites,
            weights=weights,
            strategy=strategy,
            plan=spec.plan,
            quorum=spec.quorum,
            store=self.store,
            clock=self.clock,
            open_invitation=spec.sites is None,
            privacy=spec.privacy,
            secagg=spec.secagg,
            peers=self._verify,
            aggregation=spec.aggregation,
            offline=self.offline.sites if self.offline is not None else (),
        )
        if self.offline is not None:
            coordinator.restore_issued_tasks(self.offline.issued_tasks(spec.study_id))
        size = sum(int(w.nbytes) for w in weights.values())
        if spec.secagg.enabled:
            # A masked vector is one unsigned integer per parameter (uint32 or uint64).
            size = max(size, sum(int(w.size) for w in weights.values()) * 8)
        return _Running(spec, coordinator, self.clock(), size + UPLOAD_MARGIN)

    def _log(self, run: _Running, kind: str, message: str) -> None:
        self.store.add_event(StoredEvent(run.spec.study_id, self.clock(), kind, message))
        logger.info("%s: %s", run.spec.study_id, message)

    # --- what the HTTP API calls ----------------------------------------------------------------
    def max_upload_bytes(self) -> int:
        """The running study's model size plus a margin (1 MiB when no study runs)."""
        run = self._current()
        return UPLOAD_MARGIN if run is None else run.upload_limit

    def _current(self) -> _Running | None:
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
        if self._finished is not None and site not in self._ended_sent:
            study_id, version, participants = self._finished
            if site in participants:
                self._ended_sent.add(site)
                header = Header(
                    MessageKind.STUDY_END, self.federation, study_id, 0, COORDINATOR, site
                )
                return StudyEnd(header, version).to_envelope()
        return None

    # --- hospitals on files ------------------------------------------------------------------
    def _read_bundles(self, run: _Running | None) -> None:
        """Count every message imported into the files inbox, as if uploaded over HTTPS."""
        assert self.offline is not None
        offline = self.offline

        def count(bundle: OpenedBundle, name: str, size: int) -> None:
            h = bundle.header
            self.audit.append(
                "bundle_read",
                site=h.sender,
                study=h.study,
                round=h.round,
                stage=h.stage,
                file=name,
                bytes=size,
                sha256=bundle.digest,
            )
            if h.sender not in offline.sites:
                # A hospital online over HTTPS cannot also hand in files: one path per site.
                reason = f"{h.sender} is not in [files.sites]; it must send over HTTPS"
                self.audit.append("update_rejected", site=h.sender, bytes=size, reason=reason)
                raise PermissionDenied(reason)
            self._count(run, h.sender, bundle.envelope, size, via=name)

        for rejection in offline.collect(count):
            logger.warning("bundle %s not counted: %s", rejection.file, rejection.reason)
            self.audit.append(
                "bundle_rejected", file=Path(rejection.file).name, reason=rejection.reason
            )

    def _write_bundles(self) -> None:
        """Write what each hospital on files should receive next, once."""
        assert self.offline is not None
        for site in sorted(self.offline.sites):
            envelope = self._envelope_for(site)
            if envelope is None:
                continue
            written = self.offline.publish(envelope)
            if written is not None:
                h = envelope.header
                size, name = written
                self.audit.append(
                    "bundle_written",
                    site=site,
                    study=h.study,
                    round=h.round,
                    stage=str(envelope.body.get("stage", h.kind.value)),
                    file=name,
                    bytes=size,
                )

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
            if run is None:
                raise FederationError("no study is running; this update belongs to none")
        except AllianceError as exc:
            if run is not None:
                self._log(run, "update_rejected", f"{site}: {exc}")
            self.audit.append("update_rejected", site=site, bytes=len(data), reason=str(exc))
            raise
        return self._count(run, site, signed.envelope, len(data))

    def _count(
        self, run: _Running | None, site: str, envelope: Envelope, size: int, via: str = ""
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
        """Queue a study file submitted by ``operator``."""
        parsed = load_study(spec, model_check=self.model_check)
        with self._lock:
            if self.store.study(parsed.study_id) is not None:
                raise ConfigError(
                    f"study {parsed.study_id!r} exists; give the new study another [study] id"
                )
            self.store.add_study(
                StudyRecord(
                    parsed.study_id, spec, parsed.hash, operator, StudyStatus.QUEUED, self.clock()
                )
            )
            self.audit.append(
                "study_submitted", study=parsed.study_id, hash=parsed.hash, by=operator
            )
            self._changed.notify_all()
        return self.study_status(parsed.study_id)

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
        return [
            {"study": r.study_id, "status": r.status.value, "hash": r.spec_hash}
            for r in self.store.studies()
        ]

    def study_status(self, study_id: str, *, site: str | None = None) -> dict[str, Any]:
        """Status, rounds and per-round metrics of a study; a ``site`` sees only the
        consortium's aggregates and its own figures (:func:`site_status`)."""
        record = self._record(study_id)
        rounds = self.store.rounds(study_id)
        try:
            spec: StudySpec | None = StudySpec.parse(record.spec, where=f"study {study_id}")
        except ConfigError:
            # Stored before study files were checked whole: it failed to start, and its
            # record's error says why.
            spec = None
        current = rounds[-1] if rounds else None
        answered = (
            [u.site for u in self.store.updates(study_id, current.round)]
            if current is not None and current.status.value == "open"
            else []
        )
        status = {
            "study": study_id,
            "title": study_id if spec is None else spec.title,
            "status": record.status.value,
            "hash": record.spec_hash,
            "submitted_by": record.submitted_by,
            "error": record.error,
            "rounds_total": 0 if spec is None else spec.rounds,
            "rounds_closed": sum(r.status.value == "closed" for r in rounds),
            "open_round": None
            if current is None or current.status.value != "open"
            else {
                "round": current.round,
                "participants": list(current.participants),
                "answered": answered,
                "deadline": current.deadline,
            },
            "history": [dict(r.summary) for r in rounds if r.status.value == "closed"],
            "rejections": len(self.store.rejections(study_id)),
            "privacy": None
            if spec is None
            else describe_privacy(spec.privacy, spec.secagg, spec.rounds),
        }
        return status if site is None else site_status(status, site)

    def study_spec(self, study_id: str) -> str:
        """The study file exactly as submitted."""
        return self._record(study_id).spec

    def study_logs(
        self, study_id: str, after: int, *, site: str | None = None
    ) -> list[dict[str, Any]]:
        """Log lines (rounds, rejections) after sequence number ``after``; a ``site`` gets
        the consortium's lines and its own only (:func:`site_log`)."""
        self._record(study_id)
        lines = [
            {"seq": seq, "at": e.at, "kind": e.kind, "message": e.message}
            for seq, e in self.store.events(study_id, after=after)
        ]
        return lines if site is None else site_log(lines, site)


def describe_privacy(privacy: PrivacyPlan, secagg: SecAggPlan, rounds: int) -> dict[str, Any]:
    """What a study promises, for its status: the mechanisms and the consortium-level ε.

    Patient-level ε is each hospital's, in its own ledger (it depends on its size). The
    client-level guarantee is the consortium's: every round releases the sum of at least
    ``threshold`` clipped updates with Gaussian noise of std ``σ_c · C_c`` in all, i.e. one
    Gaussian mechanism per round with full participation (q = 1), composed over the rounds.
    """
    out: dict[str, Any] = {
        "patient_level": privacy.mechanism,
        "target_epsilon": privacy.target_epsilon,
        "noise_multiplier": privacy.noise_multiplier,
        "delta": privacy.delta,
        "secure_aggregation": secagg.enabled,
        "client_level_epsilon": None,
    }
    if privacy.client_level:
        assert privacy.client_noise_multiplier is not None
        sigma = privacy.client_noise_multiplier
        # σ = 0 is no guarantee at all: reported as None, never as a number.
        out["client_level_epsilon"] = (
            None
            if sigma == 0
            else epsilon(
                [SampledGaussian(sample_rate=1.0, noise_multiplier=sigma, steps=rounds)],
                delta=privacy.delta,
            ).epsilon
        )
    return out
