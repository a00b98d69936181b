"""Logging set-up for entry points; library modules only call ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(*, verbose: bool = False) -> None:
    """Send the package's log records to stderr at INFO (or DEBUG when ``verbose``)."""
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alliance").setLevel(level)
