"""The ``alliance`` command line: a thin shell over the Python API.

Exit codes: 0 success, 1 a federation or model failure, 2 bad input (config, data, codes),
130 interrupted. Errors are printed as one line naming what was wrong and what to do; a
traceback is shown only with ``--verbose``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alliance.cli import clinic as _clinic  # noqa: F401 - registers site clinic
from alliance.cli import courier as _courier  # noqa: F401 - registers export/import
from alliance.cli import enrolment as _enrolment  # noqa: F401 - site init, sign-request...
from alliance.cli import models as _models  # noqa: F401 - study model, site models
from alliance.cli.audit import app as audit_app
from alliance.cli.clinical import diagnose, evaluate
from alliance.cli.common import console, err, errors, state
from alliance.cli.consortium import app as consortium_app
from alliance.cli.data import app as data_app
from alliance.cli.deploy import coordinator_app, site_app, study_app
from alliance.cli.personal import print_personalised  # also registers site personalise
from alliance.core.errors import ConfigError, DataError
from alliance.core.logging import configure_logging
from alliance.protocol.aggregation import AggregationMode

__all__ = ["app", "main"]

app = typer.Typer(
    name="alliance",
    help="Guardian Alliance: federated rare-disease diagnosis; records stay in the hospital.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cohort_app = typer.Typer(help="Synthetic patient cohorts.", no_args_is_help=True)
app.add_typer(cohort_app, name="cohort")
app.add_typer(consortium_app, name="consortium")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(site_app, name="site")
app.add_typer(study_app, name="study")
app.add_typer(audit_app, name="audit")
app.add_typer(data_app, name="data")
app.command()(evaluate)
app.command()(diagnose)


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log details and show tracebacks.")
    ] = False,
) -> None:
    state["verbose"] = verbose
    configure_logging(verbose=verbose)


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):.1f}"


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for metrics.json, report.html and the model.")
    ] = Path("alliance-demo"),
    cases: Annotated[
        Path | None,
        typer.Option(
            help="Real cases (JSON-lines or phenopackets), split by publication, "
            "instead of the synthetic cohort."
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 10,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox or fedadam.")] = "fedavg",
    seed: Annotated[int, typer.Option(help="Seed of the cohort, the split and the training.")] = 7,
    scale: Annotated[
        float, typer.Option(min=0.01, help="Multiply every hospital's size (synthetic cohort).")
    ] = 1.0,
    server_lr: Annotated[
        float | None,
        typer.Option(
            min=0.0, help="Server learning rate (default 2 for fedavg/fedprox, 0.1 fedadam)."
        ),
    ] = None,
    diseases: Annotated[
        int, typer.Option(min=1, help="Diseases in the synthetic cohort (the label space is all).")
    ] = 600,
    epsilon: Annotated[
        str,
        typer.Option(
            help="Also run the federation with patient-level DP-SGD and secure aggregation at "
            "each of these privacy budgets (ε over the whole study, δ = 1e-5), e.g. 1,3,8."
        ),
    ] = "",
    offline: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also run the federation with this many hospitals (the smallest) allowing no "
            "network connection: their messages travel as signed, sealed file bundles.",
        ),
    ] = 0,
    offline_aggregation: Annotated[
        str,
        typer.Option(
            help="With --offline: 'sync' rounds wait for the courier (the very model of the "
            "all-online run), 'async' rounds do not (FedBuff: late replies count, discounted "
            "by their staleness), or 'both'.",
        ),
    ] = "both",
    courier_delay: Annotated[
        int,
        typer.Option(
            min=0,
            help="With --offline, asynchronous run: model versions a courier takes to bring a "
            "hospital's reply back.",
        ),
    ] = 3,
    site_files: Annotated[
        bool,
        typer.Option(
            help="Each hospital keeps its synthetic cases in its own format (FHIR, Phenopacket, "
            "CSV, Excel, OMOP, local codes) under OUT/hospitals/, read back by the adapters."
        ),
    ] = True,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an earlier demo's results in --out (only what a demo wrote there; a "
            "folder holding anything else is refused).",
        ),
    ] = False,
) -> None:
    """Run the 12-hospital demo: local-only vs federated vs pooled, with a report."""
    from alliance.algorithms.strategies import make_strategy
    from alliance.data.synth import CohortConfig, scaled_hospitals
    from alliance.sim.demo import DemoConfig, run_demo, write_demo_outputs
    from alliance.sim.demo_folder import prepare_output
    from alliance.web.dashboard_static import write_static_dashboard

    with errors():
        make_strategy(strategy)
        epsilons = _epsilons(epsilon)
        offline_modes = _offline_modes(offline_aggregation)
        if cases is not None and not cases.exists():
            raise DataError(f"cases file {cases} does not exist")
        prepare_output(out, force=force)
        cfg = DemoConfig(
            rounds=rounds,
            server_lr=server_lr,
            strategy=strategy,
            seed=seed,
            cases=cases,
            cohort=CohortConfig(seed=seed, n_diseases=diseases),
            hospitals=scaled_hospitals(scale),
            epsilons=epsilons,
            site_files=out / "hospitals" if site_files and cases is None else None,
            offline=offline,
            offline_aggregation=offline_modes,
            courier_delay=courier_delay,
        )
        console.print(
            f"[bold]Guardian Alliance demo[/] — 12 hospitals, {rounds} rounds of {strategy}"
            + (f"; with DP at ε = {', '.join(f'{e:g}' for e in epsilons)}" if epsilons else "")
        )
        with Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            result = run_demo(cfg, progress=progress)
        paths = write_demo_outputs(result, out)
        paths["dashboard"] = write_static_dashboard(result.metrics, Path(out) / "dashboard.html")
    _print_demo(result.metrics)
    for name, path in paths.items():
        console.print(f"  {name:<8} {escape(str(path))}")


def _epsilons(text: str) -> tuple[float, ...]:
    """Parse ``--epsilon 1,3,8``."""
    if not text.strip():
        return ()
    out = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(
                f"--epsilon: {part.strip()!r} is not a number; give budgets like 1,3,8"
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"--epsilon: every budget must be a number > 0, got {part.strip()}")
        out.append(value)
    return tuple(out)


def _offline_modes(text: str) -> tuple[AggregationMode, ...]:
    """Parse ``--offline-aggregation sync|async|both``."""
    choice = text.strip().lower()
    if choice == "both":
        return (AggregationMode.SYNC, AggregationMode.ASYNC)
    try:
        return (AggregationMode(choice),)
    except ValueError:
        raise ConfigError(
            f"--offline-aggregation: {text!r} is not one of sync, async, both"
        ) from None


def _print_offline_async(m: dict[str, Any]) -> None:
    run = m.get("offline_async")
    if not run:
        return
    names = {s["id"]: s["name"] for s in m["sites"]}
    fed, mixed = m["overall"]["federated"], run["overall"]
    late = run["late_updates"]
    staleness = sorted({u["staleness"] for u in late})
    discount = sorted({u["discount"] for u in late}, reverse=True)
    arrived = (
        f"{len(late)} of their replies counted, τ = {'/'.join(map(str, staleness))} versions "
        f"late, each weighing ×{'/'.join(f'{d:.2f}' for d in discount)} of its cases"
        if late
        else "none of their replies arrived in time to count"
    )
    console.print(
        f"Asynchronous rounds (a version every {run['buffer']} updates, discount "
        f"(1+τ)^-{run['staleness_exponent']:g}) with "
        f"{', '.join(names.get(s, s) for s in run['sites'])} on files, the courier taking "
        f"{run['courier_delay']} versions: {arrived}; top-1 {_pct(mixed['top1'])}, "
        f"top-3 {_pct(mixed['top3'])}, top-10 {_pct(mixed['top10'])} against "
        f"{_pct(fed['top1'])}, {_pct(fed['top3'])} and {_pct(fed['top10'])} all online "
        "(synchronous).",
        highlight=False,
    )


def _print_offline(m: dict[str, Any]) -> None:
    run = m.get("offline")
    if not run:
        return
    names = {s["id"]: s["name"] for s in m["sites"]}
    fed, mixed = m["overall"]["federated"], run["overall"]
    same = "the very same model" if run["same_weights_as_online"] else "a different model"
    console.print(
        f"With {', '.join(names.get(s, s) for s in run['sites'])} on files (signed, sealed "
        f"bundles): top-1 {_pct(mixed['top1'])}, top-10 {_pct(mixed['top10'])} against "
        f"{_pct(fed['top1'])} and {_pct(fed['top10'])} all online — {same}.",
        highlight=False,
    )


def _print_site_files(m: dict[str, Any]) -> None:
    files = m.get("site_files") or []
    if not files:
        return
    formats = len({f["format"] for f in files})
    read = sum(sum(f["cases_read"].values()) for f in files)
    rejected = sum(f["rejected"] for f in files)
    local = sum(1 for f in files if f.get("mapping"))
    folder = Path(files[0]["folder"]).parent
    console.print(
        f"Each hospital kept its cases in its own format ({formats} formats, local codes at "
        f"{local}); the sites read {read} cases back through the adapters, {rejected} rejected. "
        f"Check one: alliance data check --config {escape(str(folder))}/<hospital>/data.toml",
        highlight=False,
    )


def _print_privacy(m: dict[str, Any]) -> None:
    runs = m.get("privacy") or []
    if not runs:
        return
    fed = m["overall"]["federated"]
    best = m["overall"]["local_best"]
    table = Table(
        title="Federated accuracy (%) by privacy budget — DP-SGD at every hospital, "
        "secure aggregation"
    )
    for col in ("Run", "top-1", "top-3", "top-10", "ε spent (max site)"):
        table.add_column(col, justify="left" if col == "Run" else "right")
    table.add_row(
        "No differential privacy", _pct(fed["top1"]), _pct(fed["top3"]), _pct(fed["top10"]), "—"
    )
    for run in runs:
        o = run["overall"]
        spent = max(run["epsilon_spent"].values()) if run["epsilon_spent"] else float("nan")
        table.add_row(
            f"ε = {run['target_epsilon']:g}, δ = {run['delta']:g}",
            _pct(o["top1"]),
            _pct(o["top3"]),
            _pct(o["top10"]),
            f"{spent:.2f}",
        )
    table.add_row(
        "Best single hospital (no DP)",
        _pct(best["top1"]),
        _pct(best["top3"]),
        _pct(best["top10"]),
        "—",
    )
    console.print(table)


def _print_demo(m: dict[str, Any]) -> None:
    warnings = m["run"].get("warnings") or []
    for line in warnings[:5]:
        err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    if m["run"].get("n_warnings", 0) > 5:
        err.print(f"[yellow]… {m['run']['n_warnings']} input issues in all; see metrics.json[/]")
    names = {s["id"]: s["name"] for s in m["sites"]}
    table = Table(title="Top-k accuracy (%) on each hospital's held-out cases")
    # Numbers never wrap; the name column takes what the terminal leaves (rich only shrinks
    # wrappable columns, so its width is set here).
    table.add_column(
        "Hospital", no_wrap=True, overflow="ellipsis", max_width=max(12, console.width - 66)
    )
    table.add_column("train/\ntest", justify="right", no_wrap=True, min_width=8)
    for col in ("local\ntop-1", "local\ntop-10", "fed\ntop-1", "fed\ntop-10", "pooled\ntop-10"):
        table.add_column(col, justify="right", no_wrap=True, min_width=6)
    for s in m["sites"]:
        p = m["per_site"][s["id"]]
        table.add_row(
            s["name"],
            f"{s['n_train']}/{s['n_test']}",
            _pct(p["local"]["top1"]),
            _pct(p["local"]["top10"]),
            _pct(p["federated"]["top1"]),
            _pct(p["federated"]["top10"]),
            _pct(p["pooled"]["top10"]),
        )
    console.print(table)
    print_personalised(m)
    o = m["overall"]
    summary = Table(title=f"All hospitals' test cases together (n = {o['federated']['n']})")
    for col in ("Model", "top-1", "top-3", "top-10"):
        summary.add_column(col, justify="left" if col == "Model" else "right")
    rows = [
        ("Public knowledge only (prior)", o["prior"]),
        (
            f"Best single hospital ({names.get(o['local_best']['site'], o['local_best']['site'])})",
            o["local_best"],
        ),
        ("Federated (Guardian Alliance)", o["federated"]),
        ("Pooled (reference, not legal)", o["pooled"]),
    ]
    for label, row in rows:
        summary.add_row(label, _pct(row["top1"]), _pct(row["top3"]), _pct(row["top10"]))
    console.print(summary)
    gain = 100 * (o["federated"]["top10"] - o["local_best"]["top10"])
    gap = 100 * (o["federated"]["top10"] - o["pooled"]["top10"])
    side = "above" if gap >= 0 else "below"
    console.print(
        f"Federated top-10 is [bold]{gain:+.1f} points[/] over the best single hospital "
        f"and {abs(gap):.1f} points {side} pooled training."
    )
    _print_privacy(m)
    _print_site_files(m)
    _print_offline(m)
    _print_offline_async(m)


@cohort_app.command("synth")
def cohort_synth(
    out: Annotated[
        Path, typer.Option(help="Folder for one JSON-lines file per hospital and split.")
    ] = Path("alliance-cohort"),
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 7,
    n_diseases: Annotated[
        int, typer.Option(min=1, help="Diseases drawn from the catalogue.")
    ] = 600,
    scale: Annotated[float, typer.Option(min=0.01, help="Multiply every hospital's size.")] = 1.0,
    site_formats: Annotated[
        bool,
        typer.Option(
            help="Write each hospital's cases in its own format, as the demo does (FHIR, "
            "Phenopacket, CSV, Excel, OMOP, local codes), into OUT/<hospital>/ with a data.toml."
        ),
    ] = False,
) -> None:
    """Write the demo's synthetic cohort: <hospital>.train.jsonl and <hospital>.test.jsonl."""
    from alliance.data.loading import write_jsonl
    from alliance.data.ontology import load_ontology
    from alliance.data.site_files import write_site_files
    from alliance.data.synth import CohortConfig, generate_consortium, scaled_hospitals

    with errors():
        onto = load_ontology()
        hospitals = scaled_hospitals(scale)
        cohorts = generate_consortium(
            onto, onto.catalogue(), hospitals, CohortConfig(seed=seed, n_diseases=n_diseases)
        )
        out.mkdir(parents=True, exist_ok=True)
        for index, c in enumerate(cohorts):
            if site_formats:
                files = write_site_files(c, out / c.hospital.id, index=index, ontology=onto)
                console.print(f"{c.hospital.id:<12} {escape(files.description)}")
            else:
                write_jsonl(c.train, out / f"{c.hospital.id}.train.jsonl")
                write_jsonl(c.test, out / f"{c.hospital.id}.test.jsonl")
    total = sum(len(c.train) + len(c.test) for c in cohorts)
    console.print(
        f"wrote {total} synthetic cases for {len(cohorts)} hospitals to {escape(str(out))}/"
    )
    if site_formats:
        console.print(
            f"check one hospital's files: alliance data check --config "
            f"{escape(str(out))}/<hospital>/data.toml"
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``alliance`` script."""
    run: Callable[..., Any] = app
    run(args=argv if argv is not None else sys.argv[1:], prog_name="alliance")


if __name__ == "__main__":
    main()
