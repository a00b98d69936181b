"""Hospitals on files in an asynchronous study: the online ones do not wait for the courier.

Four sites learn the same rule; ``b`` and ``c`` are on files and their courier brings a reply
back three model versions after the task it answers. With synchronous rounds every round would
wait for it; with ``[aggregation] mode = "async"`` the online sites make a version per pass and
the offline replies count when they arrive, discounted by ``(1 + 3) ** -0.5 = 0.5``. The demo
reports such a run, and the coordinator service opens the next version without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from alliance.cli.app import _print_offline_async
from alliance.cli.common import console
from alliance.coordinator.service import ALIVE_S, CoordinatorService
from alliance.core.errors import ConfigError
from alliance.crypto import CertificateAuthority, Role, Signer, TrustStore
from alliance.crypto.verifier import MessageVerifier
from alliance.data.synth import CohortConfig, scaled_hospitals
from alliance.evaluation.report import render_report
from alliance.protocol.aggregation import AggregationMode, AggregationPlan
from alliance.protocol.codec import decode_signed, encode_signed
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import ModelUpdate, TrainingPlan, TrainTask
from alliance.protocol.model_spec import NoOptions, register_model_options
from alliance.sim.demo import DemoConfig, run_demo
from alliance.sim.simulation import Simulation, SimulationResult
from alliance.store.audit import AuditLog
from alliance.store.memory import MemoryStore

SITES = ("a", "b", "c", "d")
OFFLINE = ("b", "c")
ROUNDS = 8
ASYNC = AggregationPlan(AggregationMode.ASYNC)


def data(seed: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def run(
    tmp_path: Path | None = None,
    *,
    offline: tuple[str, ...] = (),
    aggregation: AggregationPlan | None = None,
    courier_delay: int = 3,
) -> SimulationResult:
    return Simulation(
        model_fn=lambda: nn.Linear(5, 2),
        sites={s: data(i) for i, s in enumerate(SITES)},
        test={s: data(10 + i, 16) for i, s in enumerate(SITES)},
        rounds=ROUNDS,
        plan=TrainingPlan(local_epochs=1, batch_size=16, learning_rate=0.1, seed=1),
        seed=1,
        offline=offline,
        files_dir=tmp_path,
        aggregation=aggregation,
        courier_delay=courier_delay,
    ).run()


def accuracy(result: SimulationResult) -> float:
    x, y = data(99, 4000)
    with torch.no_grad():
        return float((result.model(x).argmax(1) == y).float().mean())


def same_weights(left: SimulationResult, right: SimulationResult) -> bool:
    pairs = zip(left.model.parameters(), right.model.parameters(), strict=True)
    return all(torch.equal(a, b) for a, b in pairs)


def test_late_updates_from_sites_on_files_count_and_accuracy_matches_sync(
    tmp_path: Path,
) -> None:
    sync = run()
    mixed = run(tmp_path, offline=OFFLINE, aggregation=ASYNC)
    assert len(mixed.history) == ROUNDS
    # Tasks of versions 0 and 4 came back 3 versions late, in rounds 4 and 8.
    late = {r.round: {s: t for s, t in r.staleness.items() if t} for r in mixed.history}
    assert late == {r: ({"b": 3, "c": 3} if r in (4, 8) else {}) for r in range(1, ROUNDS + 1)}
    for record in mixed.history:
        assert set(record.sites) == ({"a", "b", "c", "d"} if record.round in (4, 8) else {"a", "d"})
    # 64 cases each: online 64, late 64 / 2, so shares 1/3 and 1/6.
    assert mixed.history[3].shares == pytest.approx(
        {"a": 1 / 3, "b": 1 / 6, "c": 1 / 6, "d": 1 / 3}
    )
    # No superseded task was handed out while a reply was on the road: two tasks and the end.
    for site in OFFLINE:
        assert len(list((tmp_path / site / "inbox" / "done").iterdir())) == 3
    replies = sorted((tmp_path / "coordinator" / "inbox" / "done").iterdir())
    # Two updates from each, and each one's evaluation of the final model after the study.
    assert len([f for f in replies if ".model_update." in f.name]) == 4
    assert len([f for f in replies if ".final_evaluation." in f.name]) == len(OFFLINE)
    assert abs(accuracy(mixed) - accuracy(sync)) <= 0.03
    assert accuracy(mixed) > 0.9
    assert not same_weights(mixed, sync)


def test_without_late_updates_async_rounds_are_the_synchronous_ones(tmp_path: Path) -> None:
    sync = run()
    assert same_weights(run(aggregation=ASYNC), sync)
    # A courier that comes back within the version: every update is fresh.
    assert same_weights(run(tmp_path, offline=OFFLINE, aggregation=ASYNC, courier_delay=0), sync)


def test_a_courier_slower_than_max_staleness_brings_nothing_that_counts(tmp_path: Path) -> None:
    strict = AggregationPlan(AggregationMode.ASYNC, max_staleness=2)
    mixed = run(tmp_path, offline=OFFLINE, aggregation=strict)
    assert all(set(r.sites) == {"a", "d"} for r in mixed.history)
    # Each expired task was replaced by a task of the current version (rounds 1, 4, 7).
    for site in OFFLINE:
        assert len(list((tmp_path / site / "inbox" / "done").iterdir())) == 4
    assert accuracy(mixed) > 0.9


def test_courier_delay_must_be_a_whole_number_of_versions() -> None:
    with pytest.raises(ConfigError, match="courier_delay must be an integer >= 0"):
        Simulation(model_fn=lambda: nn.Linear(5, 2), sites={"a": data(0)}, courier_delay=-1)


@pytest.mark.slow
def test_the_demo_reports_the_asynchronous_run_with_hospitals_on_files(tmp_path: Path) -> None:
    cfg = DemoConfig(
        rounds=3,
        hospitals=scaled_hospitals(0.1),
        cohort=CohortConfig(n_diseases=60),
        offline=2,
        offline_aggregation=(AggregationMode.ASYNC,),
        courier_delay=1,
    )
    metrics = run_demo(cfg).metrics
    assert "offline" not in metrics  # the synchronous run on files was not asked for
    run = metrics["offline_async"]
    names = {s["id"]: s["name"] for s in metrics["sites"]}
    assert {names[s] for s in run["sites"]} == {
        "First Affiliated Hospital of Kunming Medical University",
        "First Affiliated Hospital of Xinjiang Medical University",
    }
    assert (run["buffer"], run["courier_delay"], run["versions"]) == (10, 1, 3)
    # The tasks of round 1 come back in round 2 (counting in version 2); those of round 3
    # would arrive after the study's last version.
    assert sorted((u["site"], u["model_version"]) for u in run["late_updates"]) == sorted(
        (s, 2) for s in run["sites"]
    )
    assert all(u["staleness"] == 1 and u["discount"] == 0.7071 for u in run["late_updates"])
    assert all(0 < u["share"] < 0.2 for u in run["late_updates"])
    assert run["contributions"] == {s: 1 for s in run["sites"]}
    assert set(run["online_contributions"].values()) == {3}
    assert 0 < run["overall"]["top10"] <= 1
    html = render_report(metrics)
    assert "Rounds that do not wait for the courier" in html
    assert "×0.71" in html
    with console.capture() as captured:
        _print_offline_async(metrics)
    assert "2 of their replies counted, τ = 1 versions late, each weighing ×0.71" in (
        " ".join(captured.get().split())
    )


class _TinyModel:
    """A study model kind small enough for a service test (no cases are ever loaded)."""

    kind = "tiny"

    @staticmethod
    def check(table: Mapping[str, object]) -> None:
        """The tiny model takes no options."""
        if dict(table) != {"kind": "tiny"}:
            raise ConfigError(f"[model] the tiny model takes no options, got {dict(table)}")

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Linear(3, 2)

    def load(self, source: object) -> object:
        raise NotImplementedError("the service test trains nowhere")

    def collate(self, items: list[object]) -> object:
        raise NotImplementedError("the service test trains nowhere")


# Study files may name the tiny model (it takes no options).
register_model_options(_TinyModel.kind, NoOptions.from_table)


def test_the_service_opens_the_next_version_at_once_and_counts_a_late_update(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.create("fed")
    coordinator = ca.issue(COORDINATOR, Role.COORDINATOR, hosts=["127.0.0.1"])
    signers = {
        s: Signer(p.signing_key, p.certificate)
        for s in ("site-a", "site-b", "site-c")
        for p in [ca.issue(s, Role.SITE)]
    }
    now = [time.time()]
    service = CoordinatorService(
        federation="fed",
        store=MemoryStore(),
        signer=Signer(coordinator.signing_key, coordinator.certificate),
        trust=TrustStore(ca.certificate),
        audit=AuditLog(tmp_path / "audit.log", actor=COORDINATOR),
        model_kind=lambda table: _TinyModel(),  # type: ignore[arg-type,return-value]
        model_check=_TinyModel.check,
        clock=lambda: now[0],
    )
    service.submit_study(
        "operator",
        '[study]\nid = "s"\nrounds = 3\nsites = ["site-a", "site-b", "site-c"]\n'
        '[model]\nkind = "tiny"\n[aggregation]\nmode = "async"\nbuffer = 1\n',
    )
    for site in signers:
        assert service.next_message(site, 0) is None
    service.tick()

    def task(site: str) -> TrainTask:
        data = service.next_message(site, 0)
        assert data is not None
        verify = MessageVerifier(TrustStore(ca.certificate), role=Role.COORDINATOR)
        return TrainTask.from_envelope(decode_signed(data, verify).envelope)

    def answer(site: str, got: TrainTask) -> str:
        header = Header(MessageKind.MODEL_UPDATE, "fed", "s", got.header.round, site, COORDINATOR)
        delta = {k: np.full_like(v, 0.1) for k, v in got.weights.items()}
        update = ModelUpdate(header, got.model_version, 8, delta, {"train_loss": 1.0})
        return service.submit_update(site, encode_signed(update.to_envelope(), signers[site]))

    first_a, first_c = task("site-a"), task("site-c")
    assert (first_a.header.round, first_c.model_version) == (1, 0)
    assert answer("site-a", first_a) == "accepted"
    now[0] += ALIVE_S + 1  # nobody has polled for a while: an async round waits for no one
    service.tick()
    status = service.study_status("s")
    assert status["rounds_closed"] == 1
    assert status["open_round"]["round"] == 2
    assert status["open_round"]["participants"] == ["site-a", "site-b", "site-c"]
    # site-c answers the version it was given, now one version old.
    assert answer("site-c", first_c) == "accepted"
    service.tick()
    status = service.study_status("s")
    assert status["history"][1]["staleness"] == {"site-c": 1}
    assert status["history"][1]["shares"] == {"site-c": 1.0}
    assert status["open_round"]["round"] == 3
    assert task("site-c").model_version == 2
