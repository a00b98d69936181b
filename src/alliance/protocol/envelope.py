"""The envelope every protocol message travels in: a header, a JSON body and named arrays.

The header binds a message to its federation, study, round, sender and recipient, and carries a
random nonce so that a replayed message can be recognised. The body holds only JSON scalars,
lists and objects; model tensors travel as named numpy arrays beside it, never inside it.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["COORDINATOR", "PROTOCOL_VERSION", "Envelope", "Header", "MessageKind", "new_nonce"]

PROTOCOL_VERSION = 1
#: The sender/recipient name of the coordinator in every header.
COORDINATOR = "coordinator"


class MessageKind(enum.Enum):
    """What a message is; each kind has one body type in :mod:`alliance.protocol.messages`."""

    TRAIN_TASK = "train_task"
    MODEL_UPDATE = "model_update"
    STUDY_END = "study_end"
    MODEL_SNAPSHOT = "model_snapshot"
    REFUSAL = "refusal"
    SECAGG = "secagg"
    FINAL_EVALUATION = "final_evaluation"


def new_nonce() -> str:
    """A fresh 128-bit random nonce, hex-encoded."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Header:
    """Routing and binding fields of a message.

    Parameters
    ----------
    kind
        The message type.
    federation, study
        Which consortium and which study the message belongs to.
    round
        The round number (0 before the first round).
    sender, recipient
        Site ids, or ``"coordinator"``.
    nonce
        Random, unique per message.
    version
        Protocol version the message was written with.
    """

    kind: MessageKind
    federation: str
    study: str
    round: int
    sender: str
    recipient: str
    nonce: str = field(default_factory=new_nonce)
    version: int = PROTOCOL_VERSION

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind.value,
            "federation": self.federation,
            "study": self.study,
            "round": self.round,
            "sender": self.sender,
            "recipient": self.recipient,
            "nonce": self.nonce,
            "version": self.version,
        }


@dataclass(frozen=True)
class Envelope:
    """A decoded message: header, JSON body and named arrays (C-contiguous, little-endian)."""

    header: Header
    body: Mapping[str, Any]
    arrays: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Total bytes of the arrays (the bulk of a message)."""
        return int(sum(np.asarray(a).nbytes for a in self.arrays.values()))
