"""Which mode a study's rounds run in, decided once from its plans.

Secure aggregation gives :class:`~alliance.coordinator.secure_round.SecureMode`, asynchronous
aggregation :class:`~alliance.coordinator.buffered.BufferedMode`, anything else
:class:`~alliance.coordinator.plain.PlainMode`. The two cannot be combined: the masks cancel only
within one cohort answering the same round. This is the only place that asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from alliance.coordinator.buffered import BufferedMode
from alliance.coordinator.plain import PlainMode
from alliance.coordinator.round import RoundMode
from alliance.coordinator.secure_round import SecureMode
from alliance.protocol.aggregation import AggregationPlan, check_combination
from alliance.protocol.codec import SignatureVerifier
from alliance.protocol.privacy import SecAggPlan

__all__ = ["round_mode"]


def round_mode(
    *,
    federation: str,
    secagg: SecAggPlan,
    aggregation: AggregationPlan,
    peers: SignatureVerifier | None = None,
    offline: Collection[str] = (),
    clock: Callable[[], float] = time.time,
) -> RoundMode:
    """The mode a study's rounds run in: secure, buffered (asynchronous) or plain.

    Raises
    ------
    ConfigError
        Asynchronous aggregation together with secure aggregation.
    """
    check_combination(aggregation, secagg)
    if secagg.enabled:
        # Attempts are numbered from the clock so that a restarted coordinator never reuses one.
        return SecureMode(
            federation=federation,
            plan=secagg,
            peers=peers,
            offline=offline,
            first_attempt=int(clock() * 1000),
        )
    if aggregation.is_async:
        return BufferedMode(aggregation, offline)
    return PlainMode()
