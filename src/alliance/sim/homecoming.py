"""The model goes home in a simulation too: each simulated hospital receives the final model.

As in a deployment, the coordinator signs a model card for the final weights and every hospital
receives the model file and card with the study's end, verifies them (the coordinator's
signature, the model's hash, the approved study's hash) with the same hospital core
(:mod:`alliance.site.homecoming`), keeps them in its model store and answers with its
evaluation of the model on its held-out cases. The simulation keeps those counts
(:attr:`~alliance.sim.simulation.SimulationResult.final_evaluation`); it publishes no registry
and issues no card revisions.

The model file is the codec's generic study-model file
(:func:`~alliance.store.modelfile.study_model_file`): a simulation trains any ``nn.Module``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from alliance.protocol.codec import MessageSigner
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import StudyEnd
from alliance.protocol.model_card import (
    ModelCard,
    case_counts,
    evaluation_summary,
    model_sha256,
    sign_card,
)
from alliance.protocol.study import StudySpec
from alliance.store.modelfile import study_model_file

__all__ = ["FinalModel"]


class FinalModel:
    """The final model file and its signed card, and the study end that carries them.

    Parameters
    ----------
    spec
        The simulated study.
    federation
        The simulation's federation.
    version, weights
        The final model version and its weights.
    cases
        Each hospital's training cases.
    signer
        The simulation's coordinator identity.
    """

    def __init__(
        self,
        spec: StudySpec,
        *,
        federation: str,
        version: int,
        weights: Mapping[str, npt.NDArray[Any]],
        cases: Mapping[str, int],
        signer: MessageSigner,
    ) -> None:
        self.federation = federation
        self.study = spec.study_id
        self.version = version
        table = spec.model.to_table()
        self.model = study_model_file(
            spec.model.kind, table, weights, metadata={"study": spec.study_id, "version": version}
        )
        hospitals = tuple(sorted(cases))
        card = ModelCard(
            study=spec.study_id,
            study_hash=spec.hash,
            federation=federation,
            version=version,
            revision=1,
            issued_at=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            model_kind=spec.model.kind,
            model=table,
            hpo_version=None,
            catalogue={},
            strategy=spec.strategy.to_table(),
            rounds=spec.rounds,
            hospitals=hospitals,
            cases=case_counts(cases),
            evaluation=evaluation_summary(hospitals, {}),
            privacy={},
            model_sha256=model_sha256(self.model),
            model_bytes=len(self.model),
        )
        self.card = sign_card(card, signer)

    def end_for(self, site: str) -> Envelope:
        """The study's end for ``site``, carrying the model and its card."""
        header = Header(MessageKind.STUDY_END, self.federation, self.study, 0, COORDINATOR, site)
        return StudyEnd(header, self.version, self.model, self.card).to_envelope()
