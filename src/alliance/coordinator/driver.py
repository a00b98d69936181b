"""The round driver: when a study's rounds open, advance, retry and close, written once.

The service's driver thread and the simulation's loop both call :meth:`RoundDriver.step` with
the time of an injected clock (wall time in the service, a virtual clock in the simulation that
jumps to :meth:`RoundDriver.next_deadline` when nothing else can happen). Each step does at most
one of these, in order:

- **advance** the open round: a secure round moves to its next stage when the current one is
  complete or past its deadline; an aborted attempt is retried with fresh keys once at least the
  quorum of its participants is alive (otherwise the round waits, and says so);
- **close** it as soon as it is complete, or at its deadline when the quorum answered; if too
  few did, the deadline moves on by ``round_timeout_s`` and the log says who is missing;
- **finish** the study after its last round;
- **open** the next round. The first waits until every invited site has joined (is alive) or a
  grace period has passed since the study started (``round_timeout_s``; for a study open to
  every site, :data:`JOIN_GRACE_S` at most), and then needs the quorum alive; later rounds open
  for the sites alive at once. Asynchronous rounds (a mode whose round is complete at its
  buffer) open every later round for every invited site, waiting for nobody.

Who is alive is the caller's: the service counts sites that polled recently and the hospitals
on files; the simulation, the sites that have not vanished in the round. Every step that changes
something is reported to ``report(event, details)`` (the service writes its audit log with it).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alliance.coordinator.round import RoundRecord
from alliance.coordinator.rounds import Coordinator
from alliance.core.errors import FederationError

__all__ = ["JOIN_GRACE_S", "RoundDriver", "Schedule", "Step"]

logger = logging.getLogger(__name__)

#: Longest wait for more sites before the first round of a study open to every site.
JOIN_GRACE_S = 30.0


class Step(enum.Enum):
    """What one :meth:`RoundDriver.step` did."""

    IDLE = "idle"
    ADVANCED = "advanced"
    RETRIED = "retried"
    CLOSED = "closed"
    WAITING = "waiting"
    OPENED = "opened"
    FINISHED = "finished"


@dataclass(frozen=True)
class Schedule:
    """How a study's rounds are paced.

    Parameters
    ----------
    rounds
        Rounds to run.
    round_timeout_s
        A round's deadline after it opens (and each extension when the quorum is missing).
    open_quorum
        Fewest alive sites a round opens for.
    listed
        The study invites a fixed list of sites (``False``: every site of the consortium).
    asynchronous
        Rounds after the first open at once for every invited site.
    """

    rounds: int
    round_timeout_s: float
    open_quorum: int
    listed: bool = True
    asynchronous: bool = False

    @property
    def join_grace_s(self) -> float:
        """How long the first round waits for every invited site."""
        return self.round_timeout_s if self.listed else min(self.round_timeout_s, JOIN_GRACE_S)


Report = Callable[[str, dict[str, Any]], None]


class RoundDriver:
    """Drives one study's :class:`~alliance.coordinator.rounds.Coordinator` (module docstring).

    Parameters
    ----------
    coordinator
        The study's coordinator.
    schedule
        Rounds, deadlines and the opening rule.
    alive
        ``alive(now)``: the sites that may be given a place in a round now.
    started
        When the study started (the first round's grace period counts from it).
    report
        Called with ``(event, details)`` for every round opened, retried or closed and the
        study's end.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        schedule: Schedule,
        *,
        alive: Callable[[float], set[str]],
        started: float,
        report: Report | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.schedule = schedule
        self.alive = alive
        self.started = started
        self.report: Report = report or (lambda _event, _details: None)
        #: Why the open round cannot go on yet (``None`` when nothing holds it).
        self.waiting: str | None = None
        self.finished = False

    @property
    def study(self) -> str:
        """The study driven."""
        return self.coordinator.study

    def step(self, now: float) -> Step:
        """Advance the study by one step (see the module docstring); a round that closes is
        followed at once by the study's end or the next round's opening, when it may open."""
        coord = self.coordinator
        if self.finished:
            return Step.IDLE
        closed = False
        if coord.current is not None:
            moved = self._advance(now)
            closing = self._maybe_close(now)
            if coord.current is not None:
                return moved or closing or Step.IDLE
            closed = True
        if len(coord.history) >= self.schedule.rounds:
            coord.finish()
            self.finished = True
            self.report("study_finished", {"study": self.study, "model_version": coord.version})
            return Step.FINISHED
        opened = self._maybe_open(now)
        return Step.CLOSED if closed and opened is Step.IDLE else opened

    def next_deadline(self) -> float | None:
        """The next time at which a step will do something without any message arriving."""
        current = self.coordinator.current
        if current is None:
            return None
        if current.stage_deadline is not None:
            return current.stage_deadline
        return self._round_deadline()

    def _round_deadline(self) -> float | None:
        state = self.coordinator.store.current_round(self.study)
        return None if state is None else state.deadline

    def _advance(self, now: float) -> Step | None:
        """Move a round's stages on; retry an aborted attempt when enough sites are alive."""
        coord = self.coordinator
        current = coord.current
        assert current is not None
        if current.aborted is None:
            return Step.ADVANCED if coord.advance(now=now) else None
        reachable = self.alive(now)
        cohort = [s for s in current.participants if s in reachable and s not in current.refusals]
        needed = min(coord.quorum, len(current.participants))
        if len(cohort) < needed:
            self.waiting = (
                f"round {coord.round}: the attempt aborted ({current.aborted}) and only "
                f"{len(cohort)} of the {needed} sites a new attempt needs are reachable"
            )
            return Step.WAITING
        coord.retry(cohort, deadline=now + self.schedule.round_timeout_s)
        self.report(
            "secure_round_retried", {"study": self.study, "round": coord.round, "sites": cohort}
        )
        return Step.RETRIED

    def _maybe_close(self, now: float) -> Step | None:
        coord = self.coordinator
        current = coord.current
        assert current is not None
        if current.aborted is not None:
            return None
        deadline = self._round_deadline()
        if current.stage_deadline is not None and not current.complete:
            return None  # a secure round's stages keep their own deadlines
        if not current.complete and (deadline is None or now < deadline):
            return None
        try:
            record = coord.close_round()
        except FederationError as exc:
            if current.aborted is not None:
                self.waiting = str(exc)
                return Step.WAITING  # retried at the next step
            missing = sorted(current.waiting())
            coord.store.set_deadline(self.study, coord.round, now + self.schedule.round_timeout_s)
            self.waiting = f"{exc}; still waiting for {', '.join(missing) or 'nobody'}"
            coord.log_event("round_waiting", self.waiting)
            return Step.WAITING
        self.waiting = None
        self._closed(record)
        return Step.CLOSED

    def _closed(self, record: RoundRecord) -> None:
        self.report(
            "round_closed",
            {
                "study": self.study,
                "round": record.round,
                "model_version": record.model_version,
                "sites": list(record.sites),
                "cases": record.num_examples,
            },
        )

    def _maybe_open(self, now: float) -> Step:
        coord, schedule = self.coordinator, self.schedule
        alive = sorted(self.alive(now))
        if not schedule.listed:
            for site in alive:
                coord.invite(site)
        ready = [s for s in alive if s in coord.sites]
        first = coord.round == 0
        if schedule.asynchronous and not first:
            ready = list(coord.sites)  # every invited site may answer whenever it can
        else:
            everyone = schedule.listed and len(ready) == len(coord.sites)
            waited = now - self.started >= schedule.join_grace_s
            if len(ready) < schedule.open_quorum or (first and not (everyone or waited)):
                return Step.IDLE
            if schedule.asynchronous:
                ready = list(coord.sites)
        round_ = coord.start_round(participants=ready, deadline=now + schedule.round_timeout_s)
        self.report(
            "round_opened",
            {
                "study": self.study,
                "round": round_,
                "model_version": coord.version,
                "participants": ready,
            },
        )
        return Step.OPENED
