"""Logging set-up for entry points; library modules only call ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(*, verbose: bool = False, service: bool = False) -> None:
    """Send the package's log records to stderr: warnings (or DEBUG when ``verbose``).

    ``service``: a long-running party (coordinator, site agent) also logs what it does at INFO,
    with timestamps, as an operator of a service expects.
    """
    level = logging.DEBUG if verbose else logging.INFO if service else logging.WARNING
    fmt = "%(levelname)s %(name)s: %(message)s"
    if service:
        fmt = "%(asctime)s " + fmt
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    logging.basicConfig(level=level, format=fmt)
    logging.getLogger("alliance").setLevel(level)
    # One line per HTTP request drowns what the party itself reports.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
