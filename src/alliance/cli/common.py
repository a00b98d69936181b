"""What every ``alliance`` command shares: the consoles, the verbose flag and error handling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from alliance.core.errors import AllianceError, ConfigError, DataError

__all__ = ["console", "err", "errors", "state"]

console = Console()
# Errors and warnings are never wrapped: a long path in them stays one path a user can copy.
err = Console(stderr=True, soft_wrap=True)
state = {"verbose": False}


@contextmanager
def errors() -> Iterator[None]:
    """Print an :class:`AllianceError` as one line and exit 2 (bad input) or 1 (the rest)."""
    try:
        yield
    except AllianceError as exc:
        if state["verbose"]:
            raise
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        # Bad input (a setting, a file, a code) exits 2; a model or federation failure 1.
        raise typer.Exit(2 if isinstance(exc, ConfigError | DataError) else 1) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
