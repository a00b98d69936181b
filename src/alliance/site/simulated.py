"""A hospital of the simulation: the deployed hospital's core, on datasets held in memory.

:func:`simulated_hospital` builds the same :class:`~alliance.site.hospital.Hospital` the agent
runs (plan check, privacy budget, audit log, refusals with their category) for a site whose
cases are given as datasets and whose model comes from a function. There is no study file to
hash, so its policy is :class:`ApprovedSpecs`: the studies it is handed are the ones it approved.
Its audit log lives in a folder the simulation owns (a temporary one is fine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from alliance.models.steps import EvalStep, TrainStep
from alliance.privacy.ledger import PrivacyLedger
from alliance.privacy.noise import SecureGaussian
from alliance.protocol.codec import MessageSigner, SignatureVerifier
from alliance.protocol.study import StudySpec
from alliance.site.agent import Site
from alliance.site.hospital import Cohort, Hospital
from alliance.site.model_store import ModelStore
from alliance.site.outcome import Refused
from alliance.store.audit import AuditLog

__all__ = ["ApprovedSpecs", "simulated_hospital"]


class ApprovedSpecs:
    """A policy that approves exactly the studies it is given (no file to hash).

    Parameters
    ----------
    specs
        The approved studies.
    min_cohort
        The fewest training cases the hospital takes part with.
    """

    def __init__(self, specs: Iterable[StudySpec], *, min_cohort: int = 1) -> None:
        self.specs = {spec.study_id: spec for spec in specs}
        self._min_cohort = min_cohort

    @property
    def min_cohort(self) -> int:
        """The fewest training cases the hospital takes part with."""
        return self._min_cohort

    def approve(self, study_id: str) -> StudySpec | Refused:
        """The study, if it is one of :attr:`specs`."""
        spec = self.specs.get(study_id)
        if spec is None:
            return Refused(
                "not-approved",
                f"study {study_id!r} is not among the approved studies {sorted(self.specs)}",
            )
        return spec


def simulated_hospital(
    site_id: str,
    *,
    federation: str,
    spec: StudySpec,
    train: Dataset[Any],
    test: Dataset[Any] | None,
    model_fn: Callable[[], nn.Module],
    ledger: PrivacyLedger | None,
    folder: Path,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    signer: MessageSigner | None = None,
    peers: SignatureVerifier | None = None,
    noise: SecureGaussian | None = None,
    min_cohort: int = 1,
    train_step: TrainStep | None = None,
    eval_step: EvalStep | None = None,
    models: ModelStore | None = None,
    coordinator: SignatureVerifier | None = None,
) -> Hospital:
    """The hospital ``site_id`` of a simulation, approving ``spec`` and training on ``train``.

    Parameters
    ----------
    site_id, federation
        Who the hospital is.
    spec
        The study it approved; a task must match it (plan, privacy, secure aggregation, rounds)
        or is refused with the category "policy".
    train, test
        Its cases (``test`` may be ``None``).
    model_fn
        Builds a module of the study's architecture.
    ledger
        Its privacy ledger (required for studies with DP-SGD).
    folder
        Where its audit log ``<site_id>.audit.log`` is kept.
    collate_fn, signer, peers, noise, train_step, eval_step
        As for :class:`~alliance.site.agent.Site`.
    min_cohort
        The fewest training cases it takes part with.
    models, coordinator
        Where it keeps the final model it receives, and the check of the coordinator's
        signature on its card (both or neither; see :class:`~alliance.site.hospital.Hospital`).
    """
    count = len(train)  # type: ignore[arg-type]

    def cohort(approved: StudySpec) -> Cohort:
        def build() -> Site:
            return Site(
                site_id,
                federation=federation,
                model=model_fn(),
                train=train,
                test=test,
                link=None,
                collate_fn=collate_fn,
                ledger=ledger,
                signer=signer,
                peers=peers,
                noise=noise,
                train_step=train_step,
                eval_step=eval_step,
            )

        return Cohort(count, 0, f"the datasets given for {site_id}", build)

    return Hospital(
        site_id,
        federation=federation,
        policy=ApprovedSpecs([spec], min_cohort=min_cohort),
        cohort=cohort,
        audit=AuditLog(folder / f"{site_id}.audit.log", actor=site_id),
        models=models,
        coordinator=coordinator,
    )
