"""The study chooses the sites' local optimiser: ``[plan] optimiser = "adam" | "sgd"`` (with SGD's
momentum), checked when the study is read; a plan that does not name it is written, hashed and
sent as before, and the site trains with the plan's optimiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from alliance.core.errors import ConfigError, ProtocolError
from alliance.models.steps import ClassifierStep
from alliance.models.training import Optimiser, get_weights, train_locally
from alliance.privacy.noise import SecureGaussian
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import TrainingPlan, TrainTask
from alliance.protocol.privacy import PrivacyPlan
from alliance.protocol.study import StudySpec
from alliance.site.privatize import train_under_plan

HEAD = '[study]\nid = "s"\nrounds = 2\n'
#: The [plan] of a study built in code before the optimiser could be chosen.
OLD_PLAN_TABLE = (
    "[plan]\nlocal_epochs = 1\nbatch_size = 64\nlearning_rate = 0.01\nproximal_mu = 0.0\n"
    "weight_decay = 0.0\nseed = 0\n"
)
OLD_PLAN_FIELDS = {
    "local_epochs",
    "batch_size",
    "learning_rate",
    "proximal_mu",
    "weight_decay",
    "seed",
}


def test_a_plan_that_names_no_optimiser_is_written_and_sent_as_before() -> None:
    spec = StudySpec.build(study_id="s", rounds=2)
    assert OLD_PLAN_TABLE in spec.text
    assert "optimiser" not in spec.text
    assert StudySpec.parse(spec.text).plan.optimiser == "adam"
    task = TrainTask(_header(), 1, TrainingPlan(), {})
    assert set(task.to_envelope().body["plan"]) == OLD_PLAN_FIELDS
    old_task_plan = {
        "local_epochs": 1,
        "batch_size": 64,
        "learning_rate": 0.01,
        "proximal_mu": 0.0,
        "weight_decay": 0.0,
        "seed": 4,
    }
    assert TrainingPlan.from_json(old_task_plan) == TrainingPlan(seed=4)


def test_a_study_chooses_sgd_with_momentum_and_reads_back() -> None:
    spec = StudySpec.parse(HEAD + '[plan]\noptimiser = "sgd"\nmomentum = 0.9\n')
    assert (spec.plan.optimiser, spec.plan.momentum) == ("sgd", 0.9)
    built = StudySpec.build(study_id="s", rounds=2, plan=TrainingPlan(optimiser="sgd"))
    assert 'optimiser = "sgd"' in built.text
    assert StudySpec.parse(built.text) == built
    task = TrainTask(_header(), 1, spec.plan, {})
    assert TrainTask.from_envelope(task.to_envelope()).plan == spec.plan


@pytest.mark.parametrize(
    ("plan", "words"),
    [
        ('optimiser = "rmsprop"', r"\[plan\] .*'optimiser' must be one of \['adam', 'sgd'\]"),
        ("optimiser = 1", r"\[plan\] .*'optimiser' must be one of"),
        ('optimiser = "sgd"\nmomentum = 1.0', r"\[plan\] .*'momentum' must be .* in \[0, 1\)"),
        ('optimiser = "sgd"\nmomentum = -0.1', r"'momentum' must be a finite number"),
        ("momentum = 0.5", r"\[plan\] .*'momentum' applies to optimiser 'sgd' only"),
        ("learning_rate = 0.1\nbeta = 2", r"\[plan\] training plan must have the fields"),
    ],
)
def test_a_bad_optimiser_is_refused_when_the_study_is_read(plan: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        StudySpec.parse(HEAD + "[plan]\n" + plan + "\n")


def test_dp_sgd_studies_keep_adam() -> None:
    privacy = '[privacy]\nmechanism = "dp-sgd"\ntarget_epsilon = 3.0\n'
    with pytest.raises(ConfigError, match=r'\[plan\] optimiser = "sgd" cannot.*DP-SGD.*Adam'):
        StudySpec.parse(HEAD + '[plan]\noptimiser = "sgd"\n' + privacy)
    assert StudySpec.parse(HEAD + '[plan]\noptimiser = "adam"\n' + privacy).plan.optimiser == "adam"
    with pytest.raises(ProtocolError, match="one of"):
        TrainingPlan(optimiser="adamw")


def _header() -> Header:
    return Header(
        kind=MessageKind.TRAIN_TASK,
        federation="fed",
        study="s",
        round=1,
        sender=COORDINATOR,
        recipient="site-a",
    )


def _data() -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=gen)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def _site_round(model: nn.Module, plan: TrainingPlan, step: ClassifierStep | None) -> None:
    train_under_plan(
        model,
        _data(),
        plan=plan,
        privacy=PrivacyPlan(),
        start=get_weights(model),
        seed=3,
        study="s",
        round_=1,
        ledger=None,
        secure_threshold=None,
        noise=SecureGaussian(key=bytes(32)),
        step=step,
    )


def test_the_site_trains_with_the_plans_optimiser_unless_its_step_names_one() -> None:
    plan = TrainingPlan(batch_size=8, learning_rate=0.1, optimiser="sgd", momentum=0.9)
    site, expected, adam = _model(), _model(), _model()
    _site_round(site, plan, None)
    train_locally(
        expected,
        _data(),
        epochs=1,
        batch_size=8,
        learning_rate=0.1,
        seed=3,
        optimiser=Optimiser.SGD,
        momentum=0.9,
    )
    a, b = get_weights(site), get_weights(expected)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # A step that names its own optimiser keeps it (the researcher's Python API choice).
    _site_round(adam, plan, ClassifierStep(Optimiser.ADAM))
    c = get_weights(adam)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
