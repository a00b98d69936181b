"""The one exception tree of Guardian Alliance, grouped by what the caller can do about it.

::

    AllianceError                  base: anything raised on purpose by this package
    ├── ConfigError                a setting is missing or invalid: fix the config or argument
    ├── DataError                  input data is unusable: fix the file named in the message
    │   └── UnknownCodeError       a code (HPO term, disease id) is not in the shipped ontology
    ├── ProtocolError              a message or file is malformed, oversized or of another version
    │   └── IntegrityError         a message fails a consistency check (shapes, NaN, round binding)
    ├── TransportError             a message could not be delivered: retry or check the channel
    ├── FederationError            the federation cannot go on (no quorum, no sites, no cases)
    └── ModelError                 a model file or model state is unusable

Every message names what was wrong, where (file and line, site, round, field) and what to do.
Exit codes are chosen only by the CLI.
"""

from __future__ import annotations

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


class AllianceError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(AllianceError):
    """A setting is missing or invalid; the message names the setting and the accepted values."""


class DataError(AllianceError):
    """Input data cannot be used; the message names the file and line (or record)."""


class UnknownCodeError(DataError):
    """A code is not known to the shipped ontology or disease catalogue."""


class ProtocolError(AllianceError):
    """A message or file is malformed, oversized, or written by an incompatible version."""


class IntegrityError(ProtocolError):
    """A message decodes but is inconsistent: wrong shape, non-finite values, wrong round."""


class TransportError(AllianceError):
    """A message could not be delivered over its transport."""


class FederationError(AllianceError):
    """The federation cannot proceed: too few sites, no cases, quorum not reached."""


class ModelError(AllianceError):
    """A model file or model state cannot be used."""
