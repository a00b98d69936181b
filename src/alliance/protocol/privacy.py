"""What a study promises about privacy, as every hospital approves it and every task carries it.

Two tables of ``study.toml`` become two plans, sent with each
:class:`~alliance.protocol.messages.TrainTask` and checked by each site against the study it
approved (a coordinator cannot quietly lower the noise)::

    [privacy]
    mechanism = "dp-sgd"        # "none" (default) or patient-level DP-SGD at every site
    target_epsilon = 3.0        # each site calibrates its noise from its size, rounds, sampling
    # noise_multiplier = 1.1    # ...or a fixed noise multiplier instead of a target
    delta = 1e-5
    max_grad_norm = 1.0         # per-patient clipping bound
    client_clip = 0.5           # optional client-level DP: clip each site's update to this L2 norm
    client_noise_multiplier = 1.0

    [secure_aggregation]
    enabled = true              # the coordinator sees only the sum of the sites' updates
    threshold = 8               # fewest surviving sites (default: n - floor(n/3))
    neighbours = 0              # 0: every pair masks (SecAgg); k: k neighbours (SecAgg+)
    clip_range = 1.0            # each update coordinate is clipped to [-clip_range, clip_range]
    value_bits = 15             # bits per quantised coordinate (levels: 2**(bits-1) - 1 per side)
    max_weight = 4096           # cases counted per site in the weighted mean (larger sites capped)
    stage_timeout_s = 120       # a key/share/unmask stage waits this long for slow sites
    key_batch = 1               # rounds one key set-up serves (1: fresh keys every round); with
                                # R > 1 a site on files answers R - 1 of every R rounds with one
                                # message (alliance.secagg.batched, docs/secure-aggregation.md)

Patient-level DP is accounted by each hospital in its own ledger (it knows its size); the
client-level guarantee is the consortium's and is computed from these numbers alone, with the
noise calibrated to the fewest sites that may survive a round (``threshold``) when secure
aggregation spreads the noise across sites.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from alliance.core.errors import ConfigError, ProtocolError
from alliance.secagg.batched import MAX_KEY_BATCH
from alliance.secagg.graph import default_threshold

__all__ = ["PrivacyPlan", "SecAggPlan", "default_threshold"]

_MECHANISMS = ("none", "dp-sgd")


@dataclass(frozen=True)
class PrivacyPlan:
    """Differential privacy of a study.

    Parameters
    ----------
    mechanism
        ``"none"`` or ``"dp-sgd"`` (per-patient clipping and Gaussian noise at every site).
    target_epsilon
        ε each site spends on the whole study; the site calibrates its noise multiplier from its
        number of cases, the batch size, epochs and ``rounds``. Exclusive with
        ``noise_multiplier``.
    noise_multiplier
        A fixed σ (noise std / clipping bound) for every site instead of a target.
    delta
        δ of the (ε, δ) guarantee.
    max_grad_norm
        Per-patient gradient clipping bound C.
    rounds
        Rounds of the study (the site's calibration spreads ``target_epsilon`` over them).
    client_clip, client_noise_multiplier
        Client-level DP: each site's update is clipped to ``client_clip`` and Gaussian noise of
        std ``client_noise_multiplier · client_clip`` is added to the sum (spread over the sites
        under secure aggregation). Both or neither.
    """

    mechanism: str = "none"
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    rounds: int = 1
    client_clip: float | None = None
    client_noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        if self.mechanism not in _MECHANISMS:
            raise ConfigError(
                f"[privacy] mechanism must be one of {list(_MECHANISMS)}, got {self.mechanism!r}"
            )
        if self.mechanism == "dp-sgd" and (self.target_epsilon is None) == (
            self.noise_multiplier is None
        ):
            raise ConfigError(
                "[privacy] mechanism 'dp-sgd' needs exactly one of target_epsilon or "
                "noise_multiplier"
            )
        if self.mechanism == "none" and (
            self.target_epsilon is not None or self.noise_multiplier is not None
        ):
            raise ConfigError(
                "[privacy] target_epsilon/noise_multiplier are set but mechanism is 'none'; "
                "set mechanism = 'dp-sgd'"
            )
        _positive(self.target_epsilon, "target_epsilon")
        _positive(self.noise_multiplier, "noise_multiplier", allow_zero=True)
        _positive(self.max_grad_norm, "max_grad_norm")
        if not (_is_number(self.delta) and 0 < self.delta < 1):
            raise ConfigError(f"[privacy] delta must be in (0, 1), got {self.delta!r}")
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 1:
            raise ConfigError(f"[privacy] rounds must be an integer >= 1, got {self.rounds!r}")
        if (self.client_clip is None) != (self.client_noise_multiplier is None):
            raise ConfigError(
                "[privacy] client-level DP needs both client_clip and client_noise_multiplier"
            )
        _positive(self.client_clip, "client_clip")
        _positive(self.client_noise_multiplier, "client_noise_multiplier", allow_zero=True)

    @property
    def patient_level(self) -> bool:
        """Whether sites run DP-SGD."""
        return self.mechanism == "dp-sgd"

    @property
    def client_level(self) -> bool:
        """Whether each site's update is clipped and noised as a whole."""
        return self.client_clip is not None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (carried in every task)."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> PrivacyPlan:
        """Validate a plan received in a message."""
        plan: PrivacyPlan = _from_json(cls, raw, "privacy plan")
        return plan

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None, *, rounds: int) -> PrivacyPlan:
        """Build from the study file's ``[privacy]`` table (``None``: no DP)."""
        raw = dict(table or {})
        unknown = set(raw) - set(cls.__dataclass_fields__) | ({"rounds"} & set(raw))
        if unknown:
            raise ConfigError(
                f"[privacy] unknown keys {sorted(unknown)}; accepted: "
                f"{sorted(set(cls.__dataclass_fields__) - {'rounds'})}"
            )
        raw["rounds"] = rounds
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ConfigError(f"[privacy] {exc}") from None


@dataclass(frozen=True)
class SecAggPlan:
    """Secure aggregation of a study (see the module docstring for each field).

    ``key_batch = 1`` (the default) is left out of :meth:`to_json`, so a study without key
    batches is carried in exactly the bytes it was before the option existed.
    """

    enabled: bool = False
    threshold: int | None = None
    neighbours: int = 0
    clip_range: float = 1.0
    value_bits: int = 15
    max_weight: int = 4096
    stage_timeout_s: float = 120.0
    key_batch: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("[secure_aggregation] enabled must be true or false")
        batch = self.key_batch
        if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_KEY_BATCH:
            raise ConfigError(
                f"[secure_aggregation] key_batch must be an integer in [1, {MAX_KEY_BATCH}] (how "
                f"many rounds one key set-up serves), got {batch!r}; use 1 for fresh keys every "
                "round, or about the number of rounds between expected changes of the cohort"
            )
        if self.threshold is not None and (
            not isinstance(self.threshold, int) or isinstance(self.threshold, bool)
        ):
            raise ConfigError("[secure_aggregation] threshold must be an integer")
        if self.threshold is not None and self.threshold < 2:
            raise ConfigError(
                f"[secure_aggregation] threshold must be >= 2 (a sum of one site is that site's "
                f"update), got {self.threshold}"
            )
        for key, low, high in (("neighbours", 0, 10_000), ("value_bits", 8, 32)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(
                    f"[secure_aggregation] {key} must be an integer in [{low}, {high}], "
                    f"got {value!r}"
                )
        if (
            not isinstance(self.max_weight, int)
            or isinstance(self.max_weight, bool)
            or not 1 <= self.max_weight <= MAX_WEIGHT
        ):
            raise ConfigError(
                f"[secure_aggregation] max_weight must be an integer in [1, {MAX_WEIGHT}], "
                f"got {self.max_weight!r}"
            )
        _positive(self.clip_range, "clip_range", table="secure_aggregation")
        _positive(self.stage_timeout_s, "stage_timeout_s", table="secure_aggregation")

    def threshold_for(self, n_sites: int) -> int:
        """Fewest sites whose sum a round with ``n_sites`` in its cohort may reveal (also what
        client-level noise is calibrated to)."""
        wanted = default_threshold(n_sites) if self.threshold is None else self.threshold
        return min(wanted, n_sites)

    def share_threshold(self, n_sites: int) -> int | None:
        """The Shamir threshold to give the masking protocol: :meth:`threshold_for` when every
        pair masks; with ``neighbours`` the threshold counts within a neighbourhood, so the
        protocol's own default applies unless ``threshold`` is set."""
        return self.threshold if self.neighbours else self.threshold_for(n_sites)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (carried in every task); ``key_batch`` only when it is not 1."""
        out = asdict(self)
        if self.key_batch == 1:
            del out["key_batch"]
        return out

    @classmethod
    def from_json(cls, raw: Any) -> SecAggPlan:
        """Validate a plan received in a message (a missing ``key_batch`` is 1)."""
        if isinstance(raw, dict) and "key_batch" not in raw:
            raw = {**raw, "key_batch": 1}
        plan: SecAggPlan = _from_json(cls, raw, "secure aggregation plan")
        return plan

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> SecAggPlan:
        """Build from the study file's ``[secure_aggregation]`` table (``None``: off)."""
        raw = dict(table or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"[secure_aggregation] unknown keys {sorted(unknown)}; accepted: "
                f"{sorted(cls.__dataclass_fields__)}"
            )
        if table is not None:
            raw.setdefault("enabled", True)
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ConfigError(f"[secure_aggregation] {exc}") from None


def _from_json(cls: Any, raw: Any, what: str) -> Any:
    if not isinstance(raw, dict) or set(raw) != set(cls.__dataclass_fields__):
        raise ProtocolError(
            f"{what} must have exactly the fields {sorted(cls.__dataclass_fields__)}"
        )
    try:
        return cls(**raw)
    except ConfigError as exc:
        raise ProtocolError(f"{what}: {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: Upper bounds of the numbers of both tables: beyond them a study cannot run sensibly.
MAXIMA = {
    "target_epsilon": 100.0,
    "noise_multiplier": 1000.0,
    "client_noise_multiplier": 1000.0,
    "max_grad_norm": 1e6,
    "client_clip": 1e6,
    "clip_range": 1e6,
    "stage_timeout_s": 7 * 24 * 3600.0,
}
MAX_WEIGHT = 2**20


def _positive(value: Any, key: str, *, allow_zero: bool = False, table: str = "privacy") -> None:
    if value is None:
        return
    top = MAXIMA[key]
    if (
        not _is_number(value)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
        or value > top
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(
            f"[{table}] {key} must be a finite number {bound} and <= {top:g}, got {value!r}"
        )
