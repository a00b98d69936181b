"""Local step time: the project's training step against a plain tensor-indexed loop.

One federated round's local work at every site (one epoch, a fresh optimiser per site), timed
three ways with the same model, data, optimiser and batch size:

- ``project``: :func:`alliance.models.training.train_locally`, the sites' default step
  (batches gathered by index from the whole site's data);
- ``dataloader`` (the baseline, ``--no-baseline`` to skip): the step as it was before, Adam or
  SGD over a ``DataLoader`` of single items with the study's collate, written out here, and the
  ranker's profile product through ``torch.sparse.mm``'s own backward (which re-sorts the
  profile matrix's transpose every step); it must end with ``project``'s weights, to the bit;
- ``plain``: what a PyTorch user writes with the whole site's data already in tensors:
  ``randperm``, index, forward, backward, step. The ranker's cases are made dense once, before
  the clock starts (a cost ``project`` pays inside it, every round).

Workloads: a 30-class MLP (32 inputs, one hidden layer of 128) over 12 non-IID sites of
5,640 rows in all, batch 32; and the rare-disease ranker (the demo's synthetic cohort and
catalogue, dim 32) at a few demo hospitals, batch 64. Each optimiser (Adam, SGD) is timed;
repeats interleave the variants, and the table shows each variant's median round time in CPU
seconds of this process (one torch thread: other users' load on a shared machine swings wall
time, not CPU time); wall times are in the JSON.

Usage::

    python bench/local_step.py                    # both workloads, 5 repeats
    python bench/local_step.py --quick            # 2 repeats, 2 ranker sites

Prints a table and writes ``bench/results/local_step.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from alliance.data.ontology import load_ontology
from alliance.data.synth import CohortConfig, generate_consortium, scaled_hospitals
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import CaseDataset, PhenotypeRanker
from alliance.models.training import (
    Optimiser,
    call_model,
    get_weights,
    set_weights,
    train_locally,
)

RESULTS = Path(__file__).resolve().parent / "results"
MLP_SITES = (1200, 1000, 900, 700, 500, 400, 300, 250, 180, 120, 60, 30)
RANKER_SITES = ("fuwai", "xiangya", "qilu")
LEARNING_RATE = {Optimiser.ADAM: 0.01, Optimiser.SGD: 0.05}


@dataclass
class Workload:
    """A model, its start weights, each site's data and the batch settings."""

    name: str
    build: Callable[[], nn.Module]
    sites: list[Dataset[Any]]
    batch_size: int
    collate_fn: Callable[[list[Any]], Any] | None
    #: Each site's data as ``(inputs, targets)`` tensors, for the plain loop.
    tensors: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]

    def fresh(self, start: dict[str, Any]) -> nn.Module:
        model = self.build()
        set_weights(model, start)
        return model


def mlp_workload() -> Workload:
    gen = torch.Generator().manual_seed(0)
    centres = 1.5 * torch.randn(30, 32, generator=gen)
    sites: list[Dataset[Any]] = []
    tensors: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]] = []
    for i, n in enumerate(MLP_SITES):
        # Non-IID: each site sees mostly its own third of the classes.
        own = torch.randint(0, 10, (n,), generator=gen) + 10 * (i % 3)
        y = torch.where(torch.rand(n, generator=gen) < 0.8, own, torch.randint(0, 30, (n,)))
        x = torch.randn(n, 32, generator=gen) + centres[y]
        sites.append(TensorDataset(x, y))
        tensors.append(((x,), y))

    def build() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 30))

    return Workload("MLP 32-128-30, 12 sites", build, sites, 32, None, tensors)


def ranker_workload(hospitals: tuple[str, ...]) -> Workload:
    onto = load_ontology()
    features = PhenotypeFeatures(onto, onto.catalogue())
    cohorts = generate_consortium(onto, features.catalogue, scaled_hospitals(1.0), CohortConfig())
    chosen = [c for c in cohorts if c.hospital.id in hospitals]
    sites: list[Dataset[Any]] = [CaseDataset(features.encode(c.train)) for c in chosen]
    tensors: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]] = []
    for data in sites:
        assert isinstance(data, CaseDataset)
        (obs, exc), y = features.collate.gatherer(data.encoded)(torch.arange(len(data)))
        tensors.append(((obs, exc), y))

    def build() -> nn.Module:
        return PhenotypeRanker(features, dim=32, seed=7)

    sizes = "+".join(str(len(d)) for d in sites)  # type: ignore[arg-type]
    name = f"ranker dim 32, {len(sites)} sites ({sizes} cases)"
    return Workload(name, build, sites, 64, features.collate, tensors)


def run_project(model: nn.Module, w: Workload, site: int, opt: Optimiser, seed: int) -> None:
    train_locally(
        model,
        w.sites[site],
        epochs=1,
        batch_size=w.batch_size,
        learning_rate=LEARNING_RATE[opt],
        seed=seed,
        collate_fn=w.collate_fn,
        optimiser=opt,
    )


def run_dataloader(model: nn.Module, w: Workload, site: int, opt: Optimiser, seed: int) -> None:
    """The step before this change: a DataLoader of single items and the study's collate."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        w.sites[site], batch_size=w.batch_size, shuffle=True, generator=gen, collate_fn=w.collate_fn
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = opt.build(params, learning_rate=LEARNING_RATE[opt], weight_decay=0.0)
    model.train()
    for inputs, targets in loader:
        optimiser.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(call_model(model, inputs), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        float(loss.detach())


def run_plain(model: nn.Module, w: Workload, site: int, opt: Optimiser, seed: int) -> None:
    """A plain loop over tensors already in memory: randperm, index, step."""
    inputs, targets = w.tensors[site]
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = opt.build(params, learning_rate=LEARNING_RATE[opt], weight_decay=0.0)
    model.train()
    order = torch.randperm(len(targets), generator=gen)
    for lo in range(0, len(targets), w.batch_size):
        idx = order[lo : lo + w.batch_size]
        optimiser.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(*(x[idx] for x in inputs)), targets[idx])
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        float(loss.detach())


VARIANTS = {"project": run_project, "dataloader": run_dataloader, "plain": run_plain}


class SparseMM:
    """The ranker's profile product before this change: ``torch.sparse.mm`` and its backward."""

    def mm(self, matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.sparse.mm(matrix, dense)
        return out


def time_round(
    w: Workload, variant: str, opt: Optimiser, start: dict[str, Any]
) -> tuple[tuple[float, float], Any]:
    """CPU and wall seconds for one round (every site one epoch from ``start``), and the last
    site's weights."""
    run = VARIANTS[variant]
    models = [w.fresh(start) for _ in w.sites]
    if variant == "dataloader":
        for model in models:
            if isinstance(model, PhenotypeRanker):
                model._profile_product = SparseMM()  # type: ignore[assignment]
    began, cpu = time.perf_counter(), time.process_time()
    for site, model in enumerate(models):
        run(model, w, site, opt, seed=100 + site)
    seconds = time.process_time() - cpu, time.perf_counter() - began
    return seconds, get_weights(models[-1])


def measure(w: Workload, variants: list[str], repeats: int) -> list[dict[str, Any]]:
    start = get_weights(w.build())
    rows = []
    for opt in (Optimiser.ADAM, Optimiser.SGD):
        times: dict[str, list[float]] = {v: [] for v in variants}
        walls: dict[str, list[float]] = {v: [] for v in variants}
        weights: dict[str, Any] = {}
        time_round(w, "project", opt, start)  # warm-up (allocator, kernels)
        for _ in range(repeats):
            for v in variants:
                (cpu, wall), weights[v] = time_round(w, v, opt, start)
                times[v].append(cpu)
                walls[v].append(wall)
        plain = statistics.median(times["plain"])
        same = None
        if "dataloader" in weights:
            p, d = weights["project"], weights["dataloader"]
            same = all(np.array_equal(p[k], d[k]) for k in p)
        for v in variants:
            median = statistics.median(times[v])
            rows.append(
                {
                    "workload": w.name,
                    "optimiser": opt.value,
                    "variant": v,
                    "median_cpu_ms": 1000 * median,
                    "all_cpu_ms": [1000 * t for t in times[v]],
                    "all_wall_ms": [1000 * t for t in walls[v]],
                    "ratio_to_plain": median / plain,
                    "same_weights_as_dataloader": same if v == "project" else None,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 2 ranker sites")
    parser.add_argument("--no-baseline", action="store_true", help="skip the DataLoader loop")
    parser.add_argument("--only", choices=["mlp", "ranker"], help="one workload")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    variants = ["project", "plain"] if args.no_baseline else ["project", "dataloader", "plain"]
    workloads = []
    if args.only in (None, "mlp"):
        workloads.append(mlp_workload())
    if args.only in (None, "ranker"):
        workloads.append(ranker_workload(RANKER_SITES[:2] if args.quick else RANKER_SITES))
    rows = [row for w in workloads for row in measure(w, variants, repeats)]
    print(
        f"Local step, one round (1 epoch per site), median of {repeats}, "
        f"{args.threads} torch thread(s), {platform.processor() or platform.machine()}"
    )
    print(f"{'workload':<44}{'optimiser':>10}{'variant':>12}{'CPU ms':>10}{'/ plain':>9}")
    for r in rows:
        print(
            f"{r['workload']:<44}{r['optimiser']:>10}{r['variant']:>12}"
            f"{r['median_cpu_ms']:>10.1f}{r['ratio_to_plain']:>9.2f}"
        )
    checked = [r for r in rows if r["same_weights_as_dataloader"] is not None]
    if checked:
        same = all(r["same_weights_as_dataloader"] for r in checked)
        print(f"project step ends with the DataLoader loop's weights, to the bit: {same}")
    print("goal: project / plain <= 1.20")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "local_step.json").write_text(
        json.dumps(
            {
                "repeats": repeats,
                "threads": args.threads,
                "rows": rows,
                "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
