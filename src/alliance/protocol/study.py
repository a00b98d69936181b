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
    optimiser = "adam"                        # default; or "sgd" (with momentum in [0, 1))

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
``round_timeout_s`` a finite number in (0, :data:`MAX_TIMEOUT_S`]; ``[plan]`` as
:class:`~alliance.protocol.messages.TrainingPlan` bounds it (``optimiser`` ``"adam"`` or
``"sgd"``, ``momentum`` for SGD only; a study with patient-level DP-SGD trains with Adam).
``[strategy]`` becomes a :class:`~alliance.protocol.strategy_spec.StrategySpec` and ``[model]`` a
:class:`~alliance.protocol.model_spec.ModelSpec`: typed records that refuse unknown options and
values out of bounds. All of it is checked once, when :class:`StudySpec` is made, whether by
:meth:`StudySpec.parse` (``alliance study hash``, ``alliance study submit``, the coordinator,
every site) or in code (:meth:`StudySpec.build`, the simulation).

The rules that join tables are stated here once: the effective quorum
(:func:`effective_quorum`), and that asynchronous aggregation excludes secure aggregation
(:func:`alliance.protocol.aggregation.check_combination`).

``[privacy]`` and ``[secure_aggregation]`` are described in :mod:`alliance.protocol.privacy`,
``[aggregation]`` in :mod:`alliance.protocol.aggregation` (asynchronous aggregation cannot be
combined with secure aggregation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from alliance.core.config import parse_toml
from alliance.core.errors import ConfigError, ProtocolError
from alliance.protocol.aggregation import AggregationPlan, check_combination
from alliance.protocol.messages import TrainingPlan
from alliance.protocol.model_spec import ModelSpec
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.protocol.strategy_spec import StrategySpec
from alliance.protocol.study_fields import (
    ALL_SITES,
    MAX_ROUNDS,
    MAX_SEED,
    MAX_SITES,
    MAX_TIMEOUT_S,
    MAX_TITLE,
    check_int,
    check_sites,
    check_timeout,
    check_title,
    is_study_id,
    render_study,
)

__all__ = [
    "ALL_SITES",
    "MAX_ROUNDS",
    "MAX_SEED",
    "MAX_SITES",
    "MAX_TIMEOUT_S",
    "MAX_TITLE",
    "StudySpec",
    "effective_quorum",
    "is_study_id",
    "spec_hash",
]

_STUDY_KEYS = {"id", "title", "rounds", "seed", "sites", "quorum", "round_timeout_s"}
_TABLES = ("study", "strategy", "plan", "model", "privacy", "secure_aggregation", "aggregation")


def spec_hash(text: str) -> str:
    """The hash a hospital approves: ``sha256:`` and the hex digest of the UTF-8 text."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def effective_quorum(n_sites: int | None, *, requested: int | None, secagg: SecAggPlan) -> int:
    """Fewest updates that close a round among ``n_sites`` (``None``: not known yet, an open
    invitation): the one statement of the rule.

    ``requested`` (the study's ``quorum``) when set; otherwise every site, or under secure
    aggregation the threshold (:meth:`SecAggPlan.threshold_for`): a secure round completes with
    any threshold-sized set of survivors. With an open invitation and no quorum, one update.
    Under secure aggregation with an explicit ``threshold`` the quorum is at least that
    threshold, bounded by the sites, since fewer survivors can unmask nothing.
    """
    if requested is not None:
        quorum = requested
    elif n_sites is None:
        quorum = 1
    elif secagg.enabled and n_sites > 0:
        quorum = secagg.threshold_for(n_sites)
    else:
        quorum = n_sites
    if secagg.enabled and secagg.threshold is not None:
        floor = secagg.threshold if n_sites is None else min(secagg.threshold, n_sites)
        quorum = max(quorum, floor)
    return quorum


@dataclass(frozen=True)
class StudySpec:
    """A validated study: every field checked, with bounds, when it is made.

    Read a file with :meth:`parse`; build one in code with :meth:`build`. The constructor checks
    every field too (``ConfigError`` naming the table and key).

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
    requested_quorum
        The file's ``quorum``, or ``None`` for the default (:func:`effective_quorum`; the
        resolved value is :attr:`quorum`).
    round_timeout_s
        Seconds after which a round closes with the updates received, if the quorum answered.
    strategy
        The aggregation strategy and its options.
    plan
        The local training plan.
    model
        The model kind and its options.
    text
        The file's text exactly as written; its hash is what hospitals approve.
    privacy
        Differential privacy (``[privacy]``, see :mod:`alliance.protocol.privacy`); its
        ``rounds`` are the study's.
    secagg
        Secure aggregation (``[secure_aggregation]``).
    aggregation
        Synchronous rounds (default) or buffered, staleness-aware asynchronous aggregation
        (``[aggregation]``, see :mod:`alliance.protocol.aggregation`).
    """

    study_id: str
    title: str
    rounds: int
    seed: int
    sites: tuple[str, ...] | None
    requested_quorum: int | None
    round_timeout_s: float
    strategy: StrategySpec
    plan: TrainingPlan
    model: ModelSpec
    text: str = field(repr=False)
    privacy: PrivacyPlan = field(default_factory=PrivacyPlan)
    secagg: SecAggPlan = field(default_factory=SecAggPlan)
    aggregation: AggregationPlan = field(default_factory=AggregationPlan)

    def __post_init__(self) -> None:
        if not is_study_id(self.study_id):
            raise ConfigError(
                f"[study] id must be 1-63 lowercase letters, digits or '-' (not "
                f"starting with '-'), got {self.study_id!r}"
            )
        check_title(self.title)
        check_int("rounds", self.rounds, minimum=1, maximum=MAX_ROUNDS)
        check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        object.__setattr__(self, "sites", check_sites(self.sites))
        object.__setattr__(self, "round_timeout_s", check_timeout(self.round_timeout_s))
        for name, kind in (
            ("strategy", StrategySpec),
            ("plan", TrainingPlan),
            ("model", ModelSpec),
            ("privacy", PrivacyPlan),
            ("secagg", SecAggPlan),
            ("aggregation", AggregationPlan),
        ):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        try:
            TrainingPlan.from_json(self.plan.to_json())  # a plan built in code, checked as read
        except ProtocolError as exc:
            raise ConfigError(f"[plan] {exc}") from None
        if self.privacy.patient_level and self.plan.optimiser != "adam":
            raise ConfigError(
                f'[plan] optimiser = "{self.plan.optimiser}" cannot train this study: its '
                '[privacy] DP-SGD steps use Adam; remove optimiser (or set "adam")'
            )
        if self.privacy.rounds != self.rounds:
            raise ConfigError(
                f"[privacy] is calibrated for {self.privacy.rounds} rounds but the study has "
                f"{self.rounds}; give the privacy plan the study's rounds"
            )
        self._check_sites_rules()

    def _check_sites_rules(self) -> None:
        """The rules that join ``[study]`` to the other tables, each stated once."""
        n = None if self.sites is None else len(self.sites)
        if self.requested_quorum is not None:
            check_int("quorum", self.requested_quorum, minimum=1, maximum=MAX_SITES)
            if n is not None and self.requested_quorum > n:
                raise ConfigError(
                    f"[study] quorum {self.requested_quorum} is larger than the {n} invited "
                    f"sites; use at most {n}"
                )
        check_combination(self.aggregation, self.secagg)
        if n is None:
            return
        self.aggregation.check_sites(n)
        if self.secagg.enabled and n < 3:
            raise ConfigError(
                "[secure_aggregation] needs at least 3 invited sites (with 2, each "
                "site could subtract its own update from the sum); invite more or disable it"
            )
        threshold = self.secagg.threshold
        if self.secagg.enabled and threshold is not None and threshold > n:
            raise ConfigError(
                f"[secure_aggregation] threshold {threshold} is larger than the {n} invited "
                f"sites, so no round could be unmasked; use at most {n}"
            )

    @property
    def hash(self) -> str:
        """``sha256:<hex>`` of :attr:`text`."""
        return spec_hash(self.text)

    @property
    def quorum(self) -> int:
        """Fewest updates that close a round of the invited sites (:func:`effective_quorum`)."""
        return self.quorum_for(None if self.sites is None else len(self.sites))

    def quorum_for(self, n_sites: int | None) -> int:
        """Fewest updates that close a round among ``n_sites`` (:func:`effective_quorum`)."""
        return effective_quorum(n_sites, requested=self.requested_quorum, secagg=self.secagg)

    @classmethod
    def build(
        cls,
        *,
        study_id: str,
        rounds: int,
        title: str | None = None,
        seed: int = 0,
        sites: tuple[str, ...] | list[str] | None = None,
        quorum: int | None = None,
        round_timeout_s: float = 600.0,
        strategy: StrategySpec | None = None,
        plan: TrainingPlan | None = None,
        model: ModelSpec | None = None,
        privacy: PrivacyPlan | None = None,
        secagg: SecAggPlan | None = None,
        aggregation: AggregationPlan | None = None,
    ) -> StudySpec:
        """A study made in code, with the same checks as a file and the text of one.

        Defaults are those of a study file: the title is the id, the plan is
        :class:`TrainingPlan` seeded with ``seed``, FedAvg, the ranker, no privacy, synchronous
        rounds; ``privacy`` is given the study's ``rounds``. :attr:`text` is the study written
        as TOML, so :meth:`parse` of it gives this spec back and :attr:`hash` is the hash a
        hospital would approve for that file.

        Raises
        ------
        ConfigError
            ``[table] key ...`` for any field out of its bounds or rule broken.
        """
        check_int("rounds", rounds, minimum=1, maximum=MAX_ROUNDS)  # before privacy takes it
        fields_: dict[str, Any] = {
            "study_id": study_id,
            "title": study_id if title is None else title,
            "rounds": rounds,
            "seed": seed,
            "sites": None if sites is None else tuple(sites),
            "requested_quorum": quorum,
            "round_timeout_s": round_timeout_s,
            "strategy": strategy or StrategySpec(),
            "plan": plan or TrainingPlan(seed=seed),
            "model": model or ModelSpec(),
            "privacy": replace(privacy or PrivacyPlan(), rounds=rounds),
            "secagg": secagg or SecAggPlan(),
            "aggregation": aggregation or AggregationPlan(),
        }
        cls(**fields_, text="")  # every check, before the text is written
        return cls(**fields_, text=_render(fields_))

    @classmethod
    def parse(cls, text: str, *, where: str = "study file") -> StudySpec:
        """Parse and validate a study file's text.

        Raises
        ------
        ConfigError
            ``where: [table] key ...``: the field that is missing or wrong and what it accepts.
        """
        raw = parse_toml(text, where=where)
        try:
            return cls(**_fields(raw), text=text)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor's arguments from a parsed study file."""
    extra = set(raw) - set(_TABLES)
    if extra:
        raise ConfigError(f"unknown tables {sorted(extra)}")
    study = _table(raw, "study")
    if study is None:
        raise ConfigError("the [study] table is missing")
    unknown = set(study) - _STUDY_KEYS
    if unknown:
        raise ConfigError(f"[study] has unknown keys {sorted(unknown)}")
    study_id = study.get("id")
    if not is_study_id(study_id):
        raise ConfigError(
            f"[study] id must be 1-63 lowercase letters, digits or '-' (not "
            f"starting with '-'), got {study_id!r}"
        )
    rounds = check_int("rounds", study.get("rounds"), minimum=1, maximum=MAX_ROUNDS)
    seed = check_int("seed", study.get("seed", 0), minimum=0, maximum=MAX_SEED)
    sites = check_sites(study.get("sites", ALL_SITES))
    plan_raw = {**TrainingPlan(seed=seed).to_json(), **(_table(raw, "plan") or {})}
    try:
        plan = TrainingPlan.from_json(plan_raw)
    except Exception as exc:
        raise ConfigError(f"[plan] {exc}") from None
    return {
        "study_id": study_id,
        "title": check_title(study.get("title", study_id)),
        "rounds": rounds,
        "seed": seed,
        "sites": sites,
        "requested_quorum": study.get("quorum"),
        "round_timeout_s": check_timeout(study.get("round_timeout_s", 600)),
        "strategy": StrategySpec.from_table(_table(raw, "strategy")),
        "plan": plan,
        "model": ModelSpec.from_table(_table(raw, "model")),
        "privacy": PrivacyPlan.from_table(_table(raw, "privacy"), rounds=rounds),
        "secagg": SecAggPlan.from_table(_table(raw, "secure_aggregation")),
        "aggregation": AggregationPlan.from_table(
            _table(raw, "aggregation"), n_sites=None if sites is None else len(sites)
        ),
    }


def _table(raw: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return dict(value)


def _render(fields_: Mapping[str, Any]) -> str:
    """The study file of a spec built in code."""
    sites = fields_["sites"]
    aggregation: AggregationPlan = fields_["aggregation"]
    privacy: PrivacyPlan = fields_["privacy"]
    secagg: SecAggPlan = fields_["secagg"]
    tables: dict[str, Mapping[str, Any]] = {
        "study": {
            "id": fields_["study_id"],
            "title": fields_["title"],
            "rounds": fields_["rounds"],
            "seed": fields_["seed"],
            "sites": ALL_SITES if sites is None else list(sites),
            "quorum": fields_["requested_quorum"],
            "round_timeout_s": fields_["round_timeout_s"],
        },
        "strategy": fields_["strategy"].to_table(),
        "plan": fields_["plan"].to_json(),
        "model": fields_["model"].to_table(),
    }
    if privacy != PrivacyPlan(rounds=privacy.rounds):
        tables["privacy"] = {k: v for k, v in privacy.to_json().items() if k != "rounds"}
    if secagg.enabled:
        tables["secure_aggregation"] = secagg.to_json()
    if aggregation.is_async:
        tables["aggregation"] = {**asdict(aggregation), "mode": aggregation.mode.value}
    return render_study(tables)
