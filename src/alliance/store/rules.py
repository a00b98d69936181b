"""The rules both coordinator stores enforce, and the errors they raise, written once.

:class:`~alliance.store.memory.MemoryStore` and :class:`~alliance.store.sql.SqlStore` read their
state in their own way (dictionaries, SQL) and then decide with these functions, so neither a
rule nor its wording can drift between the two; the contract suite checks that they also agree
in effect. Functions named ``check_*`` raise; the others build the exception for the caller to
raise, so every ``raise`` stays visible at its call site.
"""

from __future__ import annotations

from typing import NoReturn

from alliance.core.errors import ConfigError, FederationError, ProtocolError
from alliance.store.state import DuplicateUpdate

__all__ = [
    "cannot_close",
    "check_can_open",
    "check_key",
    "check_new_version",
    "deadline_not_open",
    "no_model",
    "no_update",
    "no_version",
    "nonce_reused",
    "not_open",
    "raise_resubmitted",
    "released",
    "study_exists",
    "unknown_study",
    "update_where",
]


def update_where(study_id: str, round_: int, site: str) -> str:
    """How messages name one site's update."""
    return f"update from site {site!r} for round {round_} of study {study_id!r}"


def unknown_study(study_id: str) -> ConfigError:
    """A method needs a study that was never added."""
    return ConfigError(f"unknown study {study_id!r}: add it with add_study first")


def check_key(value: str, what: str) -> None:
    """Raise ``ConfigError`` if a key to store holds a NUL character.

    PostgreSQL cannot keep NUL in text, so no backend stores such a key, and every backend
    answers a key with NUL as absent.
    """
    if "\x00" in value:
        raise ConfigError(
            f"{what} {value!r} contains a NUL character, which the coordinator store cannot "
            "keep; use printable characters"
        )


def study_exists(study_id: str) -> ConfigError:
    """``add_study`` with an id already taken."""
    return ConfigError(
        f"study {study_id!r} already exists in the coordinator store; submit the study under "
        "another id"
    )


def no_model(study_id: str) -> ConfigError:
    """``latest_model`` before ``save_initial_model``."""
    return ConfigError(
        f"study {study_id!r} has no model yet; store version 0 with save_initial_model before "
        "running rounds"
    )


def no_version(study_id: str, version: int) -> ConfigError:
    """``model`` of a version that was never stored."""
    return ConfigError(
        f"study {study_id!r} has no model version {version}; list the study's rounds to see "
        "which versions exist"
    )


def check_can_open(
    study_id: str,
    round_: int,
    *,
    newest: int,
    newest_open: bool,
    version_exists: bool,
    model_version: int,
) -> None:
    """Raise ``FederationError`` unless ``round_`` may open now.

    Rounds are numbered 1, 2, ... in order; one is open at a time; each sends a stored model
    version. ``newest`` is the newest round's number (0 before the first).
    """
    if newest_open:
        raise FederationError(
            f"study {study_id!r}: round {newest} is still open; close it before opening "
            f"round {round_}"
        )
    if 1 <= round_ <= newest:
        raise FederationError(
            f"study {study_id!r}: round {round_} already exists; the next round is {newest + 1}"
        )
    if round_ != newest + 1:
        raise FederationError(
            f"study {study_id!r}: cannot open round {round_}, rounds are numbered in order "
            f"from 1 and the next one is {newest + 1}"
        )
    if not version_exists:
        raise FederationError(
            f"study {study_id!r}: round {round_} would send model version {model_version}, "
            "which is not stored; open rounds on the latest stored version"
        )


def deadline_not_open(study_id: str, round_: int) -> FederationError:
    """``set_deadline`` on a round that is not open."""
    return FederationError(
        f"cannot move the deadline of round {round_} of study {study_id!r}: it is not open; "
        "only the open round has a deadline to move"
    )


def raise_resubmitted(where: str, stored: str, digest: str) -> NoReturn:
    """A site's second update of a round: a duplicate if the digests match, else refused.

    Raises
    ------
    DuplicateUpdate
        ``digest`` equals the stored update's: answer "already received", count nothing.
    ProtocolError
        The site sent a different update; the first one counts.
    """
    if stored == digest:
        raise DuplicateUpdate(f"{where} was already received (digest {digest}); not counted again")
    raise ProtocolError(
        f"{where}: the site already sent a different update this round (digest {stored}, now "
        f"{digest}); a site sends one update per round and the first one counts"
    )


def not_open(where: str, exists: bool) -> ProtocolError:
    """An update for a round that is closed (``exists``) or was never opened."""
    state = "is closed" if exists else "was never opened"
    return ProtocolError(
        f"{where} refused: the round {state}; updates are taken for the open round only"
    )


def nonce_reused(where: str, nonce: str) -> ProtocolError:
    """An update whose nonce an accepted message already carried."""
    return ProtocolError(
        f"{where} refused: nonce {nonce} was already used by an accepted message; a replayed "
        "message is never counted, the site must send a fresh message"
    )


def no_update(where: str) -> FederationError:
    """``load_delta`` for a site that sent nothing this round."""
    return FederationError(f"no {where}; list the round's updates with updates()")


def released(where: str) -> FederationError:
    """``load_delta`` after the round closed and released its payloads."""
    return FederationError(
        f"the payload of the {where} was released when the round closed; load deltas before "
        "close_round"
    )


def cannot_close(study_id: str, round_: int) -> FederationError:
    """``close_round`` of a round that is not open."""
    return FederationError(
        f"study {study_id!r}: round {round_} is not open, so it cannot be closed; close the "
        "study's open round (see current_round)"
    )


def check_new_version(study_id: str, new_version: int, latest: int | None) -> None:
    """Raise ``FederationError`` unless ``new_version`` is newer than every stored version."""
    if latest is not None and new_version <= latest:
        raise FederationError(
            f"study {study_id!r}: model version {new_version} is not newer than the stored "
            f"version {latest}; close the round as version {latest + 1}"
        )
