"""Named crash points, so that tests can kill a process at an exact instant of its work.

Crash safety is a claim about every instant, and the instants that matter (an update received
but not yet committed, a round aggregated but its checkpoint not yet written) are too short to
hit with a timer. A process that passes :func:`crash_point` ``"name"`` kills itself with SIGKILL
(no cleanup, no flushing, exactly like ``kill -9`` or a power cut) when the environment variable
``ALLIANCE_CRASH_AT`` is ``name`` or ``name:N`` (the N-th time it passes there). Unset, which
is always the case outside tests, a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["CRASH_ENV", "crash_point"]

CRASH_ENV = "ALLIANCE_CRASH_AT"
_passes: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if ``ALLIANCE_CRASH_AT`` names this point (and pass)."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _passes[name] += 1
    if _passes[name] >= (int(nth) if nth.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
