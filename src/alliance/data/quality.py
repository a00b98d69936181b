"""The data-quality report of a hospital's cases: what was read, understood, and refused.

``alliance data check`` builds a :class:`QualityReport` from a
:class:`~alliance.data.admission.LoadResult` before anything is trained, so that a hospital sees
exactly how its files and codes were understood:

- records read, cases loaded, records rejected, grouped by reason with example locations (file
  and line, or resource id);
- codes per coding system: distinct codes and occurrences, how many mapped; every code that could
  not be mapped, with its count, where it was first seen and why;
- phenotypes per case (median, mean, a histogram), excluded terms per case;
- label coverage: diagnosed cases, distinct diseases, diseases with at least ``min_count`` cases,
  the share of the study's catalogue they cover;
- duplicates, missing sex, missing age.

The report may be shared (with the consortium, or a data protection officer), so it never holds
a patient's row: only counts, codes, reasons and locations. Every count from 1 to
``min_count - 1`` is suppressed (shown as ``<5`` with the default threshold 5), in the
terminal, the JSON and the HTML alike, since a small count can single a patient out. Zero is
shown: that nothing is wrong identifies nobody. A suppressed count must not be recoverable from
the figures around it, so:

- where parts add up to a shown whole (rejection reasons, the phenotype histogram, mapped and
  unmapped codes of a system) and exactly one part is suppressed, the smallest other part is
  hidden too (shown as ``*``);
- when the rejected records are suppressed, the records read are shown as the range they lie in;
- a maximum or minimum (one patient's value) is never shown.
"""

from __future__ import annotations

import html
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from alliance.data.admission import LoadResult
from alliance.data.cases import Sex
from alliance.data.codes import CodeRole
from alliance.data.ontology import DiseaseCatalogue
from alliance.data.records import IssueKind

__all__ = [
    "SECONDARY",
    "QualityReport",
    "Shown",
    "html_page",
    "protect",
    "summary_lines",
    "suppress",
]

Shown = int | str
"""A count as the report shows it: the number, or ``"<k"`` when suppressed."""

_EXAMPLES = 3
_BAD_VALUE = (
    "an unreadable sex or age, recorded as unknown (see the locations; `alliance data check` "
    "shows the values and the accepted ones on its terminal)"
)
_BUCKETS = ((1, 1, "1"), (2, 3, "2–3"), (4, 6, "4–6"), (7, 10, "7–10"), (11, None, "11+"))


def suppress(count: int, min_count: int) -> Shown:
    """``count``, or ``"<min_count"`` when it is between 1 and ``min_count - 1``."""
    return f"<{min_count}" if 0 < count < min_count else count


SECONDARY = "*"
"""How a count hidden only to protect a suppressed one is shown."""


def protect(counts: Sequence[int], min_count: int) -> list[Shown]:
    """Parts of a shown whole, suppressed so that no small part can be worked out by subtraction.

    Counts from 1 to ``min_count - 1`` become ``"<min_count"``; if exactly one part is
    suppressed that way, the smallest other non-zero part becomes :data:`SECONDARY`.
    """
    shown = [suppress(n, min_count) for n in counts]
    small = [i for i, n in enumerate(counts) if 0 < n < min_count]
    large = [i for i, n in enumerate(counts) if n >= min_count]
    if len(small) == 1 and large:
        shown[min(large, key=lambda i: (counts[i], i))] = SECONDARY
    return shown


def _between(low: int, high: int) -> Shown:
    return f"{low}–{high}"


@dataclass(frozen=True)
class _Reason:
    kind: str
    count: Shown
    examples: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class _System:
    role: str
    system: str
    distinct: Shown
    mapped: Shown
    unmapped: Shown
    occurrences: Shown


@dataclass(frozen=True)
class _Unmapped:
    role: str
    code: str
    count: Shown
    first_seen: str
    reason: str


@dataclass(frozen=True)
class QualityReport:
    """Counts, codes and reasons about one source of cases, small counts suppressed.

    Build it with :meth:`build`; :meth:`to_dict` gives JSON, :meth:`to_html` a standalone page.
    """

    source: str
    min_count: int
    records: Shown
    loaded: Shown
    rejected: Shown
    warnings: Shown
    rejections: tuple[_Reason, ...]
    warning_reasons: tuple[_Reason, ...]
    systems: tuple[_System, ...]
    unmapped: tuple[_Unmapped, ...]
    phenotypes_median: float | None
    phenotypes_mean: float | None
    phenotypes_histogram: tuple[tuple[str, Shown], ...]
    excluded_mean: float | None
    diagnosed: Shown
    diseases: Shown
    diseases_with_min_count: Shown
    catalogue_size: int | None
    duplicates: Shown
    missing_sex: Shown
    missing_age: Shown

    @classmethod
    def build(
        cls,
        result: LoadResult,
        *,
        source: str,
        min_count: int = 5,
        catalogue: DiseaseCatalogue | None = None,
    ) -> QualityReport:
        """Summarise a load; every count below ``min_count`` (but zero) is suppressed."""
        if min_count < 1:
            raise ValueError("min_count must be at least 1")

        def s(n: int) -> Shown:
            return suppress(n, min_count)

        cases = result.cases
        observed = [len(case.observed) for case in cases]
        per_disease = Counter(case.primary_disease for case in cases if case.primary_disease)
        buckets = [
            sum(1 for n in observed if n >= low and (high is None or n <= high))
            for low, high, _ in _BUCKETS
        ]
        histogram = tuple(
            (name, shown)
            for (_, _, name), shown in zip(_BUCKETS, protect(buckets, min_count), strict=True)
        )
        records: Shown = s(result.records)
        if 0 < result.rejected < min_count and result.records >= min_count:
            # records = loaded + rejected: a range keeps the rejected count hidden.
            loaded_n = len(cases)
            records = _between(loaded_n + 1, loaded_n + min_count - 1)
        return cls(
            source=source,
            min_count=min_count,
            records=records,
            loaded=s(len(cases)),
            rejected=s(result.rejected),
            warnings=s(len(result.issues) - result.rejected),
            rejections=_reasons(result, rejected=True, min_count=min_count),
            warning_reasons=_reasons(result, rejected=False, min_count=min_count),
            systems=_systems(result, min_count),
            unmapped=tuple(
                _Unmapped(use.role.value, str(use.code), s(use.count), str(use.first_seen), r)
                for use in sorted(result.codes, key=lambda u: (-u.count, u.role.value, str(u.code)))
                if (r := use.reason) is not None
            ),
            phenotypes_median=float(statistics.median(observed)) if observed else None,
            phenotypes_mean=round(statistics.fmean(observed), 2) if observed else None,
            phenotypes_histogram=histogram,
            excluded_mean=(
                round(statistics.fmean(len(c.excluded) for c in cases), 2) if cases else None
            ),
            diagnosed=s(sum(1 for case in cases if case.disease_ids)),
            diseases=s(len(per_disease)),
            diseases_with_min_count=s(sum(1 for n in per_disease.values() if n >= min_count)),
            catalogue_size=None if catalogue is None else len(catalogue),
            duplicates=s(sum(1 for i in result.issues if i.kind is IssueKind.DUPLICATE)),
            missing_sex=s(sum(1 for case in cases if case.sex is Sex.UNKNOWN_SEX)),
            missing_age=s(sum(1 for case in cases if case.age_years is None)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (schema ``alliance.data.quality/1``)."""
        data = asdict(self)
        data["phenotypes_histogram"] = dict(self.phenotypes_histogram)
        return {"schema": "alliance.data.quality/1", **data}

    def to_html(self) -> str:
        """A standalone HTML page (no scripts, no external resources)."""
        return html_page([self])


def _reasons(result: LoadResult, *, rejected: bool, min_count: int) -> tuple[_Reason, ...]:
    groups: dict[IssueKind, list[Any]] = {}
    for issue in result.issues:
        if issue.rejected == rejected:
            groups.setdefault(issue.kind, []).append(issue)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    counts = protect([len(issues) for _, issues in ordered], min_count)
    return tuple(
        _Reason(
            kind.value,
            count,
            # Several issues of one case share its location: show each place once.
            tuple(dict.fromkeys(str(i.location) for i in issues))[:_EXAMPLES],
            # An unreadable age or sex would quote a patient's value: describe it instead.
            _BAD_VALUE if kind is IssueKind.BAD_VALUE else issues[0].message,
        )
        for (kind, issues), count in zip(ordered, counts, strict=True)
    )


def _systems(result: LoadResult, min_count: int) -> tuple[_System, ...]:
    table: dict[tuple[CodeRole, str], list[int]] = {}
    for use in result.codes:
        row = table.setdefault((use.role, use.code.system.value), [0, 0, 0, 0])
        row[0] += 1
        row[1 if use.target is not None else 2] += 1
        row[3] += use.count
    systems = []
    for (role, system), (distinct, mapped, unmapped, occurrences) in sorted(
        table.items(), key=lambda i: (i[0][0].value, i[0][1])
    ):
        shown_mapped, shown_unmapped = protect([mapped, unmapped], min_count)
        systems.append(
            _System(
                role.value,
                system,
                suppress(distinct, min_count),
                shown_mapped,
                shown_unmapped,
                suppress(occurrences, min_count),
            )
        )
    return tuple(systems)


# --- HTML --------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#1f2933}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d9e2ec}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .75rem;text-align:left;
border-bottom:1px solid #e4e7eb;vertical-align:top}th{background:#f0f4f8}
td.n{text-align:right;font-variant-numeric:tabular-nums}td.s{white-space:nowrap}.note{color:#52606d;font-size:.9rem}
code{font-size:.9rem}
"""


def _cell(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="n">{html.escape(str(value))}</td>'
    text = "—" if value is None else str(value)
    # Short cells (codes, locations) stay on one line; long ones (reasons) wrap.
    kind = ' class="s"' if len(text) <= 24 else ""
    return f"<td{kind}>{html.escape(text)}</td>"


def _table(headers: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    if not rows:
        return '<p class="note">None.</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(reports: Sequence[QualityReport]) -> str:
    """One standalone HTML page holding several reports (a site's training and test sources)."""
    title = " · ".join(r.source for r in reports)
    body = "".join(_html_section(r) for r in reports)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Data quality: {html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def _html_section(report: QualityReport) -> str:
    r = report
    overview: list[tuple[object, ...]] = [
        ("Records read", r.records),
        ("Cases loaded", r.loaded),
        ("Records rejected", r.rejected),
        ("Warnings (case kept)", r.warnings),
        ("Duplicate ids", r.duplicates),
        ("Cases without sex", r.missing_sex),
        ("Cases without age", r.missing_age),
    ]
    labels: list[tuple[object, ...]] = [
        ("Diagnosed cases", r.diagnosed),
        ("Distinct diseases", r.diseases),
        (f"Diseases with at least {r.min_count} cases", r.diseases_with_min_count),
        ("Diseases in the study's catalogue", r.catalogue_size),
    ]
    per_case: list[tuple[object, ...]] = [
        ("Observed phenotypes per case, median", r.phenotypes_median),
        ("Observed phenotypes per case, mean", r.phenotypes_mean),
        ("Excluded phenotypes per case, mean", r.excluded_mean),
    ]
    sections = [
        f"<section><h1>Data-quality report: {html.escape(r.source)}</h1>",
        f'<p class="note">Counts from 1 to {r.min_count - 1} are shown as &lt;{r.min_count}, '
        f"and a count marked {SECONDARY} is hidden so that such a count cannot be worked out "
        "from a total; no patient's record appears in this report.</p>",
        "<h2>Overview</h2>",
        _table(("", "count"), overview),
        "<h2>Rejected records, by reason</h2>",
        _table(
            ("reason", "count", "first example", "where"),
            [(x.kind, x.count, x.message, ", ".join(x.examples)) for x in r.rejections],
        ),
        "<h2>Warnings, by reason</h2>",
        _table(
            ("reason", "count", "first example", "where"),
            [(x.kind, x.count, x.message, ", ".join(x.examples)) for x in r.warning_reasons],
        ),
        "<h2>Codes by coding system</h2>",
        _table(
            ("role", "system", "distinct codes", "mapped", "unmapped", "occurrences"),
            [
                (x.role, x.system, x.distinct, x.mapped, x.unmapped, x.occurrences)
                for x in r.systems
            ],
        ),
        "<h2>Codes that could not be mapped</h2>",
        _table(
            ("role", "code", "occurrences", "first seen", "why"),
            [(x.role, x.code, x.count, x.first_seen, x.reason) for x in r.unmapped],
        ),
        "<h2>Phenotypes per case</h2>",
        _table(("", "value"), per_case),
        _table(("observed phenotypes", "cases"), list(r.phenotypes_histogram)),
        "<h2>Labels</h2>",
        _table(("", "count"), labels),
        "</section>",
    ]
    return "".join(sections)


def summary_lines(report: QualityReport) -> Mapping[str, Shown | float | None]:
    """The overview figures, in order, for a terminal."""
    return {
        "records read": report.records,
        "cases loaded": report.loaded,
        "rejected": report.rejected,
        "warnings": report.warnings,
        "duplicates": report.duplicates,
        "missing sex": report.missing_sex,
        "missing age": report.missing_age,
        "phenotypes per case (median)": report.phenotypes_median,
        "diseases": report.diseases,
        f"diseases with >= {report.min_count} cases": report.diseases_with_min_count,
    }
