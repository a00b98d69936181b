"""Typed messages: round trips through the codec, and what a message may not carry."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import pytest

from alliance.core.errors import IntegrityError, ProtocolError
from alliance.protocol.codec import decode, encode
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import (
    REFUSAL_REASONS,
    FinalEvaluation,
    ModelUpdate,
    Refusal,
    StudyEnd,
    TrainingPlan,
    TrainTask,
    check_same_shapes,
)


def header(kind: MessageKind, **overrides: Any) -> Header:
    fields: dict[str, Any] = {
        "kind": kind,
        "federation": "fed",
        "study": "study",
        "round": 2,
        "sender": "site-a",
        "recipient": COORDINATOR,
    }
    fields.update(overrides)
    return Header(**fields)


def weights() -> dict[str, np.ndarray[Any, Any]]:
    return {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3) / 4,
        "b": np.array([0.5, -1.0, 2.0], dtype=np.float32),
    }


def wire(env: Envelope) -> Envelope:
    return decode(encode(env))


def update_envelope(**body: Any) -> Envelope:
    fields: dict[str, Any] = {"model_version": 1, "num_examples": 10, "metrics": {}}
    fields.update(body)
    return Envelope(header(MessageKind.MODEL_UPDATE), fields, weights())


def assert_arrays_equal(got: Any, want: Any) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])


# ---------------------------------------------------------------------------------------------
# round trips


def test_train_task_round_trip() -> None:
    plan = TrainingPlan(
        local_epochs=3,
        batch_size=16,
        learning_rate=0.05,
        proximal_mu=0.1,
        weight_decay=1e-4,
        seed=7,
    )
    h = header(MessageKind.TRAIN_TASK, sender=COORDINATOR, recipient="site-a")
    task = TrainTask(h, 4, plan, weights())
    out = TrainTask.from_envelope(wire(task.to_envelope()))
    assert (out.header, out.model_version, out.plan) == (h, 4, plan)
    assert_arrays_equal(out.weights, weights())


def test_model_update_round_trip() -> None:
    metrics = {"train_loss": 0.5, "top1_hits": 3.0, "test_cases": 9.0}
    update = ModelUpdate(header(MessageKind.MODEL_UPDATE), 4, 120, weights(), metrics)
    out = ModelUpdate.from_envelope(wire(update.to_envelope()))
    assert (out.header, out.model_version, out.num_examples) == (update.header, 4, 120)
    assert out.metrics == metrics
    assert all(isinstance(v, float) for v in out.metrics.values())
    assert_arrays_equal(out.delta, weights())


def test_study_end_round_trip() -> None:
    h = header(MessageKind.STUDY_END, sender=COORDINATOR, recipient="site-b")
    out = StudyEnd.from_envelope(wire(StudyEnd(h, 9).to_envelope()))
    assert out == StudyEnd(h, 9)


@pytest.mark.parametrize("reason", ["budget", "policy", "not-approved", "cohort"])
def test_refusal_round_trip_for_each_category(reason: str) -> None:
    refusal = Refusal(header(MessageKind.REFUSAL), reason)
    assert Refusal.from_envelope(wire(refusal.to_envelope())) == refusal
    assert reason in REFUSAL_REASONS


@pytest.mark.parametrize("reason", ["", "Budget", "only 3 cases loaded", 7, None])
def test_refusal_carries_only_a_category(reason: Any) -> None:
    env = Envelope(header(MessageKind.REFUSAL), {"reason": reason})
    with pytest.raises(ProtocolError, match="refusal reason must be one of"):
        Refusal.from_envelope(env)
    with pytest.raises(ProtocolError, match="exactly the fields"):
        Refusal.from_envelope(Envelope(env.header, {"reason": "budget", "detail": "ε 8.1 > 8"}))


def test_from_envelope_checks_kind_and_body_fields() -> None:
    env = update_envelope()
    with pytest.raises(ProtocolError, match="expected a train_task message, got model_update"):
        TrainTask.from_envelope(env)
    with pytest.raises(ProtocolError, match=r"exactly the fields .*got \['case_ids', 'extra'"):
        ModelUpdate.from_envelope(
            Envelope(env.header, {**env.body, "extra": 1, "case_ids": []}, env.arrays)
        )
    with pytest.raises(ProtocolError, match="exactly the fields"):
        ModelUpdate.from_envelope(Envelope(env.header, {"model_version": 1}, env.arrays))


# ---------------------------------------------------------------------------------------------
# ModelUpdate validation


@pytest.mark.parametrize("n", [0, -3, True, False, 1.5, "10", None])
def test_model_update_rejects_bad_num_examples(n: Any) -> None:
    with pytest.raises(IntegrityError, match=r"site-a: num_examples must be an integer >= 1"):
        ModelUpdate.from_envelope(wire(update_envelope(num_examples=n)))


@pytest.mark.parametrize(
    "name", ["TrainLoss", "1loss", "_loss", "train-loss", "loss\n", "", "x" * 65, "损失"]
)
def test_model_update_rejects_metric_names_that_are_not_lowercase_identifiers(name: str) -> None:
    with pytest.raises(ProtocolError, match="must be a lowercase name"):
        ModelUpdate.from_envelope(update_envelope(metrics={name: 1.0}))


@pytest.mark.parametrize("value", ["0.5", None, True, [1.0], {"a": 1}, math.nan, math.inf])
def test_model_update_rejects_non_number_metric_values(value: Any) -> None:
    # Built without the codec, as a transport with encode=False hands envelopes over.
    with pytest.raises(ProtocolError, match="'train_loss' must be a lowercase name with a finite"):
        ModelUpdate.from_envelope(update_envelope(metrics={"train_loss": value}))


def test_model_update_rejects_non_object_metrics() -> None:
    with pytest.raises(ProtocolError, match="metrics must be an object"):
        ModelUpdate.from_envelope(wire(update_envelope(metrics=[1.0])))


@pytest.mark.parametrize("version", [-1, 0.5, "1", None, True, [1]])
def test_model_update_rejects_bad_model_version(version: Any) -> None:
    with pytest.raises(ProtocolError, match="model update: model_version must be an integer >= 0"):
        ModelUpdate.from_envelope(wire(update_envelope(model_version=version)))


@pytest.mark.parametrize("version", [-1, 2.5, "3", None, True])
def test_train_task_and_study_end_reject_bad_versions(version: Any) -> None:
    task = TrainTask(header(MessageKind.TRAIN_TASK), 0, TrainingPlan(), weights()).to_envelope()
    bad_task = Envelope(task.header, {**task.body, "model_version": version}, task.arrays)
    with pytest.raises(ProtocolError, match="train task: model_version"):
        TrainTask.from_envelope(wire(bad_task))
    end = Envelope(header(MessageKind.STUDY_END), {"final_version": version})
    with pytest.raises(ProtocolError, match="study end: final_version"):
        StudyEnd.from_envelope(wire(end))


def test_train_task_rejects_non_finite_weights() -> None:
    bad = weights()
    bad["b"][1] = np.inf
    env = TrainTask(header(MessageKind.TRAIN_TASK), 0, TrainingPlan(), bad).to_envelope()
    with pytest.raises(IntegrityError, match="weight 'b' contains NaN or infinite"):
        TrainTask.from_envelope(wire(env))


# ---------------------------------------------------------------------------------------------
# TrainingPlan


def plan_json(**overrides: Any) -> dict[str, Any]:
    raw = asdict(TrainingPlan())
    raw.update(overrides)
    return raw


def test_training_plan_from_json_accepts_its_own_json() -> None:
    plan = TrainingPlan(local_epochs=2, learning_rate=0.1, proximal_mu=0.5, seed=3)
    assert TrainingPlan.from_json(asdict(plan)) == plan


def test_training_plan_rejects_missing_and_extra_fields() -> None:
    missing = plan_json()
    del missing["seed"]
    for raw in (missing, plan_json(nesterov=True), [], None):
        with pytest.raises(ProtocolError, match="training plan must have the fields"):
            TrainingPlan.from_json(raw)


@pytest.mark.parametrize("value", [-0.01, math.nan, math.inf, -math.inf, "0.1", None, True])
@pytest.mark.parametrize("key", ["learning_rate", "proximal_mu", "weight_decay"])
def test_training_plan_rejects_bad_rates(key: str, value: Any) -> None:
    with pytest.raises(ProtocolError, match=rf"{key!r} must be a finite number in \[0, "):
        TrainingPlan.from_json(plan_json(**{key: value}))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"local_epochs": 0}, r"'local_epochs' must be an integer in \[1, 1000\], got 0"),
        ({"local_epochs": 10**6}, r"'local_epochs' must be an integer in \[1, 1000\]"),
        ({"batch_size": 0}, r"'batch_size' must be an integer in \[1, "),
        ({"learning_rate": 1e9}, r"'learning_rate' must be a finite number in \[0, 100\]"),
        ({"batch_size": 1.5}, "'batch_size' must be an integer"),
        ({"seed": True}, "'seed' must be an integer"),
    ],
)
def test_training_plan_rejects_bad_integers(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ProtocolError, match=expected):
        TrainingPlan.from_json(plan_json(**overrides))


# ---------------------------------------------------------------------------------------------
# check_same_shapes


def test_check_same_shapes_accepts_matching_arrays() -> None:
    check_same_shapes({k: v * 2 for k, v in weights().items()}, weights(), what="update")


def test_check_same_shapes_names_missing_and_extra() -> None:
    arrays = weights()
    del arrays["b"]
    arrays["z"] = np.zeros(1, dtype=np.float32)
    with pytest.raises(IntegrityError, match=r"update x: .*missing \['b'\], unexpected \['z'\]"):
        check_same_shapes(arrays, weights(), what="update x")


def test_check_same_shapes_wrong_shape_and_dtype() -> None:
    with pytest.raises(IntegrityError, match=r"'w' has shape \(3, 2\) float32, .*\(2, 3\) float32"):
        check_same_shapes({**weights(), "w": np.zeros((3, 2), np.float32)}, weights(), what="u")
    with pytest.raises(IntegrityError, match=r"'b' has shape \(3,\) float64, .*\(3,\) float32"):
        check_same_shapes({**weights(), "b": np.zeros(3)}, weights(), what="u")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_check_same_shapes_non_finite(value: float) -> None:
    arrays = weights()
    arrays["w"][1, 2] = value
    with pytest.raises(IntegrityError, match="'w' contains NaN or infinite values"):
        check_same_shapes(arrays, weights(), what="u")


def test_study_end_carries_the_model_file_and_its_card() -> None:
    h = header(MessageKind.STUDY_END, sender=COORDINATOR, recipient="site-a")
    end = StudyEnd(h, 4, b"\x00model\xff" * 50, b'{"card":{}}')
    out = StudyEnd.from_envelope(wire(end.to_envelope()))
    assert out == end
    assert StudyEnd.from_envelope(wire(StudyEnd(h, 4).to_envelope())) == StudyEnd(h, 4)


@pytest.mark.parametrize(
    ("body", "arrays", "match"),
    [
        ({"final_version": 1, "card": 5}, {"model": np.zeros(3, np.uint8)}, "card must be"),
        ({"final_version": 1, "card": "{}"}, {}, "exactly one array"),
        ({"final_version": 1, "card": "{}"}, {"model": np.zeros(3, np.float32)}, "uint8"),
        ({"final_version": 1}, {"model": np.zeros(3, np.uint8)}, "no arrays"),
    ],
)
def test_study_end_refuses_a_malformed_model_or_card(
    body: dict[str, Any], arrays: dict[str, Any], match: str
) -> None:
    h = header(MessageKind.STUDY_END, sender=COORDINATOR, recipient="site-a")
    with pytest.raises(ProtocolError, match=match):
        StudyEnd.from_envelope(wire(Envelope(h, body, arrays)))


def test_final_evaluation_round_trip_and_bounds() -> None:
    h = header(MessageKind.FINAL_EVALUATION, round=0)
    counts = {"eval_n": 20.0, "eval_top1": 5.0, "eval_top3": 9.0, "eval_top10": 15.0}
    full = FinalEvaluation(h, 3, counts, 1.5, 1e-5)
    assert FinalEvaluation.from_envelope(wire(full.to_envelope())) == full
    empty = FinalEvaluation(h, 3)
    assert FinalEvaluation.from_envelope(wire(empty.to_envelope())) == empty
    for metrics, privacy in (
        ({"eval_n": 2.0}, None),
        ({**counts, "eval_n": -1.0}, None),
        (counts, {"epsilon": math.inf, "delta": 0}),
        (counts, {"epsilon": 1.0}),
    ):
        env = Envelope(h, {"model_version": 3, "metrics": metrics, "privacy": privacy})
        with pytest.raises(ProtocolError):
            FinalEvaluation.from_envelope(env)
