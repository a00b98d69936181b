"""The ``[study]`` table's fields, each checked with bounds, and a study written back as TOML.

:class:`~alliance.protocol.study.StudySpec` checks its fields with these functions whether it was
read from a file or built in code; :func:`render_study` writes the text of a study built in code,
so that it has a hash like any study file and reads back to the same spec.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from alliance.core.errors import ConfigError

__all__ = [
    "ALL_SITES",
    "MAX_ROUNDS",
    "MAX_SEED",
    "MAX_SITES",
    "MAX_TIMEOUT_S",
    "MAX_TITLE",
    "check_int",
    "check_sites",
    "check_timeout",
    "check_title",
    "is_study_id",
    "render_study",
]

#: ``sites = "all"``: every site of the consortium, including hospitals that join later.
ALL_SITES = "all"
#: Bounds of ``[study]``: a study that cannot run must never get a hash an ethics board approves.
MAX_ROUNDS = 10_000
MAX_SEED = 2**63 - 1  # torch and numpy seed from a 64-bit integer
MAX_SITES = 10_000
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: a courier to a hospital on files, and back
MAX_TITLE = 300
# Matched whole (fullmatch): with `$`, "x\n" would pass and reach a URL.
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_study_id(value: object) -> bool:
    """Whether ``value`` is a study (or site) id: 1-63 lowercase letters, digits or '-', not
    starting with '-', and nothing else (no trailing newline)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_int(key: str, value: object, *, minimum: int, maximum: int) -> int:
    """``[study] key``: an integer in ``[minimum, maximum]`` (``None``: required).

    Raises
    ------
    ConfigError
        Naming the key, the range and the value.
    """
    if value is None:
        raise ConfigError(f"[study] {key} is required")
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise ConfigError(
            f"[study] {key} must be an integer in [{minimum}, {maximum}], got {value!r}"
        )
    return value


def check_timeout(value: object) -> float:
    """``[study] round_timeout_s``: a finite number of seconds in (0, :data:`MAX_TIMEOUT_S`].

    Raises
    ------
    ConfigError
        Naming the bounds and the value.
    """
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 < value <= MAX_TIMEOUT_S
    ):
        raise ConfigError(
            f"[study] round_timeout_s must be a finite number in (0, {MAX_TIMEOUT_S:g}] "
            f"seconds, got {value!r}"
        )
    return float(value)


def check_title(value: object) -> str:
    """``[study] title``: one line of 1 to :data:`MAX_TITLE` characters.

    Raises
    ------
    ConfigError
        Saying what a title may be.
    """
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TITLE:
        raise ConfigError(
            f"[study] title must be a non-empty string of at most {MAX_TITLE} "
            f"characters, got {value!r:.80}"
        )
    if _CONTROL.search(value):
        raise ConfigError(
            f"[study] title must be one line without control characters, got {value!r}"
        )
    return value


def check_sites(value: object) -> tuple[str, ...] | None:
    """``[study] sites``: ``"all"`` (``None``) or 1 to :data:`MAX_SITES` distinct site ids,
    returned sorted.

    Raises
    ------
    ConfigError
        Saying what the list may hold.
    """
    if value == ALL_SITES or value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or not value
        or len(value) > MAX_SITES
        or not all(is_study_id(s) for s in value)
    ):
        raise ConfigError(
            f'[study] sites must be "all" or a list of 1 to {MAX_SITES} site ids '
            f"(lowercase letters, digits or '-'), got {value!r:.200}"
        )
    if len(set(value)) != len(value):
        raise ConfigError("[study] sites lists a site twice")
    return tuple(sorted(value))


def render_study(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML text of a study's tables, in order; ``None`` values are left out.

    Values are strings, booleans, integers, finite floats and lists of strings: everything a
    study holds once its records are written as tables.
    """
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_value(v)}" for key, v in table.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"a study holds no value of type {type(value).__name__}")
