"""Damage a coordinator's SQLite store at random and count what the store notices.

A store is written with :class:`SqlStore` (two running studies, four closed rounds each, an open
round holding three sites' updates) and its every value is read back as the truth. Then each
trial copies the file, damages the copy and reads it as a restarted coordinator would:
:meth:`SqlStore.verify` (what ``alliance coordinator serve`` runs first), then every model
version, strategy state, open update, study, round and update list. A trial ends as

- ``refused at start``: opening or ``verify`` raised a named error (the coordinator would not
  start);
- ``refused on read``: a later read raised a named error (``StoreDamaged``: never used);
- ``harmless``: every value read back equal to the truth (the damage hit free space or bytes
  that change nothing);
- ``silently different``: a value came back different without an error;
- ``crash``: an exception outside the package's error tree (a traceback for the user).

Damage kinds: one bit flipped anywhere in the file; one bit flipped inside a stored blob; one
4 KiB page overwritten with random bytes. Prints a table and writes
``bench/results/store_corruption.json``. ``python bench/store_corruption.py [--trials N]``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from alliance.core.errors import AllianceError
from alliance.store import SqlStore, StudyRecord, StudyStatus, UpdateMeta

STUDIES, ROUNDS, SITES = ("s1", "s2"), 4, ("h1", "h2", "h3")


def build(path: Path) -> None:
    rng = np.random.default_rng(1)
    with SqlStore(f"sqlite:///{path}") as store:
        for sid in STUDIES:
            store.add_study(StudyRecord(sid, "x", "ab" * 32, "op", StudyStatus.RUNNING, 1.0))
            store.save_initial_model(sid, {"w": rng.standard_normal((32, 32), np.float32)}, {})
            for r in range(1, ROUNDS + 2):
                store.open_round(sid, r, model_version=r - 1, participants=SITES, deadline=None)
                for site in SITES:
                    meta = UpdateMeta(site, uuid.uuid4().hex, f"d{r}{site}", 5, {"loss": 0.5})
                    delta = {"w": rng.standard_normal((32, 32), np.float32)}
                    store.add_update(sid, r, meta, delta)
                if r <= ROUNDS:
                    store.close_round(
                        sid,
                        r,
                        new_version=r,
                        weights={"w": rng.standard_normal((32, 32), np.float32)},
                        strategy_state={"m": rng.standard_normal(32, np.float32)},
                        summary={"round": r},
                    )


def read_all(store: SqlStore) -> dict[str, Any]:
    """Every value a coordinator reads, as comparable plain data."""
    out: dict[str, Any] = {"studies": [vars(s) for s in store.studies()]}
    for sid in STUDIES:
        version, weights, state = store.latest_model(sid)
        out[f"{sid}/latest"] = (version, weights["w"].tobytes(), state.get("m", b"").tobytes())
        for v in range(version + 1):
            out[f"{sid}/v{v}"] = store.model(sid, v)["w"].tobytes()
        out[f"{sid}/rounds"] = [vars(r) for r in store.rounds(sid)]
        for r in range(1, ROUNDS + 2):
            out[f"{sid}/r{r}/updates"] = [vars(u) for u in store.updates(sid, r)]
        for site in SITES:
            out[f"{sid}/open/{site}"] = store.load_delta(sid, ROUNDS + 1, site)["w"].tobytes()
    return out


EXAMPLES: list[str] = []


def trial(original: Path, work: Path, damage: Callable[[bytearray], None], truth: Any) -> str:
    data = bytearray(original.read_bytes())
    damage(data)
    work.write_bytes(bytes(data))
    try:
        store = SqlStore(f"sqlite:///{work}")
    except AllianceError:
        return "refused at start"
    except Exception as exc:
        EXAMPLES.append(f"crash at open: {type(exc).__name__}: {exc}"[:300])
        return "crash"
    try:
        try:
            verify = getattr(store, "verify", None)  # absent in builds before the check
            if verify is not None:
                verify()
        except AllianceError:
            return "refused at start"
        try:
            values = read_all(store)
        except AllianceError:
            return "refused on read"
        if values == truth:
            return "harmless"
        changed = sorted(k for k in truth if values.get(k) != truth[k])
        EXAMPLES.append(f"silently different: {changed}")
        return "silently different"
    except Exception as exc:
        EXAMPLES.append(f"crash: {type(exc).__name__}: {exc}"[:300])
        return "crash"
    finally:
        store.close()


def blob_spans(data: bytes, path: Path) -> list[tuple[int, int]]:
    """Where the stored arrays' bytes lie in the file."""
    spans = []
    with SqlStore(f"sqlite:///{path}") as store:
        for sid in STUDIES:
            for v in range(ROUNDS + 1):
                raw = store.model(sid, v)["w"].tobytes()
                for offset in range(0, len(raw) - 64, 256):  # pieces: blobs span pages
                    start = data.find(raw[offset : offset + 64])
                    if start >= 0:
                        spans.append((start, start + 64))
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300, help="trials per kind of damage")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="alliance-corruption-"))
    original, work = folder / "coordinator.db", folder / "damaged.db"
    build(original)
    with SqlStore(f"sqlite:///{original}") as store:
        truth = read_all(store)
    size = original.stat().st_size
    spans = blob_spans(original.read_bytes(), original)

    def any_bit(data: bytearray) -> None:
        data[rng.randrange(size)] ^= 1 << rng.randrange(8)

    def blob_bit(data: bytearray) -> None:
        start, end = rng.choice(spans)
        data[rng.randrange(start, end)] ^= 1 << rng.randrange(8)

    def page(data: bytearray) -> None:
        at = rng.randrange(1, size // 4096) * 4096  # not page 1, the file's header
        data[at : at + 4096] = rng.randbytes(4096)

    kinds = {"one bit, anywhere": any_bit, "one bit, in a blob": blob_bit, "one page": page}
    results: dict[str, dict[str, int]] = {}
    started = time.perf_counter()
    for name, damage in kinds.items():
        results[name] = dict(
            Counter(trial(original, work, damage, truth) for _ in range(args.trials))
        )
    elapsed = time.perf_counter() - started
    shutil.rmtree(folder)
    outcomes = ["refused at start", "refused on read", "harmless", "silently different", "crash"]
    print(f"store file {size} bytes, {args.trials} trials per kind, {elapsed:.1f} s")
    print(f"{'damage':<20}" + "".join(f"{o:>20}" for o in outcomes))
    for name, counts in results.items():
        print(f"{name:<20}" + "".join(f"{counts.get(o, 0):>20}" for o in outcomes))
    out = Path(__file__).parent / "results" / "store_corruption.json"
    out.parent.mkdir(exist_ok=True)
    for example in EXAMPLES:
        print(example)
    payload = {
        "file_bytes": size,
        "trials": args.trials,
        "seed": args.seed,
        "results": results,
        "examples": EXAMPLES,
    }
    out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
