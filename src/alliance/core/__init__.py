"""Errors, configuration and logging shared by every layer."""

from alliance.core.errors import (
    AllianceError,
    ConfigError,
    DataError,
    FederationError,
    IntegrityError,
    ModelError,
    ProtocolError,
    TransportError,
    UnknownCodeError,
)

__all__ = [
    "AllianceError",
    "ConfigError",
    "DataError",
    "FederationError",
    "IntegrityError",
    "ModelError",
    "ProtocolError",
    "TransportError",
    "UnknownCodeError",
]
