"""Secure aggregation's cost: round time and bytes per site, secure vs plaintext, 12 sites.

Runs the same FedAvg study of the 12 demo hospitals (the synthetic cohort at ``--scale``, the
phenotype ranker at about 1M and 10M parameters) through :class:`alliance.sim.Simulation`
twice per size, one variant after the other in one process: plaintext rounds, then secure rounds
(the full protocol: signed key adverts with certificates from an in-memory CA, sealed Shamir
shares, masked uint32 vectors, consistency check, unmasking). Every message is encoded and
decoded as on the wire. Timed: rounds 2.. (round 1 carries start-up), from the end of one round
to the end of the next. Bytes: what each site sent to the coordinator per round (encoded
messages), and what it received.

The simulation runs the sites one after the other on one process; in a deployment they mask in
parallel and only the coordinator's unmasking is serial. ``--deployment`` therefore also runs
both studies on the real deployment (``alliance coordinator serve`` and 12 ``alliance site run``
processes over mutual TLS, the harness of ``tests/e2e/deployment.py``, 512 training cases), one
study after the other, and times rounds 2.. from the coordinator's ``round_closed`` events.

Usage::

    python bench/secure_round.py                 # 1M and 10M, 4 rounds, simulation
    python bench/secure_round.py --sizes 1M --rounds 3
    python bench/secure_round.py --deployment    # also the networked deployment

Prints a table and writes ``bench/results/secure_round.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alliance.algorithms.strategies import make_strategy
from alliance.data.ontology import load_ontology
from alliance.data.synth import CohortConfig, generate_consortium, scaled_hospitals
from alliance.models.features import PhenotypeFeatures
from alliance.models.ranker import CaseDataset, PhenotypeRanker
from alliance.models.training import get_weights
from alliance.protocol import TrainingPlan
from alliance.protocol.envelope import COORDINATOR
from alliance.protocol.privacy import SecAggPlan
from alliance.sim import Simulation

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the deployment harness lives in tests/e2e
    sys.path.insert(0, str(ROOT))
SIZES = {"1M": 24, "10M": 249}


def _variant(
    features: PhenotypeFeatures,
    sites: dict[str, CaseDataset],
    *,
    dim: int,
    rounds: int,
    secure: bool,
) -> dict[str, Any]:
    def fresh() -> PhenotypeRanker:
        torch.manual_seed(7)
        return PhenotypeRanker(features, dim=dim, seed=7)

    ends: list[float] = []
    sent: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    received: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    current = {"round": 1}

    def tap(sender: str, recipient: str, data: bytes) -> None:
        if recipient == COORDINATOR:
            sent[current["round"]][sender] += len(data)
        elif sender == COORDINATOR:
            received[current["round"]][recipient] += len(data)

    def on_round(record: Any) -> None:
        ends.append(time.perf_counter())
        current["round"] = record.round + 1

    start = time.perf_counter()
    result = Simulation(
        model_fn=fresh,
        sites=sites,
        strategy=make_strategy("fedavg", server_lr=2.0),
        rounds=rounds,
        plan=TrainingPlan(local_epochs=1, batch_size=64, learning_rate=0.01, seed=7),
        collate_fn=features.collate,
        seed=7,
        on_round=on_round,
        tap=tap,
        secagg=SecAggPlan(enabled=True) if secure else None,
    ).run()
    per_round = [b - a for a, b in zip([start, *ends[:-1]], ends, strict=True)][1:]
    steady = [r for r in sent if r >= 2]
    return {
        "round_seconds": per_round,
        "median_round_s": statistics.median(per_round),
        "bytes_sent_per_site": {
            s: int(np.median([sent[r][s] for r in steady])) for s in sorted(sites)
        },
        "bytes_received_per_site": {
            s: int(np.median([received[r][s] for r in steady])) for s in sorted(sites)
        },
        "weights": get_weights(result.model),
    }


def _deployment_rounds(d: Any, text: str, study_id: str) -> dict[str, Any]:
    """Run ``text`` on the deployment ``d``; seconds between consecutive round closes."""
    from tests.e2e.deployment import approve

    from alliance.store.sql import SqlStore

    approve(d, text)
    if d.coordinator is None or d.coordinator.poll() is not None:
        d.start_coordinator()
    d.submit(text)
    d.site_procs = {}
    for site in d.sites:
        d.start_site(site)
    d.wait_sites(3000)
    store = SqlStore(f"sqlite:///{d.coordinator_dir / 'coordinator.db'}")
    try:
        closes = sorted(e.at for _, e in store.events(study_id) if e.kind == "round_closed")
    finally:
        store.close()
    per_round = [b - a for a, b in itertools.pairwise(closes)]
    sent: dict[str, int] = defaultdict(int)
    for line in (d.coordinator_dir / "audit.log").read_text().splitlines():
        entry = json.loads(line)
        details = entry.get("details", {})
        if details.get("study") == study_id and entry["event"] in (
            "update_received",
            "secagg_received",
        ):
            sent[details["site"]] += int(details["bytes"])
    rounds = len(closes)
    return {
        "round_seconds": per_round,
        "median_round_s": statistics.median(per_round),
        "bytes_sent_per_site": int(np.median([v / rounds for v in sent.values()])),
    }


def deployment(sizes: list[str], rounds: int) -> list[dict[str, Any]]:
    """Plaintext and secure studies on the real deployment, per model size."""
    import tempfile

    from tests.e2e.deployment import provision, study_text

    rows = []
    with tempfile.TemporaryDirectory(prefix="alliance-secure-bench-") as tmp:
        d = provision(Path(tmp), scale=0.1, n_diseases=120)
        try:
            for size in sizes:
                dim = SIZES[size]
                out: dict[str, Any] = {"size": size}
                for variant, extra in (("plain", ""), ("secure", "\n[secure_aggregation]\n")):
                    study_id = f"{variant}-{size.lower()}"
                    text = study_text(
                        study_id, d.sites, rounds=rounds, quorum=12, timeout_s=900, extra=extra
                    ).replace("dim = 32", f"dim = {dim}")
                    out[variant] = _deployment_rounds(d, text, study_id)
                out["ratio"] = out["secure"]["median_round_s"] / out["plain"]["median_round_s"]
                rows.append(out)
        finally:
            d.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1M,10M", help="Comma-separated: 1M, 10M.")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument(
        "--deployment", action="store_true", help="Also time the networked deployment."
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    onto = load_ontology()
    features = PhenotypeFeatures(onto, onto.catalogue())
    cohorts = generate_consortium(
        onto, features.catalogue, scaled_hospitals(args.scale), CohortConfig(seed=7)
    )
    sites = {c.hospital.id: CaseDataset(features.encode(c.train)) for c in cohorts if c.train}
    rows = []
    for size in args.sizes.split(","):
        dim = SIZES[size.strip()]
        plain = _variant(features, sites, dim=dim, rounds=args.rounds, secure=False)
        secure = _variant(features, sites, dim=dim, rounds=args.rounds, secure=True)
        n_params = sum(int(w.size) for w in plain["weights"].values())
        drift = max(
            float(np.abs(plain["weights"][k] - secure["weights"][k]).max())
            for k in plain["weights"]
        )
        rows.append(
            {
                "size": size.strip(),
                "parameters": n_params,
                "sites": len(sites),
                "plain_round_s": plain["median_round_s"],
                "secure_round_s": secure["median_round_s"],
                "ratio": secure["median_round_s"] / plain["median_round_s"],
                "plain_bytes_sent_per_site": int(
                    np.median(list(plain["bytes_sent_per_site"].values()))
                ),
                "secure_bytes_sent_per_site": int(
                    np.median(list(secure["bytes_sent_per_site"].values()))
                ),
                "secure_bytes_received_per_site": int(
                    np.median(list(secure["bytes_received_per_site"].values()))
                ),
                "max_weight_difference": drift,
                "plain_round_seconds": plain["round_seconds"],
                "secure_round_seconds": secure["round_seconds"],
            }
        )
    print(
        f"{'size':>5} {'params':>11} {'plain s':>8} {'secure s':>9} {'ratio':>6} "
        f"{'sent/site plain':>16} {'sent/site secure':>17} {'max |Δw|':>9}"
    )
    for r in rows:
        print(
            f"{r['size']:>5} {r['parameters']:>11,} {r['plain_round_s']:>8.2f} "
            f"{r['secure_round_s']:>9.2f} {r['ratio']:>6.2f} "
            f"{r['plain_bytes_sent_per_site']:>16,} {r['secure_bytes_sent_per_site']:>17,} "
            f"{r['max_weight_difference']:>9.2e}"
        )
    networked = []
    if args.deployment:
        networked = deployment([x.strip() for x in args.sizes.split(",")], args.rounds)
        print(f"\n{'deployment':>10} {'plain s':>8} {'secure s':>9} {'ratio':>6} "
              f"{'sent/site plain':>16} {'sent/site secure':>17}")  # fmt: skip
        for r in networked:
            print(
                f"{r['size']:>10} {r['plain']['median_round_s']:>8.2f} "
                f"{r['secure']['median_round_s']:>9.2f} {r['ratio']:>6.2f} "
                f"{r['plain']['bytes_sent_per_site']:>16,} "
                f"{r['secure']['bytes_sent_per_site']:>17,}"
            )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "secure_round.json"
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "cpus": torch.get_num_threads(),
                },
                "rounds": args.rounds,
                "scale": args.scale,
                "rows": rows,
                "deployment": networked,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
