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
    │   └── SecAggAbort            a secure-aggregation attempt is abandoned: start a new attempt
    ├── ModelError                 a model file or model state is unusable
    │   └── StoreDamaged           stored state fails its checks: restore the store from a backup
    └── PrivacyError               the site's privacy ledger refuses a release or is untrustworthy
        └── BudgetExceeded         a release would push the hospital's ε past its budget

Every message names what was wrong, where (file and line, site, round, field) and what to do.
Exit codes are chosen only by the CLI.
"""

from __future__ import annotations

__all__ = [
    "AllianceError",
    "BudgetExceeded",
    "ConfigError",
    "DataError",
    "FederationError",
    "IntegrityError",
    "ModelError",
    "PrivacyError",
    "ProtocolError",
    "SecAggAbort",
    "StoreDamaged",
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


class SecAggAbort(FederationError):  # noqa: N818 - an abort is the event, not a fault
    """A secure-aggregation attempt cannot complete safely and is abandoned.

    Raised by the coordinator's side when too few sites remain at a stage (the message names the
    stage, the sites left and the threshold), and by a site that refuses a request that is
    inconsistent with what it has seen (a lying or confused coordinator, a replayed or forged
    message). The attempt reveals nothing; start a new attempt with fresh keys.
    """


class ModelError(AllianceError):
    """A model file or model state cannot be used."""


class StoreDamaged(ModelError):  # noqa: N818 - a state of the store, like SecAggAbort
    """Stored state fails its integrity checks: a blob whose sha256 no longer matches, or a
    database file the engine reports as malformed.

    The message names what is damaged (file, study, model version, round, site); the stored
    value is never used. Stop the coordinator and restore its store from a backup.
    """


class PrivacyError(AllianceError):
    """The privacy ledger refuses a release, or is missing or inconsistent (see the message)."""


class BudgetExceeded(PrivacyError):  # noqa: N818 - a refusal by policy, not a fault
    """A release would push the hospital's total ε past its budget; nothing was charged."""
