"""The anchor: a sidecar file that keeps a deleted or replaced privacy ledger from going unseen.

Threat model
------------
The hospital's :class:`~alliance.privacy.ledger.PrivacyLedger` is the only record of how much of
its privacy budget the consortium has spent. Its accounting is cumulative: every release ever
made on the hospital's patients counts. A ledger that is deleted, replaced by another one
(e.g. restored from the wrong backup, or a site's state directory re-created) or re-created
empty would therefore *reset the hospital's accounting to zero*, and the next study would be
allowed to spend the whole budget again on the same patients, with nothing anywhere to show it.
The anchor turns that silent reset into a loud refusal. It guards against accidents, not
against the site's operator, who is trusted as with the patient data itself: someone who can
write to the site's disk can delete the anchor too (and deleting it is the documented way for a
privacy officer to start the accounting afresh on purpose).

What it records
---------------
When a ledger is created, the anchor (``<ledger>.anchor`` next to it by default, see
:func:`default_anchor_path`; a deployment can keep it on another volume) records the ledger's
random id, its creation time and δ (:class:`LedgerIdentity`), as JSON written atomically
(temporary file, ``fsync``, rename). Each time the ledger is opened:

* a ledger that is missing or empty while its anchor exists is refused
  (:func:`refuse_if_anchored`): restore the ledger from backup, or, only if the privacy
  officer decides to start the accounting afresh, delete the anchor as well;
* a ledger whose id differs from its anchor's, or whose anchor cannot be read, is refused
  (:func:`verify_or_write_anchor`): a different ledger was put in its place;
* a ledger that exists without an anchor (a crash between creating the two, or an anchor lost)
  gets its anchor rewritten from the ledger's own record, with a warning.

Refusals are :class:`~alliance.core.errors.PrivacyError`, with what to do in the message.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from alliance.core.errors import PrivacyError

__all__ = [
    "LedgerIdentity",
    "default_anchor_path",
    "refuse_if_anchored",
    "verify_or_write_anchor",
]

logger = logging.getLogger(__name__)

_ANCHOR_FORMAT = "guardian-alliance privacy ledger anchor"


@dataclass(frozen=True)
class LedgerIdentity:
    """What identifies one ledger, as stored in it and recorded in its anchor.

    Attributes
    ----------
    ledger_id
        Random id drawn when the ledger was created.
    created_at
        When the ledger was created (UTC, ISO 8601).
    delta
        The hospital's δ, fixed at creation.
    """

    ledger_id: str
    created_at: str
    delta: float


def default_anchor_path(ledger: Path) -> Path:
    """Where the anchor of ``ledger`` lives unless told otherwise: ``<ledger>.anchor``."""
    return ledger.with_name(ledger.name + ".anchor")


def refuse_if_anchored(ledger: Path, anchor: Path) -> None:
    """Refuse to start a new ledger at ``ledger`` when ``anchor`` says one was created there.

    Raises
    ------
    PrivacyError
        If ``anchor`` exists: the ledger it records is missing or empty.
    """
    if anchor.exists():
        raise PrivacyError(_missing_message(ledger, anchor))


def verify_or_write_anchor(
    ledger: Path, anchor: Path, identity: LedgerIdentity, *, existed: bool
) -> None:
    """Compare the ledger with its anchor; write the anchor if there is none.

    Parameters
    ----------
    ledger
        The ledger's file.
    anchor
        Its anchor's file.
    identity
        What the ledger itself records.
    existed
        Whether the ledger existed before this opening (a missing anchor is then warned of).

    Raises
    ------
    PrivacyError
        The anchor is unreadable, or records a different ledger.
    """
    if anchor.exists():
        try:
            recorded = json.loads(anchor.read_text(encoding="utf-8"))
            ledger_id = recorded["ledger_id"] if recorded["format"] == _ANCHOR_FORMAT else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PrivacyError(
                f"the privacy ledger anchor {anchor} is unreadable ({exc}); restore it from "
                f"backup, or delete it to have it rewritten from the ledger {ledger}"
            ) from exc
        if ledger_id != identity.ledger_id:
            raise PrivacyError(
                f"the privacy ledger {ledger} (id {identity.ledger_id}, created "
                f"{identity.created_at}) is not the ledger its anchor {anchor} records (id "
                f"{ledger_id}, created {recorded.get('created_at')}): it was replaced, which "
                "would reset the hospital's privacy accounting. Put the original ledger back "
                "from backup"
            )
        return
    if existed:
        logger.warning(
            "privacy ledger %s had no anchor; writing %s from the ledger", ledger, anchor
        )
    record = {
        "format": _ANCHOR_FORMAT,
        "ledger": ledger.name,
        "ledger_id": identity.ledger_id,
        "created_at": identity.created_at,
        "delta": identity.delta,
    }
    anchor.parent.mkdir(parents=True, exist_ok=True)
    temporary = anchor.with_name(f"{anchor.name}.{uuid.uuid4().hex}.tmp")
    with temporary.open("w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, anchor)


def _missing_message(ledger: Path, anchor: Path) -> str:
    try:
        created = json.loads(anchor.read_text(encoding="utf-8")).get("created_at", "?")
    except (OSError, ValueError, AttributeError):
        created = "?"
    return (
        f"the privacy ledger {ledger} is missing or empty, but its anchor {anchor} records that "
        f"one was created on {created}; starting a new ledger would reset the hospital's "
        "privacy accounting to zero. Restore the ledger from backup (or fix the path in "
        "site.toml). Only if the privacy officer decides to start the accounting afresh, "
        "delete the anchor as well"
    )
