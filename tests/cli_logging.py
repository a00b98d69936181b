"""A fixture for tests that run ``alliance`` commands in-process.

The root command and the service commands call
:func:`~alliance.core.logging.configure_logging`, which replaces the root handlers and sets the
levels of the ``alliance`` and ``httpx`` loggers for the process; run in-process, that would
reach the tests that follow (a ``caplog`` at DEBUG would no longer see ``alliance`` records).
``tests/conftest.py`` makes it apply to every test: which file a worker ran before must not
decide whether a test's ``caplog`` sees the package's records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

__all__ = ["kept_logging"]


@pytest.fixture(autouse=True)
def kept_logging() -> Iterator[None]:
    """Restore the root handlers and the levels that ``configure_logging`` changes."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    names = ("", "alliance", "httpx")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
