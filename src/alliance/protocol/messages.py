"""Every message of the federation, typed once.

Each message type converts to and from an :class:`~alliance.protocol.envelope.Envelope`; the
in-memory, file and HTTP transports all carry these same envelopes through the same codec.

What may leave a site is fixed here: a :class:`ModelUpdate` holds a parameter delta whose names
and shapes must match the task's model, the number of training examples, and a flat mapping of
aggregate metrics (numbers only). There is no field in which a case, a case id or a phenotype
could travel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from alliance.core.errors import IntegrityError, ProtocolError
from alliance.protocol.envelope import Envelope, Header, MessageKind
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.secagg.context import RoundContext

__all__ = [
    "MAX_CARD_CHARS",
    "PLAN_OPTIMISERS",
    "REFUSAL_REASONS",
    "FinalEvaluation",
    "ModelUpdate",
    "Refusal",
    "StudyEnd",
    "TrainTask",
    "TrainingPlan",
    "check_same_shapes",
]

Arrays = Mapping[str, npt.NDArray[Any]]
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class TrainingPlan:
    """How a site trains in one round; chosen by the study, checked by each site.

    Parameters
    ----------
    local_epochs
        Passes over the site's training cases per round.
    batch_size
        Cases per optimiser step.
    learning_rate
        Local optimiser step size.
    proximal_mu
        FedProx proximal term weight (0 disables it).
    weight_decay
        L2 penalty of the local optimiser.
    seed
        Base seed; each site derives its own stream from it, the round and its id.
    optimiser
        The local optimiser, one of :data:`PLAN_OPTIMISERS`: ``"adam"`` (default) or ``"sgd"``
        (cheaper per step). A fresh one every round.
    momentum
        SGD's momentum, in [0, 1); 0 for Adam.

    A plan with the default optimiser is written (in a task, a study built in code) without
    ``optimiser`` and ``momentum``, so tasks and study texts from before these fields existed
    read the same and hash the same.
    """

    local_epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 0.01
    proximal_mu: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    optimiser: str = "adam"
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if self.optimiser not in PLAN_OPTIMISERS:
            raise ProtocolError(
                f"training plan field 'optimiser' must be one of {list(PLAN_OPTIMISERS)}, "
                f"got {self.optimiser!r}"
            )
        m = self.momentum
        if not _is_number(m) or not math.isfinite(m) or not 0 <= m < 1:
            raise ProtocolError(
                f"training plan field 'momentum' must be a finite number in [0, 1), got {m!r}"
            )
        if m > 0 and self.optimiser != "sgd":
            raise ProtocolError(
                f"training plan field 'momentum' applies to optimiser 'sgd' only, but the "
                f"optimiser is {self.optimiser!r}; remove momentum or choose sgd"
            )

    def to_json(self) -> dict[str, Any]:
        """The plan as a message and a study write it (optional fields only when not default)."""
        raw = asdict(self)
        for key in _PLAN_OPTIONAL:
            if raw[key] == getattr(TrainingPlan, key):
                del raw[key]
        return raw

    @classmethod
    def from_json(cls, raw: Any) -> TrainingPlan:
        """Validate a plan received in a message."""
        required = set(cls.__dataclass_fields__) - set(_PLAN_OPTIONAL)
        if not isinstance(raw, dict) or not required <= set(raw) <= set(cls.__dataclass_fields__):
            raise ProtocolError(
                f"training plan must have the fields {sorted(required)} and may have "
                f"{sorted(_PLAN_OPTIONAL)}"
            )
        for key, (low, high) in _PLAN_INTS.items():
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ProtocolError(
                    f"training plan field {key!r} must be an integer in [{low}, {high}], "
                    f"got {value!r}"
                )
        for key, top in _PLAN_NUMBERS.items():
            number = raw[key]
            if not _is_number(number) or not math.isfinite(number) or not 0 <= number <= top:
                raise ProtocolError(
                    f"training plan field {key!r} must be a finite number in [0, {top:g}], "
                    f"got {number!r}"
                )
        return cls(**raw)


#: The local optimisers a plan may name.
PLAN_OPTIMISERS = ("adam", "sgd")
#: Bounds of a training plan, so that neither a study file nor a task asks for absurd work.
_PLAN_INTS = {"local_epochs": (1, 1000), "batch_size": (1, 1_000_000), "seed": (0, 2**63 - 1)}
_PLAN_NUMBERS = {"learning_rate": 100.0, "proximal_mu": 1000.0, "weight_decay": 100.0}
#: Fields written only when they differ from the default (added after format version 1).
_PLAN_OPTIONAL = ("optimiser", "momentum")


def check_same_shapes(arrays: Arrays, reference: Arrays, *, what: str) -> None:
    """Raise :class:`IntegrityError` unless ``arrays`` match ``reference`` in names, shapes, dtypes
    and hold only finite values."""
    if set(arrays) != set(reference):
        missing = sorted(set(reference) - set(arrays))
        extra = sorted(set(arrays) - set(reference))
        raise IntegrityError(
            f"{what}: parameter names differ from the model (missing {missing}, unexpected {extra})"
        )
    for name, ref in reference.items():
        arr = arrays[name]
        if arr.shape != ref.shape or arr.dtype != ref.dtype:
            raise IntegrityError(
                f"{what}: parameter {name!r} has shape {arr.shape} {arr.dtype}, "
                f"the model expects {ref.shape} {ref.dtype}"
            )
        if arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
            raise IntegrityError(f"{what}: parameter {name!r} contains NaN or infinite values")


@dataclass(frozen=True)
class TrainTask:
    """Coordinator → site: train the given model version for one round."""

    header: Header
    model_version: int
    plan: TrainingPlan
    weights: Arrays
    privacy: PrivacyPlan = field(default_factory=PrivacyPlan)
    secagg: SecAggPlan = field(default_factory=SecAggPlan)
    #: Secure rounds only: the sites asked to train this round (the key-agreement cohort) and
    #: the attempt number (a round restarted after a coordinator restart gets fresh keys).
    cohort: tuple[str, ...] = ()
    attempt: int = 0
    #: Secure rounds with key batches only: the key slot this attempt masks with (a slot of the
    #: batch set up in this very attempt means "set up a new batch"); absent otherwise.
    key_slot: RoundContext | None = None

    def to_envelope(self) -> Envelope:
        """Wrap for transport."""
        return Envelope(
            self.header,
            {
                "model_version": self.model_version,
                "plan": self.plan.to_json(),
                "privacy": self.privacy.to_json(),
                "secagg": self.secagg.to_json(),
                "cohort": list(self.cohort),
                "attempt": self.attempt,
                **({} if self.key_slot is None else {"key_slot": self.key_slot.to_json()}),
            },
            dict(self.weights),
        )

    @classmethod
    def from_envelope(cls, env: Envelope) -> TrainTask:
        """Validate and unwrap."""
        _expect(
            env,
            MessageKind.TRAIN_TASK,
            {"model_version", "plan", "privacy", "secagg", "cohort", "attempt"}
            | ({"key_slot"} & set(env.body)),
        )
        version = _version(env.body["model_version"], what="train task: model_version")
        for name, arr in env.arrays.items():
            if arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
                raise IntegrityError(f"train task: weight {name!r} contains NaN or infinite values")
        cohort = env.body["cohort"]
        if not isinstance(cohort, list) or not all(isinstance(s, str) for s in cohort):
            raise ProtocolError("train task: cohort must be a list of site ids")
        return cls(
            env.header,
            version,
            TrainingPlan.from_json(env.body["plan"]),
            env.arrays,
            PrivacyPlan.from_json(env.body["privacy"]),
            SecAggPlan.from_json(env.body["secagg"]),
            tuple(cohort),
            _version(env.body["attempt"], what="train task: attempt"),
            _key_slot(env.body["key_slot"]) if "key_slot" in env.body else None,
        )


@dataclass(frozen=True)
class ModelUpdate:
    """Site → coordinator: the change to the model after local training, and aggregate metrics.

    ``metrics`` are aggregate numbers about the site's data (training loss, counts of test cases
    ranked within the top k); they never name or describe an individual case.
    """

    header: Header
    model_version: int
    num_examples: int
    delta: Arrays
    metrics: Mapping[str, float] = field(default_factory=dict)

    def to_envelope(self) -> Envelope:
        """Wrap for transport."""
        body = {
            "model_version": self.model_version,
            "num_examples": self.num_examples,
            "metrics": dict(self.metrics),
        }
        return Envelope(self.header, body, dict(self.delta))

    @classmethod
    def from_envelope(cls, env: Envelope) -> ModelUpdate:
        """Validate and unwrap (shapes are checked against the model by the coordinator)."""
        _expect(env, MessageKind.MODEL_UPDATE, {"model_version", "num_examples", "metrics"})
        n = env.body["num_examples"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise IntegrityError(
                f"model update from {env.header.sender}: num_examples must be an "
                f"integer >= 1, got {n!r}"
            )
        metrics = env.body["metrics"]
        if not isinstance(metrics, dict):
            raise ProtocolError("model update: metrics must be an object")
        for key, value in metrics.items():
            # fullmatch: with match(), "$" would also accept a name ending in a newline.
            if not _METRIC_NAME.fullmatch(key) or not _is_number(value) or not math.isfinite(value):
                raise ProtocolError(
                    f"model update: metric {key!r} must be a lowercase name with a finite "
                    "number value"
                )
        return cls(
            env.header,
            _version(env.body["model_version"], what="model update: model_version"),
            n,
            env.arrays,
            {k: float(v) for k, v in metrics.items()},
        )


#: The largest model card a study end may carry (the card file's own limit).
MAX_CARD_CHARS = 1 << 20


@dataclass(frozen=True)
class StudyEnd:
    """Coordinator → site: the study is over; ``final_version`` is the last model version.

    A finished study's end also carries the final model file's bytes (``model``, the very file
    :func:`alliance.store.modelfile.load_model` reads) and its signed model card (``card``,
    :mod:`alliance.protocol.model_card`); both are empty for a study that ended with no model
    to publish (cancelled, failed). The model travels as one ``uint8`` array, so the codec's size
    limits bound it; the card is UTF-8 JSON text of at most :data:`MAX_CARD_CHARS` characters.
    """

    header: Header
    final_version: int
    model: bytes = b""
    card: bytes = b""

    def to_envelope(self) -> Envelope:
        """Wrap for transport."""
        if not self.card:
            return Envelope(self.header, {"final_version": self.final_version})
        return Envelope(
            self.header,
            {"final_version": self.final_version, "card": self.card.decode("utf-8")},
            {"model": np.frombuffer(self.model, dtype=np.uint8)},
        )

    @classmethod
    def from_envelope(cls, env: Envelope) -> StudyEnd:
        """Validate and unwrap."""
        with_card = "card" in env.body
        _expect(env, MessageKind.STUDY_END, {"final_version"} | ({"card"} if with_card else set()))
        version = _version(env.body["final_version"], what="study end: final_version")
        if not with_card:
            if env.arrays:
                raise ProtocolError("study end without a model card must carry no arrays")
            return cls(env.header, version)
        card = env.body["card"]
        if not isinstance(card, str) or not card or len(card) > MAX_CARD_CHARS:
            raise ProtocolError(
                f"study end: card must be a non-empty string of at most {MAX_CARD_CHARS} characters"
            )
        model = env.arrays.get("model")
        if set(env.arrays) != {"model"} or model is None:
            raise ProtocolError("study end with a card must carry exactly one array, 'model'")
        if model.dtype != np.uint8 or model.ndim != 1 or model.size == 0:
            raise ProtocolError(
                f"study end: 'model' must be a non-empty 1-D uint8 array, got {model.dtype} "
                f"of shape {model.shape}"
            )
        return cls(env.header, version, model.tobytes(), card.encode("utf-8"))


@dataclass(frozen=True)
class FinalEvaluation:
    """Site → coordinator, after a study's end: the hospital's evaluation of the final model.

    Counts only (``eval_n`` and ``eval_top{1,3,10}``, as each round's metrics), empty when the
    hospital holds no test cases; and, for a study with differential privacy, the ε and δ the
    hospital's own ledger spent in the study. The coordinator suppresses small counts when it
    puts them on the model card.
    """

    header: Header
    model_version: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    epsilon: float | None = None
    delta: float | None = None

    def to_envelope(self) -> Envelope:
        """Wrap for transport."""
        body = {
            "model_version": self.model_version,
            "metrics": dict(self.metrics),
            "privacy": None
            if self.epsilon is None
            else {"epsilon": self.epsilon, "delta": self.delta},
        }
        return Envelope(self.header, body)

    @classmethod
    def from_envelope(cls, env: Envelope) -> FinalEvaluation:
        """Validate and unwrap."""
        _expect(env, MessageKind.FINAL_EVALUATION, {"model_version", "metrics", "privacy"})
        metrics = env.body["metrics"]
        names = {"eval_n", "eval_top1", "eval_top3", "eval_top10"}
        if not isinstance(metrics, dict) or (metrics and set(metrics) != names):
            raise ProtocolError(
                f"final evaluation: metrics must be empty or exactly {sorted(names)}"
            )
        for key, value in metrics.items():
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ProtocolError(f"final evaluation: metric {key!r} must be a count >= 0")
        privacy = env.body["privacy"]
        epsilon = delta = None
        if privacy is not None:
            if not isinstance(privacy, dict) or set(privacy) != {"epsilon", "delta"}:
                raise ProtocolError("final evaluation: privacy must be null or {epsilon, delta}")
            epsilon, delta = privacy["epsilon"], privacy["delta"]
            if not all(_is_number(v) and math.isfinite(v) and v >= 0 for v in (epsilon, delta)):
                raise ProtocolError("final evaluation: epsilon and delta must be numbers >= 0")
        return cls(
            env.header,
            _version(env.body["model_version"], what="final evaluation: model_version"),
            {k: float(v) for k, v in metrics.items()},
            None if epsilon is None else float(epsilon),
            None if delta is None else float(delta),
        )


#: Why a site declined a task; the coordinator learns only this word, never the details.
REFUSAL_REASONS = ("budget", "policy", "not-approved", "cohort")


@dataclass(frozen=True)
class Refusal:
    """Site → coordinator: the site will not take part in this round.

    Only the category travels, one the operator can act on:

    - ``"budget"``: the round would take the hospital past its privacy budget;
    - ``"policy"``: the task is not what the approved study states (plan, privacy, rounds);
    - ``"not-approved"``: the hospital has not approved this study (its hash is not in the
      site's ``[policy] approved_studies``);
    - ``"cohort"``: the hospital has fewer cases than its ``[policy] min_cohort``.

    Counts, hashes and messages stay in the hospital's own audit log.
    """

    header: Header
    reason: str

    def to_envelope(self) -> Envelope:
        """Wrap for transport."""
        return Envelope(self.header, {"reason": self.reason})

    @classmethod
    def from_envelope(cls, env: Envelope) -> Refusal:
        """Validate and unwrap."""
        _expect(env, MessageKind.REFUSAL, {"reason"})
        if env.body["reason"] not in REFUSAL_REASONS:
            raise ProtocolError(
                f"refusal reason must be one of {list(REFUSAL_REASONS)}, got {env.body['reason']!r}"
            )
        return cls(env.header, env.body["reason"])


def _key_slot(raw: Any) -> RoundContext:
    context = RoundContext.from_json(raw)
    if context.slot is None:
        raise ProtocolError("train task: key_slot must name a slot")
    return context


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _version(value: Any, *, what: str) -> int:
    # int() would turn 0.5 into 0 and let "abc" or None escape as ValueError/TypeError.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"{what} must be an integer >= 0, got {value!r}")
    return value


def _expect(env: Envelope, kind: MessageKind, fields: set[str]) -> None:
    if env.header.kind is not kind:
        raise ProtocolError(f"expected a {kind.value} message, got {env.header.kind.value}")
    if set(env.body) != fields:
        raise ProtocolError(
            f"{kind.value} body must have exactly the fields {sorted(fields)}, "
            f"got {sorted(env.body)}"
        )
