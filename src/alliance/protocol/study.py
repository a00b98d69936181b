"""A study as the consortium writes it and every hospital approves it: ``study.toml``.

The study file is the contract between the consortium and each hospital. The coordinator runs
exactly the submitted text and serves it to sites; a site computes the sha256 of the text it
received and trains only if that hash is in its own list of approved studies, so a study cannot
be changed after a hospital's ethics board read it. ``alliance study hash study.toml`` prints the
hash a hospital puts in its policy. Example::

    [study]
    id = "rare-disease-2026"
    title = "Rare-disease differential diagnosis"
    rounds = 5
    seed = 7
    sites = ["west-china", "peking-union"]   # or "all": every site of the consortium
    quorum = 2                                # fewest updates that close a round (default:
                                              # all sites; the threshold under secure aggregation)
    round_timeout_s = 600                     # a round closes then if the quorum answered

    [strategy]
    name = "fedavg"
    server_lr = 2.0

    [plan]
    local_epochs = 1
    batch_size = 64
    learning_rate = 0.01

    [model]
    kind = "phenotype-ranker"
    dim = 32

    [aggregation]                             # optional; default: synchronous rounds
    mode = "async"                            # FedBuff: a version every `buffer` updates
    buffer = 6
    staleness_exponent = 0.5
    max_staleness = 10

Every field is checked with bounds, so that a study that cannot run gets no hash a hospital could
approve: ``id`` (and each site id) is matched whole against 1-63 lowercase letters, digits or
'-'; ``title`` is one line of at most :data:`MAX_TITLE` characters; ``rounds`` is 1 to
:data:`MAX_ROUNDS`; ``seed`` 0 to :data:`MAX_SEED`; ``quorum`` 1 to the invited sites;
``round_timeout_s`` a finite number in (0, :data:`MAX_TIMEOUT_S`]. The ``[model]`` and
``[strategy]`` options are checked by :func:`alliance.coordinator.study_check.load_study`, which
``alliance study hash``, ``alliance study submit`` and the coordinator all call.

``[privacy]`` and ``[secure_aggregation]`` are described in :mod:`alliance.protocol.privacy`,
``[aggregation]`` in :mod:`alliance.protocol.aggregation` (asynchronous aggregation cannot be
combined with secure aggregation).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alliance.core.config import parse_toml
from alliance.core.errors import ConfigError
from alliance.protocol.aggregation import AggregationPlan
from alliance.protocol.messages import TrainingPlan
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan

__all__ = [
    "ALL_SITES",
    "MAX_ROUNDS",
    "MAX_SEED",
    "MAX_SITES",
    "MAX_TIMEOUT_S",
    "MAX_TITLE",
    "StudySpec",
    "is_study_id",
    "spec_hash",
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
_STUDY_KEYS = {"id", "title", "rounds", "seed", "sites", "quorum", "round_timeout_s"}


def is_study_id(value: object) -> bool:
    """Whether ``value`` is a study (or site) id: 1-63 lowercase letters, digits or '-', not
    starting with '-', and nothing else (no trailing newline)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def spec_hash(text: str) -> str:
    """The hash a hospital approves: ``sha256:`` and the hex digest of the UTF-8 text."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StudySpec:
    """A parsed, validated study file.

    Parameters
    ----------
    study_id
        Unique id (lowercase letters, digits, '-').
    title
        What the study is for.
    rounds
        Number of federated rounds.
    seed
        Seeds model initialisation and every site's shuffling.
    sites
        Invited site ids, or ``None`` for every site of the consortium.
    quorum
        Fewest updates that may close a round.
    round_timeout_s
        Seconds after which a round closes with the updates received, if the quorum answered.
    strategy
        Strategy name and options (``{"name": "fedavg", "server_lr": 2.0}``).
    plan
        The local training plan.
    model
        Model kind and options (``{"kind": "phenotype-ranker", "dim": 32}``).
    privacy
        Differential privacy (``[privacy]``, see :mod:`alliance.protocol.privacy`).
    secagg
        Secure aggregation (``[secure_aggregation]``).
    aggregation
        Synchronous rounds (default) or buffered, staleness-aware asynchronous aggregation
        (``[aggregation]``, see :mod:`alliance.protocol.aggregation`).
    text
        The file's text exactly as written; its hash is what hospitals approve.
    """

    study_id: str
    title: str
    rounds: int
    seed: int
    sites: tuple[str, ...] | None
    quorum: int
    round_timeout_s: float
    strategy: Mapping[str, Any]
    plan: TrainingPlan
    model: Mapping[str, Any]
    text: str = field(repr=False)
    privacy: PrivacyPlan = field(default_factory=PrivacyPlan)
    secagg: SecAggPlan = field(default_factory=SecAggPlan)
    aggregation: AggregationPlan = field(default_factory=AggregationPlan)

    @property
    def hash(self) -> str:
        """``sha256:<hex>`` of :attr:`text`."""
        return spec_hash(self.text)

    @property
    def strategy_options(self) -> dict[str, Any]:
        """The strategy's options without its name."""
        return {k: v for k, v in self.strategy.items() if k != "name"}

    @classmethod
    def parse(cls, text: str, *, where: str = "study file") -> StudySpec:
        """Parse and validate a study file's text.

        Raises
        ------
        ConfigError
            Naming the field that is missing or wrong and what it accepts.
        """
        raw = parse_toml(text, where=where)
        study = _table(raw, "study", where) or {}
        unknown = set(study) - _STUDY_KEYS
        if unknown:
            raise ConfigError(f"{where}: [study] has unknown keys {sorted(unknown)}")
        study_id = study.get("id")
        if not isinstance(study_id, str) or not is_study_id(study_id):
            raise ConfigError(
                f"{where}: [study] id must be 1-63 lowercase letters, digits or '-' (not "
                f"starting with '-'), got {study_id!r}"
            )
        title = _title(study.get("title", study_id), where)
        rounds = _int(study, "rounds", where, default=None, minimum=1, maximum=MAX_ROUNDS)
        seed = _int(study, "seed", where, default=0, minimum=0, maximum=MAX_SEED)
        sites = _sites(study.get("sites", ALL_SITES), where)
        quorum = _int(
            study,
            "quorum",
            where,
            default=len(sites) if sites else 1,
            minimum=1,
            maximum=MAX_SITES,
        )
        if sites is not None and quorum > len(sites):
            raise ConfigError(
                f"{where}: [study] quorum {quorum} is larger than the {len(sites)} invited sites; "
                f"use at most {len(sites)}"
            )
        timeout = _timeout(study.get("round_timeout_s", 600), where)
        strategy = dict(_table(raw, "strategy", where, required=False) or {"name": "fedavg"})
        if not isinstance(strategy.get("name", "fedavg"), str):
            raise ConfigError(f"{where}: [strategy] name must be a string such as 'fedavg'")
        strategy.setdefault("name", "fedavg")
        plan_raw = dict(_table(raw, "plan", where, required=False) or {})
        plan_raw.setdefault("seed", seed)
        defaults = TrainingPlan()
        for key in TrainingPlan.__dataclass_fields__:
            plan_raw.setdefault(key, getattr(defaults, key))
        try:
            plan = TrainingPlan.from_json(plan_raw)
        except Exception as exc:
            raise ConfigError(f"{where}: [plan] {exc}") from None
        model = dict(_table(raw, "model", where, required=False) or {})
        model.setdefault("kind", "phenotype-ranker")
        if not isinstance(model["kind"], str):
            raise ConfigError(
                f"{where}: [model] kind must be a string such as 'phenotype-ranker', "
                f"got {model['kind']!r}"
            )
        extra = set(raw) - {
            "study",
            "strategy",
            "plan",
            "model",
            "privacy",
            "secure_aggregation",
            "aggregation",
        }
        if extra:
            raise ConfigError(f"{where}: unknown tables {sorted(extra)}")
        try:
            privacy = PrivacyPlan.from_table(
                _table(raw, "privacy", where, required=False), rounds=rounds
            )
            secagg = SecAggPlan.from_table(_table(raw, "secure_aggregation", where, required=False))
            aggregation = AggregationPlan.from_table(
                _table(raw, "aggregation", where, required=False),
                n_sites=None if sites is None else len(sites),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if aggregation.is_async and secagg.enabled:
            raise ConfigError(
                f'{where}: [aggregation] mode = "async" cannot be combined with '
                "[secure_aggregation]: the masks cancel only within one cohort that answers the "
                'same round; use mode = "sync" or disable secure aggregation'
            )
        if secagg.enabled and sites is not None and len(sites) < 3:
            raise ConfigError(
                f"{where}: [secure_aggregation] needs at least 3 invited sites (with 2, each "
                "site could subtract its own update from the sum); invite more or disable it"
            )
        if secagg.enabled and sites is not None and "quorum" not in study:
            # A secure round completes with any threshold-sized set of survivors.
            quorum = secagg.threshold_for(len(sites))
        if secagg.enabled and secagg.threshold is not None and secagg.threshold > quorum:
            quorum = secagg.threshold
        return cls(
            study_id=study_id,
            title=title,
            rounds=rounds,
            seed=seed,
            sites=sites,
            quorum=quorum,
            round_timeout_s=float(timeout),
            strategy=strategy,
            plan=plan,
            model=model,
            text=text,
            privacy=privacy,
            secagg=secagg,
            aggregation=aggregation,
        )


def _table(
    raw: Mapping[str, Any], name: str, where: str, *, required: bool = True
) -> Mapping[str, Any] | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise ConfigError(f"{where}: the [{name}] table is missing")
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return value


def _int(
    table: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: int | None,
    minimum: int,
    maximum: int,
) -> int:
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"{where}: [study] {key} is required")
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise ConfigError(
            f"{where}: [study] {key} must be an integer in [{minimum}, {maximum}], got {value!r}"
        )
    return value


def _timeout(value: Any, where: str) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 < value <= MAX_TIMEOUT_S
    ):
        raise ConfigError(
            f"{where}: [study] round_timeout_s must be a finite number in (0, {MAX_TIMEOUT_S:g}] "
            f"seconds, got {value!r}"
        )
    return float(value)


def _title(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TITLE:
        raise ConfigError(
            f"{where}: [study] title must be a non-empty string of at most {MAX_TITLE} "
            f"characters, got {value!r:.80}"
        )
    if _CONTROL.search(value):
        raise ConfigError(
            f"{where}: [study] title must be one line without control characters, got {value!r}"
        )
    return value


def _sites(value: Any, where: str) -> tuple[str, ...] | None:
    if value == ALL_SITES:
        return None
    if (
        not isinstance(value, list)
        or not value
        or len(value) > MAX_SITES
        or not all(is_study_id(s) for s in value)
    ):
        raise ConfigError(
            f'{where}: [study] sites must be "all" or a list of 1 to {MAX_SITES} site ids '
            f"(lowercase letters, digits or '-'), got {value!r:.200}"
        )
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: [study] sites lists a site twice")
    return tuple(sorted(value))
