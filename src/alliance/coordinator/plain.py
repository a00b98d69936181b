"""Synchronous plaintext rounds: every participant answers the version handed out, then the mean.

A participant's :class:`~alliance.protocol.messages.ModelUpdate` counts once it is for this
round, trained on the version the round handed out, with the model's parameter names, shapes,
dtypes and finite values; it is stored at once (a restarted coordinator still counts it). The
round is complete when every participant has answered or declined, and closes at the driver's
deadline with at least the quorum.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy.typing as npt

from alliance.algorithms.strategies import SiteUpdate
from alliance.coordinator.round import Closing, Opening, Receipt, Round, RoundMode, RoundRecord
from alliance.core.errors import FederationError, ProtocolError
from alliance.core.faults import crash_point
from alliance.protocol.codec import content_digest
from alliance.protocol.envelope import Envelope, Header, MessageKind
from alliance.protocol.messages import ModelUpdate, check_same_shapes
from alliance.store.state import DuplicateUpdate, UpdateMeta

__all__ = ["PlainMode", "PlainRound", "record_of"]

logger = logging.getLogger(__name__)


class PlainRound(Round):
    """A synchronous round of plaintext updates (see the module docstring)."""

    def check_round(self, header: Header) -> None:
        """The message names this round and comes from one of its participants."""
        if header.round != self.number:
            raise ProtocolError(
                f"update for round {header.round}, but the open round is {self.number}"
            )
        if header.sender not in self.participants:
            raise ProtocolError(
                f"site {header.sender!r} is not a participant of round {self.number}"
            )

    def accept(self, env: Envelope) -> Receipt:
        """Check and store one update (a duplicate of a stored one is acknowledged)."""
        if env.header.kind is MessageKind.SECAGG:
            raise ProtocolError(
                f"study {env.header.study!r} does not use secure aggregation; send a model update"
            )
        update = ModelUpdate.from_envelope(env)
        base = self.base_version(env.header, update)
        check_same_shapes(
            update.delta,
            self.opening.weights,
            what=f"update from {env.header.sender} round {env.header.round}",
        )
        meta = UpdateMeta(
            env.header.sender,
            env.header.nonce,
            content_digest(env),
            update.num_examples,
            update.metrics,
            base,
        )
        try:
            self.opening.store.add_update(self.opening.study, self.number, meta, update.delta)
        except DuplicateUpdate:
            logger.info("update from %s round %d already stored", meta.site, self.number)
            return Receipt.DUPLICATE
        return Receipt.ACCEPTED

    def base_version(self, header: Header, update: ModelUpdate) -> int:
        """The model version the update was trained on, after checking it may count."""
        if update.model_version != self.opening.version:
            raise ProtocolError(
                f"update trained on model version {update.model_version}, current is "
                f"{self.opening.version}"
            )
        return update.model_version

    def outgoing(self, site: str) -> Envelope | None:
        """The participant's task until it answered or declined."""
        if site not in self.participants or site in self.answered() or site in self.refusals:
            return None
        return self.opening.task(site, (), 0, None).to_envelope()

    def answered(self) -> set[str]:
        """Sites whose update for this round is stored."""
        return {u.site for u in self.opening.store.updates(self.opening.study, self.number)}

    def close(self, quorum: int) -> Closing:
        """The stored updates, once at least ``quorum`` of the participants answered."""
        metas = self.opening.store.updates(self.opening.study, self.number)
        quorum = min(quorum, len(self.participants))
        if len(metas) < quorum:
            raise FederationError(
                f"round {self.number}: {len(metas)} of {len(self.participants)} sites answered, "
                f"quorum is {quorum}; wait for more sites or lower the quorum"
            )
        crash_point("coordinator.after_quorum")
        updates = [SiteUpdate(m.site, m.num_examples, self.loader(m.site)) for m in metas]
        record = record_of(self.opening, metas)
        return Closing(
            updates,
            record,
            f"round {self.number} closed with {len(metas)} of {len(self.participants)} sites "
            f"({record.num_examples} cases)",
        )

    def loader(self, site: str) -> Callable[[], Mapping[str, npt.NDArray[Any]]]:
        """Loads ``site``'s stored delta when the strategy needs it (one at a time)."""
        study, number, store = self.opening.study, self.number, self.opening.store
        return lambda: store.load_delta(study, number, site)


def record_of(
    opening: Opening,
    metas: Sequence[UpdateMeta],
    *,
    staleness: Mapping[str, int] | None = None,
    shares: Mapping[str, float] | None = None,
) -> RoundRecord:
    """The summary of a round closed with the plaintext updates ``metas``."""
    n = sum(m.num_examples for m in metas)
    return RoundRecord(
        round=opening.number,
        model_version=opening.version + 1,
        sites=tuple(m.site for m in metas),
        num_examples=n,
        train_loss=sum(m.num_examples * m.metrics.get("train_loss", 0.0) for m in metas) / n,
        site_metrics={m.site: dict(m.metrics) for m in metas},
        staleness=staleness or {},
        shares=shares or {},
    )


class PlainMode(RoundMode):
    """Opens :class:`PlainRound` rounds; nothing is carried from one round to the next."""

    def open(self, opening: Opening) -> Round:
        """A synchronous plaintext round."""
        return PlainRound(opening)
