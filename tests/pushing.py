"""Test harness: a pull-only coordinator whose messages are pushed to an in-memory mailbox.

The coordinator only hands out messages (:meth:`~alliance.coordinator.rounds.Coordinator.outgoing`)
and the transports pump them to the sites. Hand-driven tests want the old push shape: after
``start_round``, ``advance`` or ``retry`` every participant's message waits in the mailbox, once,
and ``receive()`` counts what the sites submitted. The sites here hold what they are handed until
they answer (as a hospital on files does), so in asynchronous rounds a site whose task may still
count is handed no new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alliance.coordinator.offline import message_key
from alliance.coordinator.rounds import Coordinator, Receipt
from alliance.coordinator.secure import SecureRound
from alliance.coordinator.secure_round import SecureAggregationRound
from alliance.core.errors import AllianceError
from alliance.protocol.study import StudySpec
from alliance.transport.base import CoordinatorMailbox

#: The study's own fields among a hand-built coordinator's options (the rest is runtime).
_SPEC_FIELDS = {"study", "sites", "plan", "quorum", "privacy", "secagg", "aggregation"}


def coordinator(**options: Any) -> Coordinator:
    """A coordinator from one flat set of options: the study's (``study``, ``sites``,
    ``plan``, ``quorum``, ``privacy``, ``secagg``, ``aggregation``, ``open_invitation``) become
    its :class:`~alliance.protocol.study.StudySpec`; the others are passed on."""
    spec, runtime = study_options(options)
    return Coordinator(spec, **runtime)


def study_options(options: dict[str, Any]) -> tuple[StudySpec, dict[str, Any]]:
    """Split flat coordinator options into a study spec and runtime keywords."""
    fields = {k: options[k] for k in _SPEC_FIELDS if k in options}
    runtime = {k: v for k, v in options.items() if k not in _SPEC_FIELDS}
    open_invitation = runtime.pop("open_invitation", False)
    sites = list(fields.get("sites", ()))
    privacy = fields.get("privacy")
    spec = StudySpec.build(
        study_id=fields.get("study", "study"),
        rounds=privacy.rounds if privacy is not None and privacy.patient_level else 100,
        sites=None if open_invitation else sorted(sites),
        quorum=fields.get("quorum"),
        plan=fields.get("plan"),
        privacy=privacy,
        secagg=fields.get("secagg"),
        aggregation=fields.get("aggregation"),
    )
    if open_invitation:
        runtime["sites"] = sites
    return spec, runtime


class PushingCoordinator(Coordinator):
    """A :class:`Coordinator` with the push shape of the simulation's network."""

    def __init__(self, *, mailbox: CoordinatorMailbox, **options: Any) -> None:
        aggregation = options.get("aggregation")
        if aggregation is not None and aggregation.is_async:
            # Pushed sites hold their task until they answer, as hospitals on files do.
            options.setdefault("offline", tuple(options["sites"]))
        spec, runtime = study_options(options)
        super().__init__(spec, **runtime)
        self.mailbox = mailbox
        self._handed: set[tuple[str, str]] = set()

    def push(self) -> None:
        """Publish what each invited site should receive now, once."""
        for site in self.sites:
            envelope = self.outgoing(site)
            if envelope is None:
                continue
            key = (site, message_key(envelope))
            if key not in self._handed:
                self._handed.add(key)
                self.mailbox.publish(envelope)

    def start_round(
        self, *, participants: Sequence[str] | None = None, deadline: float | None = None
    ) -> int:
        number = super().start_round(participants=participants, deadline=deadline)
        self.push()
        return number

    def advance(self, *, now: float | None = None, force: bool = False) -> bool:
        changed = super().advance(now=now, force=force)
        if changed:
            self.push()
        return changed

    def retry(
        self, participants: Sequence[str] | None = None, *, deadline: float | None = None
    ) -> None:
        super().retry(participants, deadline=deadline)
        self.push()

    @property
    def secure_round(self) -> SecureRound | None:
        """The open secure round's current attempt."""
        current = self.current
        return current.attempt if isinstance(current, SecureAggregationRound) else None

    def receive(self) -> int:
        """Check and file every message in the mailbox; how many counted."""
        accepted = 0
        for envelope in self.mailbox.collect():
            try:
                accepted += self.accept(envelope) is Receipt.ACCEPTED
            except AllianceError:
                continue
        return accepted

    def finish(self) -> None:
        super().finish()
        for site in self.sites:
            self.mailbox.publish(self.end_for(site).to_envelope())

    def cancel(self, reason: str) -> None:
        super().cancel(reason)
        for site in self.sites:
            self.mailbox.publish(self.end_for(site).to_envelope())
