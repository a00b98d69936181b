"""``alliance coordinator|site|study``: running the federation for real, over HTTPS.

- ``alliance coordinator serve --config coordinator.toml``
- ``alliance site run --config site.toml``
- ``alliance site budget --config site.toml`` (the hospital's privacy spending, per study)
- ``alliance site|coordinator export|import`` for hospitals on files (:mod:`alliance.cli.courier`)
- ``alliance study hash|submit|status|logs|cancel`` (all but hash with ``--config operator.toml``)
"""

from __future__ import annotations

import json
import time
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from alliance.cli.common import console, errors, state
from alliance.core.logging import configure_logging

__all__ = ["coordinator_app", "site_app", "study_app"]

coordinator_app = typer.Typer(help="The consortium's coordinator service.", no_args_is_help=True)
site_app = typer.Typer(help="A hospital's site agent.", no_args_is_help=True)
study_app = typer.Typer(help="Submit and follow studies (operator).", no_args_is_help=True)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The party's TOML file.")]


@coordinator_app.command("serve")
def coordinator_serve(config: ConfigOption = Path("coordinator.toml")) -> None:
    """Serve the coordinator API over mutual TLS until interrupted."""
    from alliance.coordinator.serve import CoordinatorConfig, serve
    from alliance.web.dashboard_app import add_dashboard

    configure_logging(verbose=state["verbose"], service=True)
    with errors():
        cfg = CoordinatorConfig.load(config)

        def ready(port: int) -> None:
            console.print(
                f"coordinator of [bold]{escape(cfg.federation)}[/] listening on "
                f"https://{escape(cfg.host)}:{port} (mutual TLS 1.3); store "
                f"{escape(_masked(cfg.store_url))}; audit log {escape(str(cfg.audit))}; "
                f"dashboard https://{escape(cfg.host)}:{port}/dashboard"
            )

        serve(cfg, ready=ready, pages=add_dashboard)


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@site_app.command("run")
def site_run(
    config: ConfigOption = Path("site.toml"),
    studies: Annotated[
        int | None, typer.Option(help="Exit after this many studies ended (default: never).")
    ] = None,
    until_idle: Annotated[
        bool,
        typer.Option("--until-idle", help="Hospital on files: work through the inbox, then exit."),
    ] = False,
) -> None:
    """Fetch each task (HTTPS, or the inbox on files), check it against policy, train, reply."""
    from alliance.site.runner import SiteConfig, SiteRunner, describe

    configure_logging(verbose=state["verbose"], service=True)
    with errors():
        cfg = SiteConfig.load(config)
        # A second agent on the same state folder is refused here (exit status 1).
        with SiteRunner(cfg) as runner:
            info = describe(cfg)
            link = (
                info["coordinator"]
                if cfg.files is None
                else f"files (inbox {cfg.files.inbox}, outbox {cfg.files.outbox})"
            )
            console.print(
                f"site [bold]{escape(info['site'])}[/] of {escape(info['federation'])} → "
                f"{escape(link)}; cases {escape(str(info['train']))}; {info['approved_studies']} "
                f"approved studies; min cohort {info['min_cohort']}; audit log "
                f"{escape(str(cfg.state_dir / 'audit.log'))}"
            )
            runner.run(max_studies=studies, until_idle=until_idle)
            if until_idle and cfg.files is not None:
                pending = sorted(cfg.files.outbox.glob("*.gabn"))
                console.print(
                    f"inbox done; {len(pending)} bundle(s) in {escape(str(cfg.files.outbox))} for "
                    "`alliance site export --to <courier folder>`"
                )


@site_app.command("budget")
def site_budget(
    config: ConfigOption = Path("site.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show the privacy budget: ε spent per study, the hospital's total, and what is left."""
    from alliance.privacy.anchor import default_anchor_path, refuse_if_anchored
    from alliance.site.runner import SiteConfig

    with errors():
        cfg = SiteConfig.load(config)
        if not cfg.ledger_path.exists():
            # A lost ledger whose anchor remains is damage to report, not an unspent budget.
            refuse_if_anchored(cfg.ledger_path, default_anchor_path(cfg.ledger_path))
            console.print(
                f"no privacy ledger yet at {escape(str(cfg.ledger_path))}: no study has spent "
                "any of the "
                f"budget (ε = {cfg.budget_epsilon:g}, δ = {cfg.budget_delta:g})"
            )
            return
        with cfg.open_ledger() as ledger:
            studies = ledger.by_study()
            total = ledger.spent()
            remaining = ledger.remaining()
    if as_json:
        print(
            json.dumps(
                {
                    "budget": {"epsilon": cfg.budget_epsilon, "delta": cfg.budget_delta},
                    "spent": {"epsilon": total.epsilon, "pld": total.pld, "rdp": total.rdp},
                    "remaining": remaining,
                    "studies": [
                        {"study": st.study, "rounds": st.rounds, "epsilon": st.epsilon.epsilon}
                        for st in studies
                    ],
                },
                indent=2,
            )
        )
        return
    table = Table(title=f"Privacy budget of {escape(cfg.site)} (δ = {cfg.budget_delta:g})")
    for col in ("Study", "Rounds", "ε spent"):
        table.add_column(col, justify="left" if col == "Study" else "right")
    for st in studies:
        table.add_row(escape(st.study), str(st.rounds), f"{st.epsilon.epsilon:.3f}")
    table.add_row("[bold]all studies (composed)[/]", "", f"[bold]{total.epsilon:.3f}[/]")
    console.print(table)
    console.print(
        f"budget ε = {cfg.budget_epsilon:g}; remaining ε = {remaining:.3f}"
        + (f" [yellow]({escape(total.note)})[/]" if total.note else "")
    )


@study_app.command("hash")
def study_hash(study: Annotated[Path, typer.Argument(help="The study.toml file.")]) -> None:
    """Print the hash a hospital puts in \\[policy] approved_studies after approving a study."""
    from alliance.coordinator.study_check import load_study
    from alliance.core.errors import ConfigError

    with errors():
        try:
            text = study.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{study}: cannot be read: {exc}") from None
        spec = load_study(text, where=str(study))
        console.print(spec.hash, highlight=False)


def _client(config: Path) -> Any:
    from alliance.coordinator.client import OperatorConfig, StudyClient

    return StudyClient(OperatorConfig.load(config))


@study_app.command("submit")
def study_submit(
    study: Annotated[Path, typer.Argument(help="The study.toml file.")],
    config: ConfigOption = Path("operator.toml"),
) -> None:
    """Submit a study; it runs when the studies before it have finished."""
    from alliance.core.errors import ConfigError

    with errors():
        if not study.is_file():
            raise ConfigError(f"{study}: no such study file")
        with closing(_client(config)) as client:
            status = client.submit(study)
        console.print(
            f"submitted study [bold]{escape(status['study'])}[/] ({escape(status['hash'])}): "
            f"{escape(status['status'])}; "
            "hospitals must list this hash in \\[policy] approved_studies"
        )


@study_app.command("cancel")
def study_cancel(
    study_id: Annotated[str, typer.Argument(help="Study id.")],
    config: ConfigOption = Path("operator.toml"),
) -> None:
    """Cancel a queued or running study (operator); the next queued study may then start."""
    with errors():
        with closing(_client(config)) as client:
            status = client.cancel(study_id)
        console.print(
            f"cancelled study [bold]{escape(status['study'])}[/]; hospitals that took part are "
            "told it ended when they next poll"
        )


@study_app.command("status")
def study_status(
    study_id: Annotated[str | None, typer.Argument(help="Study id (omit to list all).")] = None,
    config: ConfigOption = Path("operator.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A study's rounds and accuracy, or the list of studies."""
    with errors(), closing(_client(config)) as client:
        if study_id is None:
            rows = client.studies()
            if as_json:
                console.print_json(json.dumps(rows))
                return
            table = Table("Study", "Status", "Hash")
            for r in rows:
                table.add_row(escape(r["study"]), escape(r["status"]), escape(r["hash"][:23]) + "…")
            console.print(table)
            return
        status = client.status(study_id)
        if as_json:
            console.print_json(json.dumps(status))
            return
        _print_status(status)


def _print_status(status: dict[str, Any]) -> None:
    console.print(
        f"[bold]{escape(status['study'])}[/] — {escape(status['title'])}: "
        f"{escape(status['status'])}, "
        f"{status['rounds_closed']}/{status['rounds_total']} rounds; "
        f"{status['rejections']} rejected messages"
    )
    if status.get("error"):
        console.print(f"[red]error:[/] {escape(status['error'])}")
    privacy = status.get("privacy") or {}
    parts = []
    if privacy.get("patient_level") == "dp-sgd":
        target = privacy.get("target_epsilon")
        parts.append(
            "patient-level DP-SGD at every hospital "
            + (f"(ε = {target:g} per study" if target else f"(σ = {privacy['noise_multiplier']}")
            + f", δ = {privacy['delta']:g}; each hospital's ledger keeps its own spend)"
        )
    if privacy.get("client_level_epsilon") is not None:
        parts.append(f"client-level ε = {privacy['client_level_epsilon']:.2f}")
    if privacy.get("secure_aggregation"):
        parts.append("secure aggregation (the coordinator sees only sums)")
    if parts:
        console.print("privacy: " + escape("; ".join(parts)))
    open_round = status.get("open_round")
    if open_round:
        _print_open_round(open_round)
    # The hospitals' top-k in a round measure the version they received, not the one it made.
    table = Table("Round", "Trained", "Made", "Sites", "Cases", "Train loss", "Top-1", "Top-10")
    for r in status["history"]:
        top = _topk(r.get("site_metrics", {}))
        table.add_row(
            str(r["round"]),
            f"v{r.get('evaluated_version', r['model_version'] - 1)}",
            f"v{r['model_version']}",
            str(len(r["sites"])),
            str(r["num_examples"]),
            f"{r['train_loss']:.4f}",
            top.get("top1", "–"),
            top.get("top10", "–"),
        )
    console.print(table)
    if status["history"]:
        console.print(
            "Top-k: the version each round trained (sent to the hospitals), on their held-out "
            "cases; the final version is measured when the hospitals receive it"
        )


def _print_open_round(open_round: dict[str, Any]) -> None:
    """The open round: who answered, who refused and why, who is awaited, what holds it."""
    refused: dict[str, str] = open_round.get("refused") or {}
    answered = open_round.get("answered", [])
    participants = open_round.get("participants", [])
    waiting = sorted(set(participants) - set(answered) - set(refused))
    line = f"round {open_round['round']} open: {len(answered)}/{len(participants)} answered"
    if open_round.get("participant_count") is not None:  # a hospital's own view
        line = (
            f"round {open_round['round']} open: {open_round['answered_count']}/"
            f"{open_round['participant_count']} answered"
        )
    if refused:
        line += "; refused: " + ", ".join(f"{s} ({why})" for s, why in sorted(refused.items()))
    if waiting:
        line += f"; waiting for {', '.join(waiting)}"
    console.print(escape(line))
    if open_round.get("holding"):
        console.print(escape(f"held: {open_round['holding']}"))


def _topk(site_metrics: dict[str, dict[str, float]]) -> dict[str, str]:
    from alliance.evaluation.ranking import topk_from_counts

    if not site_metrics:
        return {}
    values = topk_from_counts(list(site_metrics.values())).as_dict()
    return {k: f"{100 * v:.1f}%" for k, v in values.items() if isinstance(v, float)}


@study_app.command("logs")
def study_logs(
    study_id: Annotated[str, typer.Argument(help="Study id.")],
    config: ConfigOption = Path("operator.toml"),
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
) -> None:
    """A study's log: rounds opened and closed, rejected messages, waits for sites."""
    with errors(), closing(_client(config)) as client:
        after = 0
        while True:
            for line in client.logs(study_id, after=after):
                after = line["seq"]
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(line["at"]))
                console.print(
                    f"{stamp}  {escape(line['kind']):<16} {escape(line['message'])}",
                    highlight=False,
                )
            if not follow:
                return
            time.sleep(2)
