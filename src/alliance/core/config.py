"""Reading the TOML files of a deployment, validated once at the boundary.

Each party has one file (``coordinator.toml``, ``site.toml``, ``operator.toml``) loaded into a
frozen dataclass by its own module; this module holds what they share: reading the file with
errors that name it, typed field access that names the table and key, and paths resolved
relative to the file's own folder, so a bundle can be moved as a whole.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alliance.core.errors import ConfigError

__all__ = ["TomlFile", "parse_toml"]


def parse_toml(text: str, *, where: str) -> dict[str, Any]:
    """Parse TOML text; every way it can fail is a :class:`ConfigError` naming ``where``.

    Raises
    ------
    ConfigError
        Not TOML, or arrays and inline tables nested deeper than the parser can recurse.
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per level of nesting
        raise ConfigError(
            f"{where}: arrays or inline tables are nested too deeply to be read; "
            "a configuration needs only a few levels"
        ) from None


class TomlFile:
    """A parsed TOML file and typed accessors that name ``file: [table] key`` in errors."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.path}: cannot be read: {exc}") from None
        self.data: Mapping[str, Any] = parse_toml(text, where=str(self.path))

    def _where(self, table: str | None, key: str) -> str:
        return f"{self.path}: " + (f"[{table}] {key}" if table else key)

    def _get(self, table: str | None, key: str) -> Any:
        scope: Any = self.data if table is None else self.data.get(table, {})
        if not isinstance(scope, dict):
            raise ConfigError(f"{self.path}: [{table}] must be a table")
        return scope.get(key)

    def string(self, table: str | None, key: str, *, default: str | None = None) -> str:
        """A non-empty string (``default`` if absent; an error if absent without one)."""
        value = self._get(table, key)
        if value is None and default is not None:
            return default
        if value is None:
            raise ConfigError(f"{self._where(table, key)} is missing; it must be set")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self._where(table, key)} must be a non-empty string")
        return value

    def integer(self, table: str | None, key: str, *, default: int, minimum: int = 0) -> int:
        """An integer >= ``minimum``."""
        value = self._get(table, key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{self._where(table, key)} must be an integer >= {minimum}")
        return value

    def number(
        self,
        table: str | None,
        key: str,
        *,
        default: float,
        minimum: float = 0.0,
        maximum: float = math.inf,
        exclusive_minimum: bool = False,
    ) -> float:
        """A finite number in ``[minimum, maximum]`` (``(minimum, ...]`` if exclusive)."""
        value = self._get(table, key)
        if value is None:
            return default
        low_ok = value > minimum if exclusive_minimum else value >= minimum
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not low_ok
            or value > maximum
        ):
            op = ">" if exclusive_minimum else ">="
            upper = "" if maximum == math.inf else f" and <= {maximum}"
            raise ConfigError(f"{self._where(table, key)} must be a number {op} {minimum}{upper}")
        return float(value)

    def strings(self, table: str | None, key: str) -> tuple[str, ...]:
        """A list of strings (empty if absent)."""
        value = self._get(table, key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._where(table, key)} must be a list of strings")
        return tuple(value)

    def path_of(
        self, table: str | None, key: str, *, must_exist: bool = True, optional: bool = False
    ) -> Path | None:
        """A path, relative to this file's folder unless absolute (``""`` = not set)."""
        value = self._get(table, key)
        if optional and (value is None or value == ""):
            return None
        raw = self.string(table, key)
        path = Path(raw) if Path(raw).is_absolute() else self.path.parent / raw
        if must_exist and not path.exists():
            raise ConfigError(f"{self._where(table, key)}: {path} does not exist")
        return path

    def required_path(self, table: str | None, key: str, *, must_exist: bool = True) -> Path:
        """A path that must be set."""
        path = self.path_of(table, key, must_exist=must_exist)
        assert path is not None
        return path
