"""Overhead of the federation machinery over a plain training loop, and peak memory.

Runs the demo federation (12 hospitals, the synthetic cohort, the rare-disease ranker) through
:class:`alliance.sim.Simulation` — every message encoded, decoded, validated and aggregated by
the real coordinator and site code — and, separately, a plain loop that does the same local
training steps (same sites, seeds, epochs, batches) and averages the weights with numpy, with no
messages at all. Each variant runs in its own process so that its peak memory (max RSS) is its
own. Evaluation is off in both, so only training and federation work is timed.

Usage::

    python bench/federation_overhead.py            # demo size, 10 rounds
    python bench/federation_overhead.py --rounds 3 --scale 0.3

Prints a table and writes ``bench/results/federation_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alliance.data.ontology import load_ontology
from alliance.data.synth import CohortConfig, generate_consortium, scaled_hospitals
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import CaseDataset, PhenotypeRanker
from alliance.models.training import get_weights, set_weights, train_locally
from alliance.protocol import TrainingPlan
from alliance.sim import Simulation
from alliance.site.agent import site_seed

RESULTS = Path(__file__).resolve().parent / "results"


def _setup(scale: float) -> tuple[PhenotypeFeatures, dict[str, CaseDataset]]:
    onto = load_ontology()
    features = PhenotypeFeatures(onto, onto.catalogue())
    cohorts = generate_consortium(onto, features.catalogue, scaled_hospitals(scale), CohortConfig())
    return features, {c.hospital.id: CaseDataset(features.encode(c.train)) for c in cohorts}


def _run_variant(variant: str, rounds: int, scale: float) -> dict[str, Any]:
    torch.set_num_threads(2)
    features, sites = _setup(scale)
    plan = TrainingPlan(local_epochs=1, batch_size=64, learning_rate=0.01, seed=7)

    def fresh() -> PhenotypeRanker:
        torch.manual_seed(7)
        return PhenotypeRanker(features, seed=7)

    start = time.perf_counter()
    if variant == "federated":
        result = Simulation(
            model_fn=fresh,
            sites=sites,
            rounds=rounds,
            plan=plan,
            collate_fn=features.collate,
            seed=7,
        ).run()
        weights = get_weights(result.model)
        sent = sum(result.bytes_sent.values())
    else:
        model, weights, sent = fresh(), get_weights(fresh()), 0
        total = sum(len(d) for d in sites.values())
        for rnd in range(1, rounds + 1):
            mean = {k: np.zeros_like(v, dtype=np.float64) for k, v in weights.items()}
            for name in sorted(sites):
                set_weights(model, weights)
                train_locally(
                    model,
                    sites[name],
                    epochs=plan.local_epochs,
                    batch_size=plan.batch_size,
                    learning_rate=plan.learning_rate,
                    seed=site_seed(plan.seed, rnd, name),
                    collate_fn=features.collate,
                )
                for k, v in get_weights(model).items():
                    mean[k] += (len(sites[name]) / total) * (v - weights[k])
            weights = {k: (weights[k] + mean[k]).astype(np.float32) for k in weights}
    seconds = time.perf_counter() - start
    checksum = float(sum(float(np.abs(v).sum()) for v in weights.values()))
    return {
        "variant": variant,
        "seconds": seconds,
        "bytes_sent": sent,
        "checksum": checksum,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_params": int(sum(v.size for v in weights.values())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--scale", type=float, default=1.0, help="hospital size multiplier")
    parser.add_argument("--variant", choices=["federated", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(_run_variant(args.variant, args.rounds, args.scale)))
        return
    rows = []
    for variant in ("plain", "federated"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--rounds",
                str(args.rounds),
                "--scale",
                str(args.scale),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    plain, fed = rows
    ratio = fed["seconds"] / plain["seconds"]
    print(
        f"Federation overhead — 12 hospitals, {args.rounds} rounds, scale {args.scale}, "
        f"{fed['n_params']:,} parameters, {platform.processor() or platform.machine()}"
    )
    print(f"{'variant':<12}{'seconds':>10}{'peak RSS MiB':>15}{'MB sent':>10}")
    for r in rows:
        print(
            f"{r['variant']:<12}{r['seconds']:>10.1f}{r['peak_rss_mib']:>15.0f}"
            f"{r['bytes_sent'] / 1e6:>10.1f}"
        )
    print(f"time ratio federated / plain: {ratio:.3f} (goal <= 1.10)")
    print(
        "same final weights: "
        f"{abs(fed['checksum'] - plain['checksum']) < 1e-3 * abs(plain['checksum'])}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "federation_overhead.json").write_text(
        json.dumps(
            {
                "rounds": args.rounds,
                "scale": args.scale,
                "runs": rows,
                "ratio": ratio,
                "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
