"""One round engine: the simulation and the service drive rounds the same way.

Each scenario is played twice over the same script (``tests/one_engine.py``): by a
:class:`~alliance.sim.simulation.Simulation` and by an in-process
:class:`~alliance.coordinator.service.CoordinatorService` with real sites over its API and its
files. Both must give the same rounds (every field of every round record), the same study log
(rounds opened and closed, stages, refusals, rejections), the same rejected messages and
bit-identical final weights. The script, as both sides play it:

- every site fetches what it is offered and answers it at once; ``drops`` makes a site ignore
  every message of a round from the named stage on (it vanishes for the rest of the round and is
  back for the next one: in the service it keeps polling, so it counts as alive);
- the clock stands still while messages move and jumps, when nothing moves, to the times in
  ``jumps`` (the simulation jumps to its driver's next deadline; the script says where that
  deadline must fall);
- the courier carries the bundles of the sites on files at every exchange, and in asynchronous
  studies brings a reply back ``courier_delay`` rounds after the round it answers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tests.one_engine import (
    ROUNDS_LOGGER,
    STAGE_TIMEOUT_S,
    Outcome,
    Scenario,
    ServiceRun,
    simulate,
)

from alliance.sim.simulation import ROUND_TIMEOUT_S

SCENARIOS = [
    # Plain FedAvg: c is silent in round 2, which closes at its deadline with the quorum.
    Scenario(
        "plain",
        quorum=3,
        drops=frozenset({("c", 2, "train")}),
        jumps=(ROUND_TIMEOUT_S,),
        expect_sites=("abcd", "abd", "abcd"),
    ),
    # Buffered: b is on files and its courier brings its reply one version late (it counts,
    # discounted); the online sites make a version per pass, waiting for nobody. In round 3 c
    # and d are silent: short of its buffer, the round closes at its deadline with a alone.
    Scenario(
        "buffered",
        asynchronous=True,
        offline=("b",),
        courier_delay=1,
        drops=frozenset({("c", 3, "train"), ("d", 3, "train")}),
        jumps=(ROUND_TIMEOUT_S,),
        expect_sites=("acd", "abcd", "a"),
    ),
    # Buffered with a courier slower than max_staleness: b's reply is refused as too old.
    Scenario(
        "buffered-too-late",
        rounds=4,
        asynchronous=True,
        max_staleness=1,
        offline=("b",),
        courier_delay=2,
        expect_sites=("acd", "acd", "acd", "acd"),
        expect_rejected=("b",),
    ),
    # Secure aggregation: in round 1 b vanishes when the shares come, after sharing its keys:
    # the stage times out and b's masks are removed with the others' shares. In round 2 d
    # vanishes at the unmask stage, after its masked vector is in: the sum holds it. In round 3
    # c ignores its task: the training stage waits for the round's deadline.
    Scenario(
        "secure",
        rounds=3,
        secure=True,
        drops=frozenset({("b", 1, "shares"), ("d", 2, "unmask"), ("c", 3, "train")}),
        jumps=(STAGE_TIMEOUT_S, 2 * STAGE_TIMEOUT_S, 2 * STAGE_TIMEOUT_S + ROUND_TIMEOUT_S),
        expect_sites=("acd", "abcd", "abd"),
    ),
    # Secure aggregation with a site on files and key batches: after the set-up b exchanges one
    # bundle pair per round (it is not asked to confirm or unmask while the others can).
    Scenario(
        "secure-files",
        rounds=3,
        secure=True,
        key_batch=3,
        offline=("b",),
        drops=frozenset({("c", 3, "confirm")}),
        jumps=(STAGE_TIMEOUT_S,),
        expect_sites=("abcd", "abcd", "abcd"),
    ),
    # A site on files in synchronous rounds: every round waits for its courier; d is silent in
    # round 2.
    Scenario(
        "files",
        quorum=3,
        offline=("b",),
        drops=frozenset({("d", 2, "train")}),
        jumps=(ROUND_TIMEOUT_S,),
        expect_sites=("abcd", "abc", "abcd"),
    ),
]

# DP-SGD: d's budget cannot pay for the study, so it declines every task ("budget"); the others
# train under DP-SGD, whose batches and noise come from a CSPRNG (different on every run), so
# here rounds, log and refusals are compared, not the weights.
PRIVATE = Scenario(
    "private",
    rounds=2,
    quorum=3,
    target_epsilon=1.0,
    budgets={"d": 0.1},
    expect_sites=("abc", "abc"),
    expect_declined=("d", "d"),
)


def check_script(sc: Scenario, outcome: Outcome) -> None:
    """The script played out as written (else both drivers could agree on a script unplayed)."""
    assert ["".join(r["sites"]) for r in outcome.history] == list(sc.expect_sites)
    assert [r["model_version"] for r in outcome.history] == list(range(1, sc.rounds + 1))
    assert [r["num_examples"] for r in outcome.history] == [20 * len(s) for s in sc.expect_sites]
    assert [site for site, _ in outcome.rejections] == list(sc.expect_rejected)
    declined = [line.split()[0] for line in outcome.log if " declined round " in line]
    assert declined == list(sc.expect_declined)


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_the_simulation_and_the_service_drive_the_same_rounds(
    sc: Scenario, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ROUNDS_LOGGER)
    simulated = simulate(sc, tmp_path, caplog)
    check_script(sc, simulated)
    served = ServiceRun(sc, tmp_path / "service").run()

    assert served.history == simulated.history
    assert served.log == simulated.log
    assert served.rejections == simulated.rejections
    assert served.weights.keys() == simulated.weights.keys()
    for name, value in simulated.weights.items():
        assert served.weights[name].dtype == value.dtype
        assert served.weights[name].tobytes() == value.tobytes(), name


def test_a_site_over_budget_declines_the_same_tasks_in_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ROUNDS_LOGGER)
    simulated = simulate(PRIVATE, tmp_path, caplog)
    check_script(PRIVATE, simulated)
    served = ServiceRun(PRIVATE, tmp_path / "service").run()

    def rounds(outcome: Outcome) -> list[tuple[int, int, list[str], int]]:
        return [
            (r["round"], r["model_version"], r["sites"], r["num_examples"]) for r in outcome.history
        ]

    assert rounds(served) == rounds(simulated)
    assert served.log == simulated.log
    assert served.rejections == simulated.rejections
