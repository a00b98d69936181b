"""``alliance data``: a hospital checks its own data and maps its codes before anything is trained.

- ``alliance data check --config site.toml`` reads the ``[data]`` sources of the site config
  through their adapters and prints the data-quality report (:mod:`alliance.data.quality`),
  then the first unreadable values (a sex, an age) with where they are and what is accepted,
  which the report itself only locates;
  ``--html`` also writes it as a page, ``--json`` prints it as JSON. Counts below the hospital's
  ``report_min_count`` are suppressed everywhere, since the report may be shared.
- ``alliance data map --config site.toml`` lists the codes that could not be mapped, with
  candidate HPO terms for each local code that has a label (from the data or the mapping table),
  found by label similarity over the ontology's names, synonyms and official Chinese labels (a
  Chinese label's candidates show the term's Chinese label too); ``--out`` writes them as rows
  ready to complete and add to the mapping table. Codes whose mapping-table row has no target
  yet are counted apart from codes the table lacks.

Only ``[data]`` of the config is read: a hospital can check its data before it has certificates.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from alliance.cli.common import console, err, errors
from alliance.core.errors import ConfigError

if TYPE_CHECKING:
    from alliance.data.codes import Code, CodeRole
    from alliance.data.ontology import DiseaseCatalogue
    from alliance.data.quality import QualityReport
    from alliance.data.suggest import Suggestion

__all__ = ["app"]

app = typer.Typer(
    help="A hospital's own data: check it and map its codes before anything is trained.",
    no_args_is_help=True,
)

_SOURCES_HELP = "Disease catalogues a study would use, comma-separated (OMIM, ORPHA)."
_UNMAPPED_SHOWN = 20
_UNREADABLE_SHOWN = 5
_MAP_COLUMNS = ["code", "target", "label", "role", "count", "suggestions", "why"]
_MAP_SHOWN = ("code", "role", "count", "label", "suggestions")


def _catalogue(sources: str) -> DiseaseCatalogue:
    from alliance.data.ontology import DiseaseSource, load_ontology

    try:
        chosen = tuple(DiseaseSource(s.strip().upper()) for s in sources.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--sources {sources!r}: choose among OMIM, ORPHA") from None
    return load_ontology().catalogue(chosen or (DiseaseSource.OMIM,))


@app.command("check")
def check(
    config: Annotated[
        Path, typer.Option("--config", help="The site config (only its \\[data] table is read).")
    ],
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write the report as an HTML page here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    sources: Annotated[str, typer.Option(help=_SOURCES_HELP)] = "OMIM,ORPHA",
) -> None:
    """Read the site's cases through their adapters and report what was understood."""
    from alliance.data.loading import DataConfig, read_source
    from alliance.data.ontology import load_ontology
    from alliance.data.quality import QualityReport, html_page
    from alliance.data.records import IssueKind

    with errors():
        data = DataConfig.load(config)
        catalogue = _catalogue(sources)
        reports: dict[str, QualityReport] = {}
        unreadable: dict[str, list[str]] = {}
        for role, source in (("train", data.train), ("test", data.test)):
            if source is None:
                continue
            result = read_source(
                source, ontology=load_ontology(), catalogue=catalogue, allow_empty=True
            )
            unreadable[role] = [str(i) for i in result.issues if i.kind is IssueKind.BAD_VALUE]
            reports[role] = QualityReport.build(
                result,
                source=f"{role}: {source.location}",
                min_count=data.report_min_count,
                catalogue=catalogue,
            )
    if html is not None:
        _write_atomically(html, html_page(list(reports.values())))
    if as_json:
        print(json.dumps({role: r.to_dict() for role, r in reports.items()}, indent=2))
    else:
        for role, report in reports.items():
            _print_report(report)
            _print_unreadable(unreadable[role])
        if html is not None:
            console.print(f"HTML report written to {escape(str(html))}")
    if any(r.loaded == 0 for r in reports.values()):
        raise typer.Exit(2)


def _print_report(report: QualityReport) -> None:
    from alliance.data.quality import summary_lines

    console.rule(f"[bold]{escape(report.source)}")
    overview = Table(show_header=False, box=None)
    for name, value in summary_lines(report).items():
        overview.add_row(escape(name), "—" if value is None else escape(str(value)))
    console.print(overview)
    for title, reasons in (
        ("Rejected records, by reason", report.rejections),
        ("Warnings (the case was kept), by reason", report.warning_reasons),
    ):
        if not reasons:
            continue
        table = _table(title, ("reason", "count", "first example", "where"))
        for row in reasons:
            table.add_row(*_cells(row.kind, row.count, row.message, ", ".join(row.examples)))
        console.print(table)
    systems = _table(
        "Codes by coding system",
        ("role", "system", "distinct", "mapped", "unmapped", "occurrences"),
    )
    for s in report.systems:
        systems.add_row(*_cells(s.role, s.system, s.distinct, s.mapped, s.unmapped, s.occurrences))
    console.print(systems)
    if report.unmapped:
        unmapped = _table("Codes that could not be mapped", ("role", "code", "count", "first seen"))
        for u in report.unmapped[:_UNMAPPED_SHOWN]:
            unmapped.add_row(*_cells(u.role, u.code, u.count, u.first_seen))
        console.print(unmapped)
        why = {u.reason for u in report.unmapped[:_UNMAPPED_SHOWN]}
        if len(why) == 1:
            console.print(f"Why: {escape(why.pop())}", highlight=False)
        else:
            for u in report.unmapped[:_UNMAPPED_SHOWN]:
                console.print(f"{escape(u.code)}: {escape(u.reason)}", highlight=False)
        if len(report.unmapped) > _UNMAPPED_SHOWN:
            console.print(
                f"… and {len(report.unmapped) - _UNMAPPED_SHOWN} more (see --html or --json); "
                "`alliance data map` suggests HPO terms for local codes"
            )
    console.print(
        f"[dim]Counts from 1 to {report.min_count - 1} are shown as <{report.min_count}; a count "
        "shown as * is hidden so that such a count cannot be worked out from a total.[/]"
    )


def _print_unreadable(messages: list[str]) -> None:
    """The unreadable values themselves, on this terminal only: the report may be shared."""
    if not messages:
        return
    console.print("Unreadable values (shown here only, not in the report):", highlight=False)
    for message in messages[:_UNREADABLE_SHOWN]:
        console.print(f"  {escape(message)}", highlight=False)
    if len(messages) > _UNREADABLE_SHOWN:
        console.print(f"  … and {len(messages) - _UNREADABLE_SHOWN} more", highlight=False)


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for column in columns:
        # Fold rather than cut: a location's line number is at its end.
        table.add_column(column, overflow="fold")
    return table


def _cells(*values: object) -> list[str]:
    """Table cells from data: escaped, so that a code like ``[/b]`` is shown, not interpreted."""
    return [escape("—" if value is None else str(value)) for value in values]


@app.command("map")
def map_codes(
    config: Annotated[
        Path, typer.Option("--config", help="The site config (only its \\[data] table is read).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the unmapped codes as mapping-table rows (code,target,label,...) here.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=20, help="Candidates per code.")] = 3,
    force: Annotated[bool, typer.Option(help="Overwrite --out if it exists.")] = False,
) -> None:
    """List codes that could not be mapped, with candidate HPO terms for labelled local codes."""
    from alliance.data.codes import CodeRole
    from alliance.data.hpo_release import HpoRelease
    from alliance.data.loading import DataConfig, code_mapper, local_labels, read_source
    from alliance.data.ontology import load_ontology
    from alliance.data.polarity import has_han
    from alliance.data.quality import suppress
    from alliance.data.suggest import LabelIndex

    with errors():
        if out is not None and out.exists() and not force:
            raise ConfigError(f"{out} exists; choose another --out or pass --force")
        data = DataConfig.load(config)
        ontology = load_ontology()
        sources = [s for s in (data.train, data.test) if s is not None]
        counts: dict[tuple[CodeRole, Code], int] = {}
        reasons: dict[tuple[CodeRole, Code], str] = {}
        labels: dict[Code, str] = {}
        pending: set[Code] = set()
        for source in sources:
            result = read_source(
                source, ontology=ontology, require_diagnosis=False, allow_empty=True
            )
            for use in result.codes:
                if use.target is None:
                    key = (use.role, use.code)
                    counts[key] = counts.get(key, 0) + use.count
                    reasons.setdefault(key, use.reason or "")
            labels.update(local_labels(source))
            mapper = code_mapper(source, ontology=ontology, catalogue=None)
            if mapper.local is not None:
                labels.update({k: v for k, v in mapper.local.labels.items() if k not in labels})
                pending |= mapper.local.pending
        references = code_mapper(sources[0], ontology=ontology, catalogue=None).references
        release = references if isinstance(references, HpoRelease) else None
        index = LabelIndex(ontology, release) if any(labels.get(c) for _, c in counts) else None
    rows: list[dict[str, str]] = []
    for (role, code), count in sorted(counts.items(), key=lambda i: (-i[1], str(i[0][1]))):
        label = labels.get(code, "")
        found = (
            index.suggest(label, limit=limit)
            if index is not None and label and role is CodeRole.PHENOTYPE
            else []
        )
        rows.append(
            {
                "code": str(code),
                "target": "",
                "label": label,
                "role": role.value,
                "count": str(suppress(count, data.report_min_count)),
                "suggestions": "; ".join(_candidate(s, chinese=has_han(label)) for s in found),
                "why": reasons[(role, code)],
            }
        )
    if out is not None:
        # Written even when empty, so that --force never leaves stale rows behind.
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=_MAP_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        _write_atomically(out, buffer.getvalue())
    if not rows:
        console.print("Every code was mapped: nothing to add to the mapping table.")
        return
    table = _table(f"{len(rows)} codes could not be mapped", _MAP_SHOWN)
    for row in rows[:50]:
        table.add_row(*_cells(*(row[c] or "—" for c in _MAP_SHOWN)))
    console.print(table)
    if len(rows) > 50:
        err.print(f"… and {len(rows) - 50} more; --out writes them all")
    not_yet = sum(1 for _, code in counts if code in pending)
    if not_yet:
        console.print(
            f"{not_yet} of them not mapped yet: their row in the mapping table has an empty "
            f"'target'; {len(rows) - not_yet} not in the mapping table at all",
            highlight=False,
        )
    if out is not None:
        console.print(
            f"wrote {len(rows)} rows to {escape(str(out))}: fill in 'target' (HP:, OMIM: or "
            "ORPHA: id) and add "
            "the rows to the mapping table named by \\[data] mapping",
            highlight=False,
        )


def _candidate(found: Suggestion, *, chinese: bool) -> str:
    """``HP:0001252 Hypotonia (0.99)``; with the term's Chinese label for a Chinese label."""
    from alliance.data.chinese import chinese_label

    zh = chinese_label(found.hpo_id) if chinese else None
    return f"{found.hpo_id} {found.name}{f' {zh}' if zh else ''} ({found.score:.2f})"


def _write_atomically(path: Path, text: str) -> None:
    from alliance.core.files import write_atomically

    write_atomically(path, text.encode("utf-8"))
