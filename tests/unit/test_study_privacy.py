"""The privacy tables of a study file, as hospitals approve them and tasks carry them."""

from __future__ import annotations

import numpy as np
import pytest

from alliance.core.errors import ConfigError, ProtocolError
from alliance.protocol.codec import decode, encode
from alliance.protocol.envelope import Header, MessageKind
from alliance.protocol.messages import TrainingPlan, TrainTask
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.protocol.study import StudySpec

SITES = ", ".join(f'"h{i:02d}"' for i in range(12))


def _spec(extra: str, *, quorum: str = "") -> StudySpec:
    return StudySpec.parse(
        f'[study]\nid = "s"\nrounds = 4\nsites = [{SITES}]\n{quorum}\n{extra}', where="study.toml"
    )


def test_no_tables_means_no_privacy_and_no_secure_aggregation() -> None:
    spec = _spec("")
    assert spec.privacy == PrivacyPlan(rounds=4)
    assert not spec.privacy.patient_level
    assert not spec.privacy.client_level
    assert spec.secagg == SecAggPlan()
    assert not spec.secagg.enabled
    assert spec.quorum == 12


def test_privacy_tables_are_parsed_with_the_study_rounds() -> None:
    spec = _spec(
        '[privacy]\nmechanism = "dp-sgd"\ntarget_epsilon = 3.0\nmax_grad_norm = 0.5\n'
        "[secure_aggregation]\nclip_range = 0.5\n"
    )
    assert spec.privacy.target_epsilon == 3.0
    assert spec.privacy.rounds == 4
    assert spec.privacy.max_grad_norm == 0.5
    assert spec.secagg.enabled
    assert spec.secagg.clip_range == 0.5
    # Under secure aggregation a round completes with any threshold-sized set of survivors.
    assert spec.secagg.threshold_for(12) == 8
    assert spec.quorum == 8
    assert _spec("[secure_aggregation]\n", quorum="quorum = 10").quorum == 10


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[privacy]\nmechanism = "dp-sgd"\n', "exactly one of target_epsilon or noise_multiplier"),
        (
            '[privacy]\nmechanism = "dp-sgd"\ntarget_epsilon = 1\nnoise_multiplier = 1\n',
            "exactly one",
        ),
        ("[privacy]\ntarget_epsilon = 1\n", "mechanism is 'none'"),
        ('[privacy]\nmechanism = "laplace"\n', "mechanism must be one of"),
        ('[privacy]\nmechanism = "dp-sgd"\nnoise_multiplier = -1\n', "noise_multiplier"),
        ('[privacy]\nmechanism = "dp-sgd"\nnoise_multiplier = 1\ndelta = 1.5\n', "delta"),
        ("[privacy]\nclient_clip = 1.0\n", "both client_clip and client_noise_multiplier"),
        ("[privacy]\nrounds = 3\n", "unknown keys ['rounds']"),
        ("[secure_aggregation]\nthreshold = 1\n", "threshold must be >= 2"),
        ("[secure_aggregation]\nvalue_bits = 40\n", "value_bits"),
        ("[secure_aggregation]\nenabled = 1\n", "true or false"),
        ("[secure_aggregation]\nspeed = 3\n", "unknown keys ['speed']"),
    ],
)
def test_bad_privacy_tables_name_the_key_and_the_fix(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"study\.toml") as info:
        _spec(extra)
    assert message in str(info.value)


def test_secure_aggregation_needs_three_sites() -> None:
    text = '[study]\nid = "s"\nrounds = 1\nsites = ["a", "b"]\n[secure_aggregation]\n'
    with pytest.raises(ConfigError, match="at least 3 invited sites"):
        StudySpec.parse(text)


def test_a_task_carries_both_plans_through_the_codec() -> None:
    privacy = PrivacyPlan(mechanism="dp-sgd", noise_multiplier=1.1, rounds=3)
    secagg = SecAggPlan(enabled=True, threshold=5)
    header = Header(MessageKind.TRAIN_TASK, "f", "s", 1, "coordinator", "h01")
    weights = {"w": np.zeros(3, np.float32)}
    task = TrainTask(header, 0, TrainingPlan(), weights, privacy, secagg, ("h01", "h02"), 7)
    back = TrainTask.from_envelope(decode(encode(task.to_envelope())))
    assert (back.privacy, back.secagg, back.cohort, back.attempt) == (
        privacy,
        secagg,
        ("h01", "h02"),
        7,
    )
    env = task.to_envelope()
    body = dict(env.body)
    body["privacy"] = {**body["privacy"], "noise_multiplier": -1}
    with pytest.raises(ProtocolError, match="privacy plan"):
        TrainTask.from_envelope(type(env)(env.header, body, env.arrays))
