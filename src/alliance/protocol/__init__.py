"""Protocol messages, defined once, and the codec that turns them into bytes."""

from alliance.protocol.aggregation import AggregationMode, AggregationPlan
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
    Refusal,
    StudyEnd,
    TrainingPlan,
    TrainTask,
    check_same_shapes,
)
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.protocol.secagg_messages import SecAggMessage, SecAggStage
from alliance.protocol.secure_update import SecureSum, UpdateLayout

__all__ = [
    "COORDINATOR",
    "PROTOCOL_VERSION",
    "AggregationMode",
    "AggregationPlan",
    "Envelope",
    "Header",
    "MessageKind",
    "ModelUpdate",
    "PrivacyPlan",
    "Refusal",
    "SecAggMessage",
    "SecAggPlan",
    "SecAggStage",
    "SecureSum",
    "StudyEnd",
    "TrainTask",
    "TrainingPlan",
    "UpdateLayout",
    "check_same_shapes",
    "decode",
    "encode",
    "new_nonce",
]
