"""Persistence: trained model files and the coordinator's durable state.

:class:`CoordinatorStore` is the coordinator's state contract; :class:`MemoryStore` keeps it in
the process (simulation), :class:`SqlStore` in SQLite or PostgreSQL (networked deployment).
"""

from alliance.store.memory import MemoryStore
from alliance.store.modelfile import FORMAT, LoadedModel, load_model, save_model
from alliance.store.sql import SqlStore
from alliance.store.state import (
    CoordinatorStore,
    DuplicateUpdate,
    RoundState,
    RoundStatus,
    StoredEvent,
    StoredRejection,
    StudyRecord,
    StudyStatus,
    UpdateMeta,
)

__all__ = [
    "FORMAT",
    "CoordinatorStore",
    "DuplicateUpdate",
    "LoadedModel",
    "MemoryStore",
    "RoundState",
    "RoundStatus",
    "SqlStore",
    "StoredEvent",
    "StoredRejection",
    "StudyRecord",
    "StudyStatus",
    "UpdateMeta",
    "load_model",
    "save_model",
]
