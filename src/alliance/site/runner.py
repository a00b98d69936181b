"""``alliance site run``: a hospital's agent, talking to the coordinator over HTTPS or by files.

With ``transport = "https"`` (the default) the agent only ever opens outbound connections. It
long-polls for its next message, verifies the coordinator's signature, and for a training task
applies the hospital's own policy before any patient record is touched:

1. the study file's sha256 (fetched from the coordinator, hashed here) must be in
   ``[policy] approved_studies`` — a study cannot change after the hospital approved it; the
   list is re-read from ``site.toml`` before a study is refused, so approving one needs no
   restart;
2. the task's training plan must be the one the approved study states, and its round one of the
   study's rounds, on a model version below the round's number;
3. at least ``[policy] min_cohort`` local cases must load;
4. the study's privacy plan (DP, secure aggregation) must be the approved one, and its rounds
   still ahead must fit the hospital's own privacy budget (``[privacy] budget_epsilon`` and
   ``delta``), kept in the ledger ``<state dir>/privacy.ledger``; a round that does not fit is
   declined and the coordinator learns only "refused: budget". ``alliance site budget`` shows
   what each study spent.

A task refused at any step is answered at once with a refusal naming only its category
(``not-approved``, ``policy``, ``cohort``, ``budget``), so the round does not wait for this site;
the reason is in the audit log. These checks are :class:`~alliance.site.hospital.Hospital`, the
same code the simulation runs; this module fetches, submits and records what left the hospital.
One agent runs per state folder (:mod:`alliance.site.lock`).

Then it trains with the same :class:`~alliance.site.agent.Site` code as the simulation, signs the
update and submits it, retrying through coordinator restarts and network drops (the same signed
bytes each time, so the coordinator counts it once). A hospital that joins in the middle of a
study simply receives the current model with its first task. Every task, refusal and update
(with its size) is written to the site's own hash-chained audit log: what left the hospital.
At a finished study's end the agent receives the final model and its signed card, verifies
them, keeps them in ``<state>/models/`` (``alliance site models`` lists them) and sends the
coordinator its evaluation of the model on its held-out cases (:mod:`alliance.site.homecoming`).

A hospital that allows no network connection sets ``transport = "files"``::

    transport = "files"
    [files]
    inbox = "inbox"       # `alliance site import` puts the coordinator's bundles here
    outbox = "outbox"     # replies wait here for `alliance site export`
    studies = "studies"   # the study files the hospital approved (their hashes are in
                          # [policy] approved_studies), since there is no coordinator to ask

The agent then reads its inbox instead of polling: every bundle is checked (the coordinator's
signature and certificate, the seal to this hospital, federation, addressing, expiry, replay in
``<state>/bundles.db``), and each reply is sealed to the coordinator's certificate-bound key and
written to the outbox. A bundle is settled (moved to ``done/``) only once its replies are
written, so an agent killed at any instant handles what it had not finished when it restarts,
and never works twice on a task it answered. Everything else (policy, privacy budget, training,
audit) is the same code as online. ``alliance site run --until-idle`` works through the inbox
and exits.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from alliance.core.errors import AllianceError, ConfigError
from alliance.core.faults import crash_point
from alliance.crypto.keyfiles import load_signing_key
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.signing import Signer
from alliance.crypto.tls import client_context
from alliance.crypto.verifier import MessageVerifier
from alliance.models.tasks import StudyModel, make_study_model
from alliance.protocol.envelope import Envelope, MessageKind
from alliance.protocol.study import StudySpec
from alliance.site.agent import Site
from alliance.site.config import FilesFolders, SiteConfig, describe
from alliance.site.hospital import ApprovedHashes, Cohort, Hospital
from alliance.site.lock import AgentLock
from alliance.site.model_store import ModelStore
from alliance.site.outcome import Action, Outcome
from alliance.store.audit import AuditLog
from alliance.transport.files import BundleLedger, FileSiteLink, Rejection
from alliance.transport.http import HttpClient
from alliance.transport.https_link import HttpSiteLink

__all__ = ["FilesFolders", "SiteConfig", "SiteRunner", "describe"]

logger = logging.getLogger(__name__)


class SiteRunner:
    """Runs a hospital's agent from its config.

    Takes the state folder's lock first (:class:`~alliance.site.lock.AgentLock`): a second
    agent on the same folder is refused with :class:`~alliance.site.lock.AgentRunning`, naming
    the folder and the pid that holds it. :meth:`close` (or leaving a ``with`` block) releases
    it; so does the end of the process, however it ends.

    Parameters
    ----------
    config
        The loaded ``site.toml``.
    client
        The HTTPS client (default: one built from the config's certificate and key).
    """

    def __init__(self, config: SiteConfig, *, client: HttpClient | None = None) -> None:
        self.config = config
        self.signer = Signer.from_files(config.certificate, config.signing_key)
        if self.signer.name != config.site:
            raise ConfigError(
                f"{config.path}: site = {config.site!r} but the certificate "
                f"{config.certificate} is issued to {self.signer.name!r}"
            )
        self.lock = AgentLock(config.state_dir)
        try:
            self._open(client)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, client: HttpClient | None) -> None:
        config = self.config
        self.trust = TrustStore.load(
            config.ca, config.crl, floor=config.state_dir / "crl-number.json"
        )
        coordinator = MessageVerifier(self.trust, role=Role.COORDINATOR)
        self.audit = AuditLog(config.state_dir / "audit.log", actor=config.site)
        self.link: HttpSiteLink | FileSiteLink
        if config.files is not None:
            self.bundles: BundleLedger | None = BundleLedger(config.state_dir / "bundles.db")
            self.link = FileSiteLink(
                config.site,
                federation=config.federation,
                inbox=config.files.inbox,
                outbox=config.files.outbox,
                signer=self.signer,
                key=load_signing_key(config.signing_key),
                coordinator_key=None,
                verify=coordinator,
                ledger=self.bundles,
                on_rejected=self._rejected,
            )
        else:
            self.bundles = None
            self.link = HttpSiteLink(
                client
                or HttpClient(
                    config.coordinator,
                    ssl_context=client_context(
                        certificate=config.certificate, key=config.key, ca=config.ca
                    ),
                ),
                signer=self.signer,
                verify=coordinator,
                poll_s=config.poll_s,
            )
        self.ledger = config.open_ledger()
        self.peers = MessageVerifier(self.trust, role=Role.SITE)
        self._kinds: dict[str, StudyModel] = {}
        self.hospital = Hospital(
            config.site,
            federation=config.federation,
            policy=ApprovedHashes(
                config.approved_studies,
                min_cohort=config.min_cohort,
                study_text=self._study_text,
                reread=config.reread_approved_studies,
                where=config.path,
            ),
            cohort=self._cohort,
            audit=self.audit,
            models=ModelStore(config.state_dir),
            coordinator=coordinator,
        )
        self.studies_done = 0

    def close(self) -> None:
        """Close the ledgers and the link, and release the state folder (safe to call twice)."""
        self.ledger.close()
        if self.bundles is not None:
            self.bundles.close()
        if isinstance(self.link, HttpSiteLink):
            self.link.client.close()
        self.lock.release()

    def __enter__(self) -> SiteRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        *,
        max_studies: int | None = None,
        stop: threading.Event | None = None,
        until_idle: bool = False,
    ) -> None:
        """Poll and work until ``max_studies`` studies ended (forever if ``None``) or ``stop``;
        with ``until_idle`` (files only), until the inbox holds nothing more."""
        if until_idle and self.config.files is None:
            raise ConfigError(
                f"{self.config.path}: --until-idle is for a hospital on files "
                '(transport = "files"); over HTTPS the agent waits for its next task'
            )
        self.audit.append(
            "agent_started", coordinator=self.config.coordinator, transport=self.config.transport
        )
        stop = stop or threading.Event()
        while not stop.is_set() and (max_studies is None or self.studies_done < max_studies):
            try:
                env = self._fetch()
                if env is None and until_idle:
                    return
                if env is not None:
                    self._handle(env)
                    self._settle()
                # Over HTTPS an empty fetch has already waited poll_s; an empty inbox has not.
                worked = env is not None or self.config.files is None
            except AllianceError as exc:
                logger.error("site %s: %s", self.config.site, exc)
                self.audit.append("error", message=str(exc))
                worked = False
            if not worked:
                stop.wait(self.config.poll_s)

    def _fetch(self) -> Envelope | None:
        """The next message; for a hospital on files, each bundle read is an audit line."""
        env = self.link.fetch(self.config.site)
        if env is not None and isinstance(self.link, FileSiteLink):
            crash_point("site.after_read")
            h = env.header
            self.audit.append(
                "bundle_read",
                study=h.study,
                round=h.round,
                kind=h.kind.value,
                stage=str(env.body.get("stage", h.kind.value)),
            )
        return env

    def _rejected(self, rejection: Rejection) -> None:
        """A bundle of the inbox failed its checks and was set aside: the audit log says so."""
        self.audit.append(
            "bundle_rejected", file=Path(rejection.file).name, reason=rejection.reason
        )

    def _settle(self) -> None:
        """A hospital on files: the message in hand is handled and its replies are written, so
        its bundle is done (until then a crash leaves it in the inbox for the next start)."""
        if isinstance(self.link, FileSiteLink):
            crash_point("site.before_settle")
            self.link.settle()

    def _handle(self, env: Envelope) -> Outcome:
        """Act on one verified message and submit the replies."""
        outcome = self.hospital.handle(env)
        if outcome.action is Action.ENDED:
            self.studies_done += 1
        if env.header.kind is MessageKind.TRAIN_TASK:
            crash_point("site.before_submit")
        self._send(outcome)
        return outcome

    def _send(self, outcome: Outcome) -> None:
        """Submit the site's replies and record what left the hospital."""
        study, round_ = outcome.study, outcome.round
        for reply in outcome.replies:
            sent = self.link.submit(reply)
            kind = reply.header.kind
            details: dict[str, Any] = {}
            if kind is MessageKind.MODEL_UPDATE:
                event = "update_sent"
                details = {
                    "num_examples": reply.body["num_examples"],
                    "metrics": sorted(reply.body["metrics"]),
                }
            elif kind is MessageKind.SECAGG:
                event = "secagg_sent"
                details = {"stage": reply.body["stage"]}
            elif kind is MessageKind.FINAL_EVALUATION:
                event = "final_evaluation_sent"
                details = {"metrics": sorted(reply.body["metrics"])}
            else:
                event = "refusal_sent"
                details = {"reason": reply.body.get("reason")}
            self.audit.append(
                event, study=study, round=round_, bytes=sent.size, receipt=sent.receipt, **details
            )
            logger.info(
                "study %s round %d: sent %s (%d bytes): %s",
                study,
                round_,
                event.removesuffix("_sent").replace("_", " "),
                sent.size,
                sent.receipt,
            )

    def _study_text(self, study_id: str) -> str:
        """The study file's text: from the coordinator over HTTPS, the hospital's folder on
        files."""
        if isinstance(self.link, HttpSiteLink):
            return self.link.study_spec(study_id)
        assert self.config.files is not None
        return self.config.files.study_text(study_id)

    def _cohort(self, spec: StudySpec) -> Cohort:
        """The hospital's cases, loaded through the study's model kind."""
        kind = self._kind(spec)
        data = self.config.data
        train = kind.load(data.train)

        def build() -> Site:
            test = kind.load(data.test) if data.test is not None else None
            return Site(
                self.config.site,
                federation=self.config.federation,
                model=kind.build(spec.seed),
                train=train.dataset,
                test=None if test is None else test.dataset,
                link=None,
                collate_fn=kind.collate,
                ledger=self.ledger,
                signer=self.signer,
                peers=self.peers,
            )

        rejected = sum(i.rejected for i in train.issues)
        return Cohort(train.count, rejected, str(data.train.location), build)

    def _kind(self, spec: StudySpec) -> StudyModel:
        key = repr(sorted(spec.model.to_table().items()))
        if key not in self._kinds:
            self._kinds[key] = make_study_model(spec.model)
        return self._kinds[key]
