"""Secure aggregation with hospitals on files and key batches (``key_batch``), end to end.

- after the set-up, a hospital on files exchanges one bundle pair per round (its task in, its
  masked input out), against five per round with fresh keys every round; the model is the very
  same bit for bit;
- every round's sum is exactly the modular sum of its survivors' encoded updates, with a site
  on files and an online site dropping in different rounds, and an online site vanishing
  before it confirms (the sites on files are then asked after all);
- a site that missed the set-up sits the batch out, trains nothing, and is back at the next one.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.pushing import PushingCoordinator
from tests.unit.secagg_harness import modular_sum
from torch import nn
from torch.utils.data import TensorDataset

from alliance.algorithms.strategies import make_strategy
from alliance.models.training import get_weights
from alliance.protocol.messages import TrainingPlan
from alliance.protocol.privacy import SecAggPlan
from alliance.protocol.secure_update import UpdateLayout
from alliance.sim.simulation import Simulation, SimulationResult
from alliance.site.agent import Site
from alliance.site.secure import SecureRounds
from alliance.transport.memory import InMemoryTransport

pytestmark = pytest.mark.slow


def data(seed: int, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def run(sites: str, secagg: SecAggPlan, **kw: Any) -> SimulationResult:
    return Simulation(
        model_fn=lambda: nn.Linear(5, 2),
        sites={s: data(i) for i, s in enumerate(sites)},
        rounds=4,
        plan=TrainingPlan(local_epochs=1, batch_size=16, learning_rate=0.1, seed=1),
        seed=1,
        secagg=secagg,
        **kw,
    ).run()


def bundles(folder: Path, *, sender: str | None = None) -> Counter[tuple[int, str]]:
    """(round, stage) of every bundle in ``folder`` (accepted, rejected or pending)."""
    out: Counter[tuple[int, str]] = Counter()
    for file in folder.rglob("*.gabn"):
        _fed, _study, round_, stage, route = file.name.split(".")[:5]
        if sender is None or route.startswith(f"{sender}-to-"):
            out[(int(round_.removeprefix("r")), stage)] += 1
    return out


def per_round(counts: Counter[tuple[int, str]]) -> dict[int, int]:
    rounds: Counter[int] = Counter()
    for (round_, _stage), n in counts.items():
        rounds[round_] += n
    return dict(sorted(rounds.items()))


def test_after_set_up_a_site_on_files_exchanges_one_bundle_pair_per_round(tmp_path: Path) -> None:
    fresh = run(
        "abcde", SecAggPlan(enabled=True, threshold=3), offline="bd", files_dir=tmp_path / "1"
    )
    batched = run(
        "abcde",
        SecAggPlan(enabled=True, threshold=3, key_batch=3),
        offline="bd",
        files_dir=tmp_path / "3",
    )
    for left, right in zip(fresh.model.parameters(), batched.model.parameters(), strict=True):
        assert torch.equal(left, right)
    assert [r.sites for r in batched.history] == [tuple("abcde")] * 4
    for site in "bd":
        before = bundles(tmp_path / "1" / "coordinator" / "inbox", sender=site)
        after = bundles(tmp_path / "3" / "coordinator" / "inbox", sender=site)
        # After the study each hospital sends its evaluation of the final model (round 0).
        assert before.pop((0, "final_evaluation")) == after.pop((0, "final_evaluation")) == 1
        received = bundles(tmp_path / "3" / site / "inbox")
        assert per_round(before) == {1: 5, 2: 5, 3: 5, 4: 5}
        # Set-up in round 1, its two slots used in rounds 2 and 3, spent: a new set-up in 4.
        assert per_round(after) == {1: 3, 2: 1, 3: 1, 4: 3}
        assert after[(2, "masked")] == after[(3, "masked")] == 1
        # The study's end (with the final model) names no round.
        assert received.pop((0, "study_end")) == 1
        assert per_round(received) == {1: 3, 2: 1, 3: 1, 4: 3}
        assert received[(2, "train_task")] == received[(3, "train_task")] == 1
        assert not (tmp_path / "3" / "coordinator" / "inbox" / "rejected").exists()
        assert not (tmp_path / "3" / site / "inbox" / "rejected").exists()


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every site's encoded vector per round, and every sum the coordinator unmasked."""
    seen: dict[str, Any] = {"encoded": {}, "sums": []}
    encode, decode = SecureRounds._encode, UpdateLayout.decode

    def recording_encode(self: SecureRounds, task: Any, train: Any) -> UpdateLayout:
        layout = encode(self, task, train)
        vector = self._encoded[(task.header.study, task.header.round)].vector
        seen["encoded"][(self.site_id, task.header.round)] = vector.copy()
        seen["bits"] = layout.quantizer.modulus_bits
        return layout

    def recording_decode(self: UpdateLayout, total: Any) -> Any:
        seen["sums"].append(np.array(total, copy=True))
        return decode(self, total)

    monkeypatch.setattr(SecureRounds, "_encode", recording_encode)
    monkeypatch.setattr(UpdateLayout, "decode", recording_decode)
    return seen


def test_every_round_is_the_exact_sum_of_its_survivors_through_dropouts(
    tmp_path: Path, recorded: dict[str, Any]
) -> None:
    dropouts = {
        ("f", 1, "confirm"),  # online, vanishes before confirming the set-up round: b, d asked
        ("d", 2, "train"),  # on files, misses round 2: its slot-2 masks are removed
        ("a", 3, "train"),  # online, misses round 3: too few online survivors, b, d asked
    }
    result = run(
        "abcdef",
        SecAggPlan(enabled=True, threshold=4, key_batch=4),
        offline="bd",
        files_dir=tmp_path,
        drop=lambda site, round_, stage: (site, round_, stage) in dropouts,
    )
    survivors = [r.sites for r in result.history]
    assert survivors == [tuple("abcdef"), tuple("abcef"), tuple("bcdef"), tuple("abcdef")]
    assert len(recorded["sums"]) == 4
    for round_, (sites, total) in enumerate(zip(survivors, recorded["sums"], strict=True), 1):
        vectors = [recorded["encoded"][(s, round_)] for s in sites]
        expected = modular_sum(vectors, recorded["bits"], len(vectors[0]))
        assert [int(v) for v in total] == expected
    written = {s: bundles(tmp_path / "coordinator" / "inbox", sender=s) for s in "bd"}
    # Round 1: set-up and, after f vanished, the confirmation and unmask stages too.
    assert per_round(written["b"])[1] == 5
    # Round 2: d's slot is simply dropped; b answers its task and nothing else.
    assert per_round(written["b"])[2] == 1
    assert 2 not in per_round(written["d"])
    # Round 3: three online survivors are below the threshold of 4: b and d are asked.
    assert per_round(written["b"])[3] == per_round(written["d"])[3] == 3
    # Round 4: back to one bundle each.
    assert per_round(written["b"])[4] == per_round(written["d"])[4] == 1


def test_a_site_that_missed_the_set_up_sits_the_batch_out_and_joins_the_next(
    recorded: dict[str, Any],
) -> None:
    result = run(
        "abcde",
        SecAggPlan(enabled=True, threshold=3, key_batch=3),
        drop=lambda site, round_, stage: (site, round_, stage) == ("e", 1, "keys"),
    )
    assert [r.sites for r in result.history] == [tuple("abcd")] * 3 + [tuple("abcde")]
    # It trained in round 1 (before the set-up failed for it) and round 4, never in 2 or 3:
    # a round it could not take part in cost it no privacy budget.
    assert sorted(r for s, r in recorded["encoded"] if s == "e") == [1, 4]


def test_an_aborted_attempt_burns_its_slot_and_the_retry_takes_the_next() -> None:
    plan = SecAggPlan(enabled=True, threshold=3, key_batch=3)
    sim = Simulation(
        model_fn=lambda: nn.Linear(5, 2),
        sites={s: data(i) for i, s in enumerate("abcd")},
        secagg=plan,
    )
    identities = sim._identities()
    assert identities is not None
    transport = InMemoryTransport()
    torch.manual_seed(0)
    coordinator = PushingCoordinator(
        federation="simulation",
        study="study",
        sites=list("abcd"),
        weights=get_weights(nn.Linear(5, 2)),
        strategy=make_strategy("fedavg"),
        plan=TrainingPlan(batch_size=16, seed=1),
        mailbox=transport,
        secagg=plan,
        peers=identities.sites,
    )
    sites = [
        Site(
            name,
            federation="simulation",
            model=nn.Linear(5, 2),
            train=TensorDataset(*data(i)),
            test=None,
            link=transport,
            signer=identities.signers[name],
            peers=identities.sites,
        )
        for i, name in enumerate("abcd")
    ]

    def drive(silent: set[str] = set()) -> None:  # noqa: B006 - never mutated
        for _ in range(8):
            for site in sites:
                while (env := transport.fetch(site.id)) is not None:
                    if site.id not in silent:
                        for reply in site.handle(env):
                            transport.submit(reply)
            coordinator.receive()
            secure = coordinator.secure_round
            if coordinator.complete or (secure is not None and secure.aborted):
                return
            coordinator.advance(force=True)

    def slot() -> tuple[int, int | None]:
        secure = coordinator.secure_round
        assert secure is not None
        assert secure.key_slot is not None
        return secure.key_slot.round, secure.key_slot.slot

    coordinator.start_round()
    assert slot() == (1, 0)  # a new batch, set up in round 1
    drive()
    coordinator.close_round()
    coordinator.start_round()
    assert slot() == (1, 1)
    drive(silent={"c", "d"})  # two masked inputs, threshold 3: the attempt aborts
    assert coordinator.secure_round is not None
    assert coordinator.secure_round.aborted is not None
    coordinator.retry()
    assert slot() == (1, 2)  # slot 1 is burnt; a and b mask the same update with slot 2
    drive()
    assert coordinator.close_round().sites == tuple("abcd")
    coordinator.start_round()
    assert slot() == (3, 0)  # every slot taken: round 3 sets up a new batch
    drive()
    assert coordinator.close_round().sites == tuple("abcd")
