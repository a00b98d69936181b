"""A study as the service runs it: its spec, its coordinator and its driver, built from the store.

:meth:`RunningStudy.load` builds the study's model from its ``[model]`` and seed, exactly as
every site will, its strategy, the :class:`~alliance.coordinator.rounds.Coordinator` over the
service's store (resuming where a previous process stopped) and the
:class:`~alliance.coordinator.driver.RoundDriver` with the study's schedule. After a restart, an
asynchronous study learns from the bundle ledger which task each hospital on files holds, so it is
handed no second task while its reply is on the road.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alliance.coordinator.driver import Report, RoundDriver, Schedule
from alliance.coordinator.rounds import Coordinator
from alliance.models.tasks import StudyModel
from alliance.models.training import get_weights
from alliance.protocol.codec import SignatureVerifier
from alliance.protocol.study import StudySpec
from alliance.store.state import CoordinatorStore, StudyRecord

if TYPE_CHECKING:
    from alliance.coordinator.offline import OfflineSites

__all__ = ["UPLOAD_MARGIN", "RunningStudy"]

#: Bytes allowed in an update beyond the model's own size (header, metrics, signature).
UPLOAD_MARGIN = 1 << 20


@dataclass
class RunningStudy:
    """The study the service runs now."""

    spec: StudySpec
    coordinator: Coordinator
    driver: RoundDriver
    #: The largest upload the study can need: the model (or its masked vector) and a margin.
    upload_limit: int

    @classmethod
    def load(
        cls,
        record: StudyRecord,
        *,
        federation: str,
        store: CoordinatorStore,
        clock: Callable[[], float],
        model_kind: Callable[[dict[str, Any]], StudyModel],
        peers: SignatureVerifier,
        offline: OfflineSites | None,
        alive: Callable[[float], set[str]],
        report: Report,
    ) -> RunningStudy:
        """Build the study of ``record`` (resuming it if the store holds its rounds).

        Raises
        ------
        AllianceError, TypeError, ValueError, RuntimeError, MemoryError
            The study cannot run (its options do not fit the model or strategy, or the model
            does not fit in memory).
        """
        spec = StudySpec.parse(record.spec, where=f"study {record.study_id}")
        weights = get_weights(model_kind(spec.model.to_table()).build(spec.seed))
        previous = store.rounds(spec.study_id)
        sites = spec.sites or tuple(sorted({s for r in previous for s in r.participants}))
        coordinator = Coordinator(
            spec,
            federation=federation,
            weights=weights,
            sites=sites,
            store=store,
            clock=clock,
            peers=peers,
            offline=offline.sites if offline is not None else (),
        )
        if offline is not None:
            coordinator.restore_issued_tasks(offline.issued_tasks(spec.study_id))
        size = sum(int(w.nbytes) for w in weights.values())
        if spec.secagg.enabled:
            # A masked vector is one unsigned integer per parameter (uint32 or uint64).
            size = max(size, sum(int(w.size) for w in weights.values()) * 8)
        asynchronous = spec.aggregation.is_async
        schedule = Schedule(
            rounds=spec.rounds,
            round_timeout_s=spec.round_timeout_s,
            open_quorum=spec.aggregation.buffer_for(len(sites)) if asynchronous else spec.quorum,
            listed=spec.sites is not None,
            asynchronous=asynchronous,
        )
        driver = RoundDriver(coordinator, schedule, alive=alive, started=clock(), report=report)
        return cls(spec, coordinator, driver, size + UPLOAD_MARGIN)
