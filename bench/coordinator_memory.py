"""Coordinator memory while aggregating: O(model size), not O(sites × model size).

What it measures
----------------
A :class:`~alliance.coordinator.Coordinator` (FedAvg) over a synthetic ~10 M parameter model
(float32 numpy arrays, four tensors, 40 MB) accepts one update per site through
``coordinator.accept(envelope)`` (``ModelUpdate(...).to_envelope()``, as
``tests/unit/test_coordinator.py`` builds them), for 3, 6, 12 and 24 sites, over

- :class:`~alliance.store.sql.SqlStore` on a SQLite file (the deployed coordinator's store):
  updates wait on disk and ``close_round`` loads them one at a time, so it should need memory for
  the model only, whatever the number of sites;
- :class:`~alliance.store.memory.MemoryStore` (the simulation's), for comparison: it keeps
  every update in memory by design (the "held" column grows by one model per site); its
  ``close_round`` also unpacks one delta at a time, so only its held memory is O(sites).

Then ``close_round()`` alone is measured: the peak of Python and numpy allocations
(``tracemalloc``, to which numpy reports its buffers) above what was held just before it, and the
peak RSS growth (``VmHWM`` after minus ``VmRSS`` before, with the peak reset through
``/proc/self/clear_refs``; includes what tracemalloc cannot see, such as SQLite's own buffers).
Each (store, sites) runs in a fresh process, so that RSS starts clean. A least-squares line of
each measure against the number of sites gives its growth per site (≈ 0 when streaming).

Usage::

    python bench/coordinator_memory.py                 # 3, 6, 12, 24 sites, both stores
    python bench/coordinator_memory.py --sites 3,12 --params 2e6 --out FILE

Prints a table and writes ``bench/results/coordinator_memory.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from alliance.algorithms.strategies import FedAvg
from alliance.coordinator.rounds import Coordinator
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import ModelUpdate, TrainingPlan
from alliance.protocol.study import StudySpec
from alliance.store.memory import MemoryStore
from alliance.store.sql import SqlStore

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "coordinator_memory.json"
MB = 1e6
STORES = ("sql", "memory")


def synthetic_weights(params: int) -> dict[str, np.ndarray[Any, np.dtype[np.float32]]]:
    """Four float32 tensors, two matrices and their biases, ``params`` parameters in all."""
    cols = 2000
    rows = max(1, round((params - 2 * cols) / (2 * cols)))
    rng = np.random.default_rng(0)
    return {
        "layer1.weight": rng.standard_normal((rows, cols), dtype=np.float32),
        "layer1.bias": np.zeros(cols, np.float32),
        "layer2.weight": rng.standard_normal((cols, rows), dtype=np.float32),
        "layer2.bias": np.zeros(rows, np.float32),
    }


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match[1]) if match else 0


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def measure(store_kind: str, n_sites: int, params: int, workdir: Path) -> dict[str, Any]:
    """One configuration, in this process: accept ``n_sites`` updates, then time close_round."""
    tracemalloc.start()
    weights = synthetic_weights(params)
    model_bytes = sum(int(w.nbytes) for w in weights.values())
    sites = [f"site-{i:02d}" for i in range(n_sites)]
    db = workdir / f"coordinator-{store_kind}-{n_sites}.db"
    store = SqlStore(f"sqlite:///{db}") if store_kind == "sql" else MemoryStore()
    spec = StudySpec.build(study_id="memory", rounds=1, sites=sites, plan=TrainingPlan())
    coord = Coordinator(spec, federation="bench", weights=weights, strategy=FedAvg(), store=store)
    coord.start_round()
    base = {k: np.full_like(v, 1e-3) for k, v in weights.items()}
    for i, site in enumerate(sites):
        delta = {k: v * np.float32(i + 1) for k, v in base.items()}
        header = Header(MessageKind.MODEL_UPDATE, "bench", "memory", coord.round, site, COORDINATOR)
        env = ModelUpdate(header, coord.version, 10 + i, delta, {"train_loss": 1.0}).to_envelope()
        coord.accept(env)
        del delta, env
    del base
    gc.collect()

    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    rss_ok = _reset_peak_rss()
    rss_before = _status_kib("VmRSS")
    start = time.perf_counter()
    coord.close_round()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    hwm = _status_kib("VmHWM")
    tracemalloc.stop()

    expected = sum(10 + i for i in range(n_sites))
    assert coord.history[-1].num_examples == expected
    if isinstance(store, SqlStore):
        store.close()
        for p in workdir.glob(db.name + "*"):
            p.unlink()
    return {
        "store": store_kind,
        "sites": n_sites,
        "params": int(sum(w.size for w in weights.values())),
        "model_mb": model_bytes / MB,
        "held_before_close_mb": held / MB,
        "close_peak_mb": (peak - held) / MB,
        "close_peak_over_model": (peak - held) / model_bytes,
        "rss_growth_mb": (hwm - rss_before) * 1024 / MB if rss_ok else None,
        "close_round_s": seconds,
    }


def _fit(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    points = [(r["sites"], r[key]) for r in rows if r[key] is not None]
    if len(points) < 2:
        return None
    x, y = np.array(points, dtype=np.float64).T
    slope, intercept = np.polyfit(x, y, 1)
    model = rows[0]["model_mb"]
    return {
        "mb_per_site": float(slope),
        "models_per_site": float(slope / model),
        "intercept_mb": float(intercept),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", default="3,6,12,24", help="comma-separated site counts")
    parser.add_argument("--params", type=float, default=10e6, help="model parameters")
    parser.add_argument("--stores", default="sql,memory", help=f"comma-separated, of {STORES}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--one", nargs=2, metavar=("STORE", "SITES"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    params = int(args.params)
    if args.one:
        result = measure(args.one[0], int(args.one[1]), params, args.workdir)
        print(json.dumps(result))
        return

    counts = [int(s) for s in args.sites.split(",")]
    stores = [s.strip() for s in args.stores.split(",")]
    for s in stores:
        if s not in STORES:
            parser.error(f"unknown store {s!r}; choose from {STORES}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="alliance-memory-bench-") as tmp:
        for store in stores:
            for n in counts:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        store,
                        str(n),
                        "--params",
                        str(params),
                        "--workdir",
                        tmp,
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if out.returncode != 0:
                    raise SystemExit(f"{store} with {n} sites failed:\n{out.stderr}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  {store:<7}{n:>3} sites done", file=sys.stderr, flush=True)

    fits = {
        store: {
            key: _fit([r for r in rows if r["store"] == store], key)
            for key in ("held_before_close_mb", "close_peak_mb", "rss_growth_mb")
        }
        for store in stores
    }
    model = rows[0]["model_mb"]
    print(
        f"Coordinator memory in close_round — FedAvg, {rows[0]['params']:,} float32 parameters "
        f"({model:.1f} MB), {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"numpy {np.__version__}"
    )
    print(
        f"{'store':<8}{'sites':>6}{'model MB':>10}{'held MB':>10}{'peak MB':>10}"
        f"{'peak/model':>12}{'RSS+ MB':>10}{'close s':>9}"
    )
    for r in rows:
        rss = "n/a" if r["rss_growth_mb"] is None else f"{r['rss_growth_mb']:.0f}"
        print(
            f"{r['store']:<8}{r['sites']:>6}{r['model_mb']:>10.1f}{r['held_before_close_mb']:>10.0f}"
            f"{r['close_peak_mb']:>10.0f}{r['close_peak_over_model']:>12.2f}{rss:>10}"
            f"{r['close_round_s']:>9.2f}"
        )
    print(
        "held = traced allocations just before close_round (weights, stored updates for the "
        "MemoryStore); peak = traced peak during close_round above held; RSS+ = peak RSS "
        "during close_round above RSS before it."
    )
    print("slope vs sites (least squares):")
    for store, by_key in fits.items():
        parts = []
        for key, label in (
            ("held_before_close_mb", "held"),
            ("close_peak_mb", "close_round peak"),
            ("rss_growth_mb", "RSS growth"),
        ):
            f = by_key[key]
            if f is not None:
                parts.append(
                    f"{label} {f['mb_per_site']:+.2f} MB/site ({f['models_per_site']:+.3f} models)"
                )
        print(f"  {store:<7} " + "; ".join(parts))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "coordinator_memory",
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
                "runs": rows,
                "slopes": fits,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "numpy": np.__version__,
                    "torch": _torch_version(),
                    "platform": platform.platform(),
                    "machine": platform.machine(),
                },
                "source": _source_state(),
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


def _source_state() -> dict[str, Any]:
    """The commit measured, and how many files differed from it (read-only git calls)."""
    root = Path(__file__).resolve().parent.parent

    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    return {
        "head": git("rev-parse", "HEAD"),
        "changed_files": len(git("status", "--porcelain").splitlines()),
    }


def _torch_version() -> str | None:
    """torch's version without importing it into the measured processes' parent too early."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return str(torch.__version__)


if __name__ == "__main__":
    main()
