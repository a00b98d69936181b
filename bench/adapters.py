"""Throughput of the data adapters: cases per second written and read, for every format.

What it measures
----------------
``--cases`` synthetic cases (default 100,000) from the demo consortium's generator
(:func:`alliance.data.synth.generate_consortium` on :func:`~alliance.data.synth.scaled_hospitals`
at the smallest scale that gives enough cases; the first N cases in hospital order, training
then held-out cases; ids are unique by construction, and checked) are written in each format into
a temporary folder, then read back twice:

- *write*: the project's own writer (:func:`~alliance.data.compact.write_jsonl`,
  :func:`~alliance.data.fhir.write_fhir`, :func:`~alliance.data.tabular.write_table`,
  :func:`~alliance.data.omop.write_omop`; for Phenopackets, :func:`json.dumps` of
  :func:`~alliance.data.phenopacket.case_to_phenopacket` documents, as
  :mod:`alliance.data.site_files` does). The atomic writers fsync their file;
- *adapter read*: the format's reader alone (``read_compact``, ``read_phenopackets``,
  ``read_fhir``, ``read_table``, ``read_omop``), its record stream iterated to the end; it must
  yield exactly N records and no :class:`~alliance.data.records.RecordError`;
- *read_source*: what a site runs, :func:`alliance.data.loading.read_source` (the adapter, then
  admission: codes mapped by :class:`~alliance.data.codes.CodeMapper` with the full catalogue
  and the HPO release file when one is installed, duplicates checked). The cases it returns must
  equal the cases written, in order, with no rejected record; the script stops otherwise.

Formats: compact JSON lines; Phenopacket v2 as one ``.json`` list and as a folder of one file per
case; one FHIR R4 Bundle; CSV and Excel tables in the case layout (one row per case) and the
finding layout (one row per code, about ten per case); OMOP CDM tables as CSV files and in an
SQLite database. All codes are HPO, OMIM and ORPHA ids (no local codes, no mapping table).

One pass per format and phase, timed with :func:`time.perf_counter` (CPU time of this process is
recorded beside it in the JSON, with the peak resident memory of each pass, ``VmHWM`` reset
through ``/proc/self/clear_refs`` on Linux): at 100,000 cases a pass is long enough that one run is
meaningful, but on a shared machine other jobs' load still shows in wall times. Files are read
right after they are written, so from the page cache. The HPO release file is read once, before
any timing (sites keep it cached too). Nothing here asserts a time.

How to run
----------
From the repository root::

    /tmp/venv/bin/python bench/adapters.py                       # 100,000 cases, ~20 minutes
    /tmp/venv/bin/python bench/adapters.py --cases 2000          # a quick check
    /tmp/venv/bin/python bench/adapters.py --formats jsonl,fhir,omop-sqlite

The table goes to stdout, the settings and every timing to ``bench/results/adapters.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alliance.data.cases import Case
from alliance.data.compact import read_compact, write_jsonl
from alliance.data.fhir import read_fhir, write_fhir
from alliance.data.hpo_release import find_release
from alliance.data.loading import DataSource, SourceFormat, code_mapper, read_source
from alliance.data.omop import read_omop, write_omop
from alliance.data.ontology import DiseaseCatalogue, Ontology, load_ontology
from alliance.data.phenopacket import case_to_phenopacket, read_phenopackets
from alliance.data.records import RecordError, RecordStream
from alliance.data.synth import DEMO_HOSPITALS, CohortConfig, generate_consortium, scaled_hospitals
from alliance.data.tabular import RowLayout, TableLayout, read_table, write_table

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "adapters.json"
SLOW_PASS_S = 20.0  # a pass longer than this is flagged in the table

Writer = Callable[[Sequence[Case], Path], DataSource]
Reader = Callable[[DataSource], RecordStream]


@dataclass(frozen=True)
class Format:
    """One row of the table: how the cases are written, and how the adapter alone reads them."""

    name: str
    description: str
    write: Writer
    read: Reader


# --- writers -----------------------------------------------------------------------------------


def _write_compact(cases: Sequence[Case], folder: Path) -> DataSource:
    file = folder / "cases.jsonl"
    write_jsonl(cases, file)
    return DataSource(str(file), SourceFormat.COMPACT)


def _write_phenopacket_list(cases: Sequence[Case], folder: Path) -> DataSource:
    file = folder / "cases.json"
    file.write_text(json.dumps([case_to_phenopacket(c) for c in cases]), encoding="utf-8")
    return DataSource(str(file), SourceFormat.PHENOPACKET)


def _write_phenopacket_folder(cases: Sequence[Case], folder: Path) -> DataSource:
    root = folder / "cases"
    root.mkdir()
    width = max(5, len(str(len(cases) - 1)))  # numbered names keep the order when read by name
    for n, case in enumerate(cases):
        text = json.dumps(case_to_phenopacket(case))
        (root / f"{n:0{width}d}-{case.id}.json").write_text(text, encoding="utf-8")
    return DataSource(str(root), SourceFormat.PHENOPACKET)


def _write_fhir(cases: Sequence[Case], folder: Path) -> DataSource:
    file = folder / "bundle.json"
    write_fhir(cases, file)
    return DataSource(str(file), SourceFormat.FHIR)


def _table_writer(suffix: str, layout: TableLayout) -> Writer:
    def write(cases: Sequence[Case], folder: Path) -> DataSource:
        file = folder / f"cases{suffix}"
        write_table(cases, file, layout)
        return DataSource(str(file), SourceFormat.TABLE, table=layout)

    return write


def _write_omop_folder(cases: Sequence[Case], folder: Path) -> DataSource:
    root = folder / "omop"
    write_omop(cases, root)
    return DataSource(str(root), SourceFormat.OMOP)


def _write_omop_sqlite(cases: Sequence[Case], folder: Path) -> DataSource:
    url = f"sqlite:///{(folder / 'omop.db').resolve()}"
    write_omop(cases, url)
    return DataSource(url, SourceFormat.OMOP)


# --- the adapters alone ------------------------------------------------------------------------


def _read_file(reader: Callable[[Path], RecordStream]) -> Reader:
    return lambda source: reader(Path(source.location))


def _read_phenopacket_folder(source: DataSource) -> RecordStream:
    # What read_source does with a folder: its .json files in name order, one read each.
    for file in sorted(Path(source.location).iterdir()):
        if file.is_file() and file.name.endswith(".json"):
            yield from read_phenopackets(file)


def _read_table(source: DataSource) -> RecordStream:
    return read_table(Path(source.location), source.table or TableLayout())


def _read_omop(source: DataSource) -> RecordStream:
    return read_omop(source.location)


_CASE = TableLayout()
_FINDING = TableLayout(layout=RowLayout.FINDING)

FORMATS: tuple[Format, ...] = (
    Format("jsonl", "compact JSON lines", _write_compact, _read_file(read_compact)),
    Format(
        "phenopacket-list",
        "Phenopacket v2, a list in one .json",
        _write_phenopacket_list,
        _read_file(read_phenopackets),
    ),
    Format(
        "phenopacket-folder",
        "Phenopacket v2, one file per case",
        _write_phenopacket_folder,
        _read_phenopacket_folder,
    ),
    Format("fhir", "FHIR R4 Bundle, one .json", _write_fhir, _read_file(read_fhir)),
    Format("csv-case", "CSV, one row per case", _table_writer(".csv", _CASE), _read_table),
    Format("csv-finding", "CSV, one row per finding", _table_writer(".csv", _FINDING), _read_table),
    Format("xlsx-case", "Excel, one row per case", _table_writer(".xlsx", _CASE), _read_table),
    Format(
        "xlsx-finding", "Excel, one row per finding", _table_writer(".xlsx", _FINDING), _read_table
    ),
    Format("omop-csv", "OMOP CDM, CSV files", _write_omop_folder, _read_omop),
    Format("omop-sqlite", "OMOP CDM, SQLite database", _write_omop_sqlite, _read_omop),
)
BY_NAME = {f.name: f for f in FORMATS}


# --- measuring ---------------------------------------------------------------------------------


def _status_mb(field: str) -> float | None:
    """A memory figure of this process from ``/proc/self/status`` (Linux), in MB."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return None


def _reset_peak() -> None:
    """Reset the peak resident set size (``VmHWM``) to the current one, where Linux allows."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _mb(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f} MB"


class Clock:
    """Wall and CPU seconds of one pass, and the process's peak RSS during it (Linux)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.rss_before: float | None = None
        self.peak_rss: float | None = None

    @contextlib.contextmanager
    def run(self) -> Iterator[Clock]:
        _reset_peak()
        self.rss_before = _status_mb("VmRSS")
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield self
        finally:
            self.wall = time.perf_counter() - wall
            self.cpu = time.process_time() - cpu
            self.peak_rss = _status_mb("VmHWM")

    def figures(self, n: int) -> dict[str, float | None]:
        return {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "cases_per_s": n / self.wall,
            "rss_before_mb": self.rss_before,
            "peak_rss_mb": self.peak_rss,
        }


def synthetic_cases(
    n: int, onto: Ontology, catalogue: DiseaseCatalogue, seed: int
) -> tuple[list[Case], float]:
    """The first ``n`` cases of the demo consortium at the smallest scale that has ``n``."""
    demo_total = sum(h.n_cases for h in DEMO_HOSPITALS)
    scale = n / demo_total
    while sum(h.n_cases for h in scaled_hospitals(scale)) < n:
        scale *= 1.01
    cohorts = generate_consortium(onto, catalogue, scaled_hospitals(scale), CohortConfig(seed=seed))
    cases = [case for c in cohorts for case in (*c.train, *c.test)][:n]
    assert len(cases) == n
    assert len({case.id for case in cases}) == n, "case ids must be unique"
    return cases, scale


def size_of(source: DataSource) -> int:
    """Bytes on disk of what was written (a file, a folder, or an SQLite database)."""
    path = Path(source.location.removeprefix("sqlite:///"))
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def first_difference(got: Sequence[Case], want: Sequence[Case]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"case {i}: read {a!r}, wrote {b!r}"
    return f"read {len(got)} cases, wrote {len(want)}"


def measure(
    fmt: Format,
    cases: Sequence[Case],
    onto: Ontology,
    catalogue: DiseaseCatalogue,
    workdir: Path | None,
) -> dict[str, Any]:
    n = len(cases)
    with tempfile.TemporaryDirectory(prefix=f"alliance-bench-{fmt.name}-", dir=workdir) as tmp:
        write, adapter, load = Clock(), Clock(), Clock()
        with write.run():
            source = fmt.write(cases, Path(tmp))
        size = size_of(source)
        print(
            f"  {fmt.name}: wrote {size / 1e6:.1f} MB in {write.wall:.1f} s, "
            f"peak RSS {_mb(write.peak_rss)}",
            file=sys.stderr,
        )

        records, errors = 0, []
        with adapter.run():
            for item in fmt.read(source):
                if isinstance(item, RecordError):
                    errors.append(item)
                else:
                    records += 1
        assert not errors, f"{fmt.name}: the adapter gave {len(errors)} errors: {errors[0]}"
        assert records == n, f"{fmt.name}: the adapter gave {records} records, not {n}"
        print(
            f"  {fmt.name}: adapter read in {adapter.wall:.1f} s, peak RSS {_mb(adapter.peak_rss)}",
            file=sys.stderr,
        )

        with load.run():
            result = read_source(source, ontology=onto, catalogue=catalogue)
        assert result.rejected == 0, f"{fmt.name}: {result.rejected} rejected: {result.issues[0]}"
        assert result.cases == tuple(cases), (
            f"{fmt.name}: read_source does not give back the cases written: "
            f"{first_difference(result.cases, cases)}"
        )
        print(
            f"  {fmt.name}: read_source in {load.wall:.1f} s, cases equal, "
            f"peak RSS {_mb(load.peak_rss)}",
            file=sys.stderr,
        )
    return {
        "format": fmt.name,
        "description": fmt.description,
        "cases": n,
        "bytes": size,
        "mb": size / 1e6,
        "issues": len(result.issues),
        "write": write.figures(n),
        "adapter_read": adapter.figures(n),
        "read_source": load.figures(n),
        "slow_passes": [
            phase
            for phase, clock in (("write", write), ("adapter_read", adapter), ("read_source", load))
            if clock.wall > SLOW_PASS_S
        ],
    }


def print_table(rows: list[dict[str, Any]], n: int) -> None:
    base = next((r for r in rows if r["format"] == "jsonl"), None)
    print(
        f"Adapter throughput, {n:,} cases, one pass each, wall time "
        f"({os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.2f})"
    )
    header = (
        f"{'format':<20}{'file MB':>9}{'write c/s':>11}{'adapter c/s':>13}"
        f"{'read_source c/s':>17}{'× jsonl time':>14}  slow passes (> {SLOW_PASS_S:.0f} s)"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        rel = f"{r['read_source']['wall_s'] / base['read_source']['wall_s']:.1f}" if base else "—"
        slow = ", ".join(f"{phase} {r[phase]['wall_s']:.0f} s" for phase in r["slow_passes"])
        print(
            f"{r['format']:<20}{r['mb']:>9.1f}{r['write']['cases_per_s']:>11,.0f}"
            f"{r['adapter_read']['cases_per_s']:>13,.0f}{r['read_source']['cases_per_s']:>17,.0f}"
            f"{rel:>14}  {slow}"
        )


def _versions() -> dict[str, str]:
    found = {}
    for package in ("openpyxl", "fhir.resources", "pydantic", "SQLAlchemy", "phenopackets"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="number of synthetic cases")
    parser.add_argument(
        "--formats",
        default=",".join(BY_NAME),
        help=f"comma-separated, from: {', '.join(BY_NAME)} (default: all)",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic cohort")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the files are written (default: TMPDIR)"
    )
    args = parser.parse_args()
    names = [name.strip() for name in args.formats.split(",") if name.strip()]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown or not names:
        parser.error(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    started = time.perf_counter()
    load_start = os.getloadavg()

    clock = Clock()
    with clock.run():
        onto = load_ontology()
        catalogue = onto.catalogue()
        # The HPO release file is read once per process and cached (as on a site): not timed.
        code_mapper(DataSource("."), ontology=onto, catalogue=catalogue)
    setup_s = clock.wall
    print(f"ontology, catalogue and HPO release read in {setup_s:.1f} s", file=sys.stderr)
    with clock.run():
        cases, scale = synthetic_cases(args.cases, onto, catalogue, args.seed)
    generation_s = clock.wall
    print(
        f"generated {len(cases):,} cases (scale {scale:.3f}) in {generation_s:.1f} s",
        file=sys.stderr,
    )

    rows = []
    for name in names:
        rows.append(measure(BY_NAME[name], cases, onto, catalogue, args.workdir))
    elapsed = time.perf_counter() - started
    print_table(rows, args.cases)
    print(f"generation {generation_s:.1f} s; total {elapsed:.0f} s")

    release = find_release()
    report = {
        "benchmark": "adapters",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "commit": _commit(),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "disk_free_gb": shutil.disk_usage(args.workdir or tempfile.gettempdir()).free / 1e9,
            "packages": _versions(),
        },
        "settings": {
            "cases": args.cases,
            "seed": args.seed,
            "scale": scale,
            "formats": names,
            "passes": "one per format and phase; wall time from time.perf_counter",
            "hpo_release": None if release is None else release.name,
            "catalogue_diseases": len(catalogue),
        },
        "setup_s": setup_s,
        "generation_s": generation_s,
        "formats": rows,
        "elapsed_s": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
