"""``alliance audit``: check and read the hash-chained audit logs of the coordinator and sites.

A thin shell over :mod:`alliance.store.audit`, for a hospital's privacy officer. ``verify``
exits 0 when the log is intact, 1 when it lists problems (each with its line number) and 2 when
the file is missing or unreadable; ``--json`` prints the same report for other tools. ``show``
lists entries as a table and warns when the log fails verification. Text taken from a log goes
to the terminal as plain :class:`rich.text.Text`, never as markup, so a forged entry cannot
restyle or hide what is printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from alliance.core.errors import AllianceError, ConfigError, DataError
from alliance.store.audit import AuditEntry, AuditReport, read_audit_log, verify_audit_log

__all__ = ["app"]

app = typer.Typer(help="Check that an audit log was not edited, and read it.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

_PATH = Annotated[
    Path, typer.Argument(help="The audit log (JSON lines); its PATH.head file is read too.")
]


def _fail(exc: AllianceError) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    # A missing or unreadable file is bad input (2); anything else a failure (1).
    raise typer.Exit(2 if isinstance(exc, ConfigError | DataError) else 1)


def _report(path: Path) -> AuditReport:
    try:
        return verify_audit_log(path)
    except AllianceError as exc:
        _fail(exc)


@app.command()
def verify(
    path: _PATH,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check every line, the hash chain and the head file; exit 1 if anything was altered."""
    report = _report(path)
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
    elif report.ok:
        head = f"head {report.head[:16]}…" if report.head else "no entries yet"
        noun = "entry" if report.entries == 1 else "entries"
        console.print(
            Text(f"audit log {path}: {report.entries} {noun}, chain intact, {head}"),
            soft_wrap=True,
        )
    else:
        n = len(report.problems)
        console.print(
            Text(
                f"audit log {path}: {n} problem{'s' if n > 1 else ''} "
                f"({report.entries} entries read); it was altered or damaged:",
                style="bold red",
            ),
            soft_wrap=True,
        )
        for p in report.problems:  # every message names its line(s) or the head file
            console.print(Text(f"  - {p.message}"), soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def show(
    path: _PATH,
    tail: Annotated[
        int | None, typer.Option(min=1, help="Only the last N entries (after --event).")
    ] = None,
    event: Annotated[
        str | None, typer.Option(help="Only entries of this event, e.g. study_submitted.")
    ] = None,
) -> None:
    """List the entries of an audit log: seq, time, actor, event and a summary of details."""
    try:
        entries = read_audit_log(path)
    except AllianceError as exc:
        _fail(exc)
    report = _report(path)
    if not report.ok:
        err.print(
            Text(
                f"warning: {path} fails verification ({len(report.problems)} problem(s)); run "
                f"'alliance audit verify {path}'. Showing the entries that could be read.",
                style="yellow",
            ),
            soft_wrap=True,
        )
    if event is not None:
        entries = [e for e in entries if e.event == event]
    if tail is not None:
        entries = entries[-tail:]
    table = Table(title=Text(f"Audit log {path}"))
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("actor")
    table.add_column("event")
    table.add_column("details", overflow="fold")
    for e in entries:
        time = e.time[:19].replace("T", " ")
        table.add_row(Text(str(e.seq)), Text(time), Text(e.actor), Text(e.event), _summary(e))
    console.print(table)
    if not entries:
        console.print(Text("no entries" + (f" of event {event!r}" if event else "")))


def _summary(entry: AuditEntry, width: int = 160) -> Text:
    """``key=value, ...`` with long values cut, the whole cut at ``width`` characters."""
    parts = []
    for key, value in entry.details.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{key}={text if len(text) <= 48 else text[:47] + '…'}")
    line = ", ".join(parts)
    return Text(line if len(line) <= width else line[: width - 1] + "…")
