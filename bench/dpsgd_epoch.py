"""Cost of patient-level DP-SGD: one private epoch against one plain epoch, and against Opacus.

What it measures
----------------
Wall time of one epoch of

- ``plain``: :func:`alliance.models.training.train_locally` (Adam, shuffled batches);
- ``ours``: :func:`alliance.privacy.dpsgd.train_privately` with the automatic clipping method
  (closed-form per-example norms for ``nn.Linear`` and the ranker; Poisson sampling and noise
  from :class:`~alliance.privacy.noise.SecureGaussian`);
- ``ours (torch.func)``: the same with ``ClipMethod.VMAP``, the generic fallback (MLP only:
  ``vmap`` cannot batch the ranker's sparse CSR products);
- ``opacus``: Opacus 1.6's ``PrivacyEngine.make_private`` with its default per-sample hooks
  (``grad_sample_mode="hooks"``), Poisson sampling, Adam; only the epoch loop is timed (setup
  excluded), while ``plain`` and ``ours`` include their whole call.

on two workloads: an MLP 13→64→64→2 on synthetic rows at batch 32, and the rare-disease ranker
at demo size (full OMIM catalogue, ``dim`` 32) on one demo hospital's training cases at the
demo's batch 64. Each repeat runs every variant once, interleaved, from the same initial
weights; the first repeat is a warm-up and is dropped; the median of the rest is reported, with
ratios to ``plain``. Both the wall time and the CPU time of this process are recorded: on the
shared 2-core development VM other users' load inflates wall times by up to 3× from one run to
the next, while CPU time (one torch thread, so CPU ≈ wall on a quiet machine) is what the
variants themselves cost; the ratios quoted are CPU-time ratios, wall-time ratios are printed
beside them. It also times the noise sampler per million float32 normals. σ = 1, C = 1.
Nothing here asserts a time.

How to run
----------
From the repository root::

    /tmp/venv/bin/python bench/dpsgd_epoch.py                 # under a minute on 2 cores
    /tmp/venv/bin/python bench/dpsgd_epoch.py --repeats 3 --threads 2 --out FILE

The table goes to stdout, the settings and every timing to ``bench/results/dpsgd_epoch.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import opacus
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from alliance.data.ontology import load_ontology
from alliance.data.synth import CohortConfig, generate_consortium, scaled_hospitals
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import CaseDataset, PhenotypeRanker
from alliance.models.training import get_weights, set_weights, train_locally
from alliance.privacy.clipping import ClipMethod
from alliance.privacy.dpsgd import DPSGDConfig, train_privately
from alliance.privacy.noise import SecureGaussian

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "dpsgd_epoch.json"
CONFIG = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0)


class Workload:
    """A model factory, a dataset and the training settings of one row of the table."""

    def __init__(
        self,
        name: str,
        build: Callable[[], nn.Module],
        data: Dataset[Any],
        *,
        batch_size: int,
        learning_rate: float,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        vmap_ok: bool = True,
    ) -> None:
        self.name = name
        self.data = data
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.collate_fn = collate_fn
        self.vmap_ok = vmap_ok
        model = build()
        self.build = build
        self.start = get_weights(model)
        self.n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def fresh(self) -> nn.Module:
        model = self.build()
        set_weights(model, self.start)
        return model


def mlp_workload(rows: int) -> Workload:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 13, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] - 0.3 * x[:, 2] > 0).long()

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
        )

    return Workload(
        f"MLP 13-64-64-2, n={rows}",
        build,
        TensorDataset(x, y),
        batch_size=32,
        learning_rate=1e-3,
    )


def ranker_workload(hospital: str) -> Workload:
    onto = load_ontology()
    features = PhenotypeFeatures(onto, onto.catalogue())
    cohorts = generate_consortium(onto, features.catalogue, scaled_hospitals(1.0), CohortConfig())
    site = next(c for c in cohorts if c.hospital.id == hospital)
    data = CaseDataset(features.encode(site.train))
    return Workload(
        f"PhenotypeRanker dim 32, {hospital} n={len(data)}",
        lambda: PhenotypeRanker(features, dim=32, seed=7),
        data,
        batch_size=64,
        learning_rate=0.01,
        collate_fn=features.collate,
        vmap_ok=False,
    )


Timing = tuple[float, float]  # wall seconds, CPU seconds of this process


def clock() -> Timing:
    return time.perf_counter(), time.process_time()


def since(start: Timing) -> Timing:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def run_plain(w: Workload) -> Timing:
    model = w.fresh()
    start = clock()
    train_locally(
        model,
        w.data,
        epochs=1,
        batch_size=w.batch_size,
        learning_rate=w.learning_rate,
        seed=0,
        collate_fn=w.collate_fn,
    )
    return since(start)


def run_ours(w: Workload, method: ClipMethod = ClipMethod.AUTO) -> Timing:
    model = w.fresh()
    start = clock()
    train_privately(
        model,
        w.data,
        config=CONFIG,
        epochs=1,
        batch_size=w.batch_size,
        learning_rate=w.learning_rate,
        seed=0,
        collate_fn=w.collate_fn,
        clip_method=method,
    )
    return since(start)


def run_opacus(w: Workload) -> Timing:
    model = w.fresh()
    opt = torch.optim.Adam(model.parameters(), lr=w.learning_rate)
    loader = DataLoader(w.data, batch_size=w.batch_size, collate_fn=w.collate_fn)
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off (its noise is not from a CSPRNG) and about
        # full backward hooks on inputs without grad: both expected here.
        warnings.simplefilter("ignore")
        model, opt, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=CONFIG.noise_multiplier,
            max_grad_norm=CONFIG.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode="hooks",
        )
        model.train()
        start = clock()
        for inputs, targets in loader:
            opt.zero_grad(set_to_none=True)
            out = model(*inputs) if isinstance(inputs, tuple | list) else model(inputs)
            nn.functional.cross_entropy(out, targets).backward()
            opt.step()
        return since(start)


def time_noise(repeats: int) -> dict[str, float]:
    source = SecureGaussian()
    times: dict[str, list[float]] = {"secure_gaussian_ms": [], "torch_randn_ms": []}
    for _ in range(repeats + 1):
        start = time.perf_counter()
        source.sample(1_000_000, std=1.0)
        times["secure_gaussian_ms"].append(1e3 * (time.perf_counter() - start))
        start = time.perf_counter()
        torch.randn(1_000_000)
        times["torch_randn_ms"].append(1e3 * (time.perf_counter() - start))
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def measure(w: Workload, repeats: int) -> dict[str, Any]:
    variants: dict[str, Callable[[], Timing]] = {
        "plain": lambda: run_plain(w),
        "ours": lambda: run_ours(w),
    }
    if w.vmap_ok:
        variants["ours (torch.func)"] = lambda: run_ours(w, ClipMethod.VMAP)
    variants["opacus"] = lambda: run_opacus(w)
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    failures: dict[str, str] = {}
    for rep in range(repeats + 1):
        for name, fn in variants.items():
            if name in failures:
                continue
            try:
                seconds = fn()
            except Exception as exc:  # a reference that cannot run this model is reported
                failures[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                continue
            if rep > 0:  # the first repeat warms up caches and lazy imports
                wall[name].append(seconds[0])
                cpu[name].append(seconds[1])
        print(f"  {w.name}: repeat {rep}/{repeats} done", file=sys.stderr)
    wall_med = {k: statistics.median(v) for k, v in wall.items() if v}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items() if v}
    return {
        "workload": w.name,
        "parameters": w.n_params,
        "examples": len(w.data),  # type: ignore[arg-type]
        "batch_size": w.batch_size,
        "steps_per_epoch": -(-len(w.data) // w.batch_size),  # type: ignore[arg-type]
        "wall_s": wall,
        "cpu_s": cpu,
        "median_wall_s": wall_med,
        "median_cpu_s": cpu_med,
        "ratio_to_plain_cpu": {k: v / cpu_med["plain"] for k, v in cpu_med.items()},
        "ratio_to_plain_wall": {k: v / wall_med["plain"] for k, v in wall_med.items()},
        "failed": failures,
    }


def print_table(rows: list[dict[str, Any]], noise: dict[str, float], repeats: int) -> None:
    print(
        f"DP-SGD epoch cost (σ={CONFIG.noise_multiplier}, C={CONFIG.max_grad_norm}), "
        f"torch {torch.__version__}, opacus {opacus.__version__}, "
        f"{torch.get_num_threads()} torch thread(s); median of {repeats} runs after a warm-up"
    )
    header = (
        f"{'workload':<40}{'params':>11}{'variant':>19}"
        f"{'CPU s':>9}{'× plain':>9}{'wall s':>9}{'× plain':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        first = True
        for variant in ("plain", "ours", "ours (torch.func)", "opacus"):
            label = row["workload"] if first else ""
            params = f"{row['parameters']:,}" if first else ""
            if variant in row["median_cpu_s"]:
                print(
                    f"{label:<40}{params:>11}{variant:>19}"
                    f"{row['median_cpu_s'][variant]:>9.3f}"
                    f"{row['ratio_to_plain_cpu'][variant]:>9.2f}"
                    f"{row['median_wall_s'][variant]:>9.3f}"
                    f"{row['ratio_to_plain_wall'][variant]:>9.2f}"
                )
            elif variant in row["failed"]:
                print(f"{label:<40}{params:>11}{variant:>19}{'fails':>9}")
            else:
                continue
            first = False
    for row in rows:
        for variant, why in row["failed"].items():
            print(f"{variant} on {row['workload']}: {why}")
    print(
        f"noise: SecureGaussian {noise['secure_gaussian_ms']:.1f} ms per 1M float32 normals "
        f"(torch.randn {noise['torch_randn_ms']:.1f} ms), wall, median"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs after a warm-up")
    parser.add_argument("--rows", type=int, default=4000, help="MLP dataset size")
    parser.add_argument("--hospital", default="tiantan", help="demo hospital for the ranker")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    workloads = [mlp_workload(args.rows), ranker_workload(args.hospital)]
    rows = [measure(w, args.repeats) for w in workloads]
    noise = time_noise(max(args.repeats, 5))
    print_table(rows, noise, args.repeats)
    report = {
        "benchmark": "dpsgd_epoch",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "opacus": opacus.__version__,
            "numpy": np.__version__,
            "machine": platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
        "settings": {
            "noise_multiplier": CONFIG.noise_multiplier,
            "max_grad_norm": CONFIG.max_grad_norm,
            "repeats": args.repeats,
            "warmup_repeats": 1,
            "optimiser": "Adam (all variants)",
            "ratios": "median CPU time (time.process_time) of the variant / of plain",
            "opacus_mode": "PrivacyEngine.make_private, grad_sample_mode='hooks', Poisson",
        },
        "workloads": rows,
        "noise_per_million": noise,
        "elapsed_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
