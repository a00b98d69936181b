"""Hospitals on files: the same rounds, through signed, sealed bundles carried between folders.

- without differential privacy the model is bit for bit the all-online one;
- secure aggregation runs over bundles;
- a replayed bundle changes nothing;
- differential privacy and the hospital's budget apply exactly as online: the same charges in
  each hospital's ledger, and a hospital over its budget declines with a refusal bundle each
  round and spends nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from alliance.privacy.ledger import PrivacyLedger
from alliance.protocol.bundles import peek_header
from alliance.protocol.messages import TrainingPlan
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.sim.simulation import Simulation, SimulationResult

SITES = ("a", "b", "c", "d")


def data(seed: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def run(
    tmp_path: Path | None = None,
    *,
    offline: tuple[str, ...] = (),
    secagg: bool = False,
    rounds: int = 3,
    **kw: Any,
) -> SimulationResult:
    return Simulation(
        model_fn=lambda: nn.Linear(5, 2),
        sites={s: data(i) for i, s in enumerate(SITES)},
        test={s: data(10 + i, 16) for i, s in enumerate(SITES)},
        rounds=rounds,
        plan=TrainingPlan(local_epochs=1, batch_size=16, learning_rate=0.1, seed=1),
        seed=1,
        offline=offline,
        files_dir=tmp_path,
        secagg=SecAggPlan(enabled=True) if secagg else None,
        **kw,
    ).run()


def weights(result: SimulationResult) -> list[torch.Tensor]:
    return [p.detach().clone() for p in result.model.parameters()]


def test_sites_on_files_give_the_same_model_as_all_online(tmp_path: Path) -> None:
    online = run()
    mixed = run(tmp_path, offline=("b", "c"))
    for left, right in zip(weights(online), weights(mixed), strict=True):
        assert torch.equal(left, right)
    assert [r.evaluation() for r in online.history] == [r.evaluation() for r in mixed.history]
    # Every message of b and c travelled as a bundle, and every bundle was accepted once.
    for site in ("b", "c"):
        assert mixed.bytes_sent[site] > 0
        done = list((tmp_path / site / "inbox" / "done").iterdir())
        assert len(done) == 4  # three tasks and the end of the study
        assert not (tmp_path / site / "inbox" / "rejected").exists()
    received = list((tmp_path / "coordinator" / "inbox" / "done").iterdir())
    updates = [p for p in received if ".model_update." in p.name]
    assert len(updates) == 6  # three rounds, two sites
    # and each one's evaluation of the final model it received with the study's end
    assert len([p for p in received if ".final_evaluation." in p.name]) == 2
    assert not (tmp_path / "coordinator" / "inbox" / "rejected").exists()


def test_secure_aggregation_runs_over_bundles(tmp_path: Path) -> None:
    online = run(secagg=True)
    mixed = run(tmp_path, offline=("a", "d"), secagg=True)
    for left, right in zip(weights(online), weights(mixed), strict=True):
        assert torch.allclose(left, right, atol=1e-6)
    assert len(list((tmp_path / "a" / "inbox" / "done").iterdir())) > 3 * 4


def test_a_replayed_bundle_changes_nothing_and_is_set_aside(tmp_path: Path) -> None:
    run(tmp_path, offline=("b",))
    inbox = tmp_path / "coordinator" / "inbox"
    accepted = sorted((inbox / "done").iterdir())[0]
    # Carry an already accepted bundle again: a second run's mailbox must refuse it.
    from alliance.transport.files import BundleLedger

    ledger = BundleLedger(tmp_path / "coordinator" / "state" / "bundles.db")
    try:
        from alliance.protocol.bundles import peek_header

        header = peek_header(accepted.read_bytes())
        assert ledger.seen(header.sender, header.nonce)
        assert not ledger.seen("a", header.nonce)
    finally:
        ledger.close()


def charges(ledgers: Path, site: str) -> list[tuple[object, ...]]:
    """What ``site``'s own ledger charged: study, round, mechanism and how it was released."""
    with PrivacyLedger.open(ledgers / f"{site}.ledger", budget_epsilon=5.0, delta=1e-5) as ledger:
        return [(c.study, c.round, c.event, c.kind) for c in ledger.entries()]


def test_privacy_and_budget_apply_on_files_as_online(tmp_path: Path) -> None:
    privacy = PrivacyPlan(mechanism="dp-sgd", target_epsilon=2.0, rounds=2)
    budgets = dict.fromkeys(SITES, 5.0)
    budgets["a"] = 1.0  # too small for the study: "a" declines every round

    def private(ledgers: Path, files: Path | None = None, **kw: Any) -> SimulationResult:
        return run(
            files,
            secagg=True,
            rounds=2,
            quorum=3,
            privacy=privacy,
            budget_epsilon=budgets,
            ledger_dir=ledgers,
            **kw,
        )

    online = private(tmp_path / "online")
    mixed = private(tmp_path / "mixed", tmp_path / "files", offline=("a", "b"))
    assert [r.sites for r in mixed.history] == [r.sites for r in online.history]
    assert [r.sites for r in mixed.history] == [("b", "c", "d")] * 2
    assert mixed.epsilon == online.epsilon
    assert mixed.epsilon["a"] == 0.0
    assert 1.5 < mixed.epsilon["b"] <= 2.0
    for site in SITES:
        charged = charges(tmp_path / "mixed", site)
        assert charged == charges(tmp_path / "online", site)
        assert len(charged) == (0 if site == "a" else 2)
    # The declining hospital on files said so by bundle, once a round, and nothing else.
    received = tmp_path / "files" / "coordinator" / "inbox" / "done"
    from_a = [peek_header(f.read_bytes()) for f in sorted(received.iterdir())]
    from_a = [h for h in from_a if h.sender == "a"]
    assert [(h.round, h.stage) for h in from_a] == [(1, "refusal"), (2, "refusal")]
