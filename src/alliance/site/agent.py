"""A hospital's site: fetches tasks, trains on its own cases, sends back an update and counts.

The site always initiates: it polls its :class:`~alliance.transport.base.SiteLink` for the next
message. For a :class:`~alliance.protocol.messages.TrainTask` addressed to it within its
federation it (1) loads the global weights, (2) evaluates them on its held-out cases and keeps
only aggregate counts, (3) trains locally with the task's plan, and (4) submits the parameter
delta, its number of training examples and those counts. Nothing else leaves the site.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from alliance.core.errors import FederationError, ProtocolError
from alliance.evaluation.ranking import rank_dataset, topk_counts
from alliance.models.training import get_weights, set_weights, train_locally
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import ModelUpdate, StudyEnd, TrainTask, check_same_shapes
from alliance.transport.base import SiteLink

__all__ = ["Site", "site_seed"]

logger = logging.getLogger(__name__)


class Site:
    """One hospital in a federation.

    Parameters
    ----------
    site_id
        The hospital's id in the federation.
    federation
        The federation the site belongs to; tasks for any other are refused.
    model
        A module of the study's architecture (its weights are replaced by each task's).
    train, test
        The hospital's training cases and held-out cases (``test`` may be ``None``).
    link
        The site's end of the transport, for :meth:`step`; ``None`` when a runner fetches and
        submits itself and calls :meth:`train_round`.
    collate_fn
        Batch builder for both datasets.
    """

    def __init__(
        self,
        site_id: str,
        *,
        federation: str,
        model: nn.Module,
        train: Dataset[Any],
        test: Dataset[Any] | None,
        link: SiteLink | None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        if len(train) == 0:  # type: ignore[arg-type]
            raise FederationError(
                f"site {site_id!r} has no training cases; load its data before joining"
            )
        self.id = site_id
        self.federation = federation
        self.model = model
        self.train = train
        self.test = test
        self.link = link
        self.collate_fn = collate_fn
        self.finished = False
        self.final_version: int | None = None

    def step(self) -> bool:
        """Handle at most one pending message; return whether there was one."""
        if self.link is None:
            raise FederationError(f"site {self.id!r} has no link to fetch messages from")
        env = self.link.fetch(self.id)
        if env is None:
            return False
        if env.header.recipient != self.id or env.header.federation != self.federation:
            logger.warning(
                "site %s refused a %s message addressed to %s in federation %s",
                self.id,
                env.header.kind.value,
                env.header.recipient,
                env.header.federation,
            )
            return True
        if env.header.kind is MessageKind.STUDY_END:
            self.final_version = StudyEnd.from_envelope(env).final_version
            self.finished = True
            return True
        if env.header.kind is not MessageKind.TRAIN_TASK:
            raise ProtocolError(
                f"site {self.id}: unexpected {env.header.kind.value} message from the coordinator"
            )
        self.link.submit(self.train_round(TrainTask.from_envelope(env)).to_envelope())
        return True

    def train_round(self, task: TrainTask) -> ModelUpdate:
        """Evaluate the task's model on the held-out cases, train, and return the update."""
        reference = get_weights(self.model)
        check_same_shapes(
            task.weights, reference, what=f"task for site {self.id} round {task.header.round}"
        )
        set_weights(self.model, task.weights)
        metrics: dict[str, float] = {}
        if self.test is not None and len(self.test) > 0:  # type: ignore[arg-type]
            metrics.update(
                topk_counts(rank_dataset(self.model, self.test, collate_fn=self.collate_fn))
            )
        plan = task.plan
        result = train_locally(
            self.model,
            self.train,
            epochs=plan.local_epochs,
            batch_size=plan.batch_size,
            learning_rate=plan.learning_rate,
            weight_decay=plan.weight_decay,
            proximal_mu=plan.proximal_mu,
            seed=site_seed(plan.seed, task.header.round, self.id),
            collate_fn=self.collate_fn,
        )
        metrics["train_loss"] = result.mean_loss
        after = get_weights(self.model)
        delta = {k: (after[k] - np.asarray(task.weights[k], dtype=np.float32)) for k in after}
        header = Header(
            kind=MessageKind.MODEL_UPDATE,
            federation=self.federation,
            study=task.header.study,
            round=task.header.round,
            sender=self.id,
            recipient=COORDINATOR,
        )
        return ModelUpdate(header, task.model_version, result.num_examples, delta, metrics)


def site_seed(seed: int, round_: int, site: str) -> int:
    """The shuffling seed of ``site`` in round ``round_`` of a study seeded with ``seed``."""
    digest = hashlib.sha256(f"{seed}/{round_}/{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
