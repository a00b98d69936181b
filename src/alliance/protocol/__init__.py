"""Protocol messages, defined once, and the codec that turns them into bytes."""

from alliance.protocol.codec import decode, encode
from alliance.protocol.envelope import (
    COORDINATOR,
    PROTOCOL_VERSION,
    Envelope,
    Header,
    MessageKind,
    new_nonce,
)
from alliance.protocol.messages import (
    ModelUpdate,
    StudyEnd,
    TrainingPlan,
    TrainTask,
    check_same_shapes,
)

__all__ = [
    "COORDINATOR",
    "PROTOCOL_VERSION",
    "Envelope",
    "Header",
    "MessageKind",
    "ModelUpdate",
    "StudyEnd",
    "TrainTask",
    "TrainingPlan",
    "check_same_shapes",
    "decode",
    "encode",
    "new_nonce",
]
