"""What a hospital did with one message from the coordinator: a typed record, no side channels.

:meth:`~alliance.site.agent.Site.answer` and :meth:`~alliance.site.hospital.Hospital.handle`
both return an :class:`Outcome`: what the site did (:class:`Action`), the replies for the caller
to submit, the privacy charges the message cost, and, for a refusal, its category (the one word
the coordinator learns) and its detail (which stays in the hospital's audit log).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from alliance.privacy.ledger import Charge
from alliance.protocol.envelope import Envelope
from alliance.protocol.messages import REFUSAL_REASONS

__all__ = ["Action", "Outcome", "Refused"]


class Action(Enum):
    """What a hospital did with a message."""

    #: Trained a round now and answered it (an update, or a secure-aggregation key advert).
    TRAINED = "trained"
    #: Answered a round it had answered before with the recorded reply: nothing trained.
    RESENT = "resent"
    #: Declined the task; :attr:`Outcome.refused` says why, the reply says only the category.
    REFUSED = "refused"
    #: Answered one stage of a secure-aggregation round.
    SECAGG = "secagg"
    #: Recorded the end of a study it worked on.
    ENDED = "ended"
    #: Did nothing: a message for someone else, a study end it had already recorded or for a
    #: study it never joined, a secure-aggregation task it cannot take part in.
    IGNORED = "ignored"


@dataclass(frozen=True)
class Refused:
    """Why a hospital declined a task.

    Attributes
    ----------
    category
        What the coordinator learns, one of
        :data:`~alliance.protocol.messages.REFUSAL_REASONS`.
    detail
        The whole reason (counts, hashes, file names), for the hospital's own audit log only.
    """

    category: str
    detail: str

    def __post_init__(self) -> None:
        if self.category not in REFUSAL_REASONS:
            raise ValueError(
                f"refusal category {self.category!r} is none of {list(REFUSAL_REASONS)}"
            )


@dataclass(frozen=True)
class Outcome:
    """What a hospital did with one message.

    Attributes
    ----------
    action
        What it did.
    study, round
        The message's study and round.
    replies
        What to submit to the coordinator, in order (the caller submits them).
    charges
        Privacy charges this message added to the hospital's ledger (a round charged before
        adds none).
    refused
        Why it declined, when :attr:`action` is :attr:`Action.REFUSED`.
    model_version
        The task's model version (a training task), or the study's final version (its end).
    """

    action: Action
    study: str
    round: int
    replies: tuple[Envelope, ...] = ()
    charges: tuple[Charge, ...] = ()
    refused: Refused | None = None
    model_version: int | None = None
