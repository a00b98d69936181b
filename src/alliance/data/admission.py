"""Admitting records as cases: the checks every format shares, and what they found.

:func:`admit` takes an adapter's stream of :class:`~alliance.data.records.SourceRecord` and
:class:`~alliance.data.records.RecordError` and decides, record by record, with the same rules
whatever the format:

- a record that could not be parsed is rejected (its :class:`LoadIssue` says where and why);
- a record whose id was already seen in this load is rejected, naming where it was first seen;
- every phenotype code is mapped by the hospital's :class:`~alliance.data.codes.CodeMapper`; one
  that cannot be mapped is dropped with a warning (the case keeps its other terms) and a case left
  with no observed term is rejected;
- every diagnosis is mapped too; one that cannot be mapped rejects the case (a wrong label is
  worse than no case), and so does no diagnosis at all when one is required;
- an unreadable age or an unrecognised sex only warns, and is recorded as unknown.

Besides the cases and issues, a :class:`LoadResult` counts every distinct code as written
(:class:`CodeUse`: how often, what it mapped to or why not, where first seen) — the material of
the data-quality report and of ``alliance data map``. Nothing here keeps a patient's values
beyond the cases themselves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from alliance.core.errors import UnknownCodeError
from alliance.data.cases import Case, Sex, accepted_sex_values, is_unknown_on_purpose
from alliance.data.codes import Code, CodeMapper, CodeRole
from alliance.data.phenopacket import _parse_duration, _show
from alliance.data.records import IssueKind, Location, RecordError, SourceRecord

__all__ = ["CodeUse", "LoadIssue", "LoadResult", "admit"]


@dataclass(frozen=True)
class LoadIssue:
    """One problem found while loading, located as precisely as the format allows.

    Parameters
    ----------
    path
        The file (or table) the record came from.
    line
        1-based line where the format has lines, else ``None``.
    record
        The case id when it could be read.
    message
        What was wrong and what to do about it.
    rejected
        ``True`` when the case was not loaded; ``False`` for a warning (the case was loaded
        without the offending value, such as one unknown HPO term).
    kind
        What kind of problem it is, for grouping in the quality report.
    resource
        The resource or row id where the format has them (``Observation/obs-12``).
    """

    path: str
    line: int | None
    record: str | None
    message: str
    rejected: bool
    kind: IssueKind = IssueKind.MALFORMED
    resource: str | None = None

    @property
    def location(self) -> Location:
        """Where the record sits."""
        return Location(self.path, self.line, self.resource)

    def __str__(self) -> str:
        who = f"case {self.record}: " if self.record else ""
        verdict = "rejected" if self.rejected else "warning"
        return f"{self.location}: {who}{verdict}: {self.message}"


@dataclass(frozen=True)
class CodeUse:
    """One distinct code as written in the hospital's data, and what became of it.

    Parameters
    ----------
    code
        The code as written.
    role
        Phenotype or diagnosis.
    count
        How many times it occurs in the records read (rejected records included).
    target
        The study id it maps to, or ``None`` if it could not be mapped.
    reason
        Why it could not be mapped, else ``None``.
    first_seen
        Where it first occurs.
    """

    code: Code
    role: CodeRole
    count: int
    target: str | None
    reason: str | None
    first_seen: Location


@dataclass(frozen=True)
class LoadResult:
    """The cases that loaded, in file order, every issue found on the way, and the codes seen."""

    cases: tuple[Case, ...]
    issues: tuple[LoadIssue, ...]
    records: int = 0
    codes: tuple[CodeUse, ...] = ()

    @property
    def rejected(self) -> int:
        """Number of records not loaded (each has exactly one rejecting issue)."""
        return sum(1 for issue in self.issues if issue.rejected)


def admit(
    stream: Iterable[SourceRecord | RecordError],
    mapper: CodeMapper,
    *,
    require_diagnosis: bool = True,
) -> LoadResult:
    """Check every record of ``stream``; admit the good ones as cases.

    Parameters
    ----------
    stream
        An adapter's records and parse errors, in file order.
    mapper
        Maps codes as written to current HPO ids and the study's disease ids.
    require_diagnosis
        Reject records without any diagnosis (the default, for training); ``False`` keeps them,
        for instance to rank undiagnosed patients.

    Returns
    -------
    LoadResult
        Possibly with no case at all: deciding whether that is an error is the caller's.
    """
    admission = _Admission(mapper, require_diagnosis=require_diagnosis)
    for item in stream:
        admission.add(item)
    return admission.result()


@dataclass
class _Tally:
    first_seen: Location
    target: str | None = None
    reason: str | None = None
    count: int = 0


class _Admission:
    def __init__(self, mapper: CodeMapper, *, require_diagnosis: bool) -> None:
        self._mapper = mapper
        self._require_diagnosis = require_diagnosis
        self._seen: dict[str, Location] = {}
        self._uses: dict[tuple[CodeRole, Code], _Tally] = {}
        self._records = 0
        self.cases: list[Case] = []
        self.issues: list[LoadIssue] = []

    def result(self) -> LoadResult:
        uses = tuple(
            CodeUse(code, role, tally.count, tally.target, tally.reason, tally.first_seen)
            for (role, code), tally in self._uses.items()
        )
        return LoadResult(tuple(self.cases), tuple(self.issues), self._records, uses)

    def add(self, item: SourceRecord | RecordError) -> None:
        self._records += 1
        if isinstance(item, RecordError):
            where = item.location
            # An unusable optional value (an age row in OMOP) costs only the value, not a case.
            rejected = item.kind is not IssueKind.BAD_VALUE
            self.issues.append(
                LoadIssue(
                    where.path, where.line, item.record, item.message, rejected, item.kind,
                    where.resource,
                )
            )  # fmt: skip
            if not rejected:
                self._records -= 1  # a remark about a record counted elsewhere, not a record
            return
        self._admit(item)

    def _note(
        self, record: SourceRecord, message: str, kind: IssueKind, *, rejected: bool = True
    ) -> None:
        where = record.location
        self.issues.append(
            LoadIssue(where.path, where.line, record.id, message, rejected, kind, where.resource)
        )

    def _admit(self, record: SourceRecord) -> None:
        first = self._seen.get(record.id)
        if first is None:
            self._seen[record.id] = record.location
        observed = self._map(record, record.observed, "observed")
        excluded = self._map(record, record.excluded, "excluded")
        diagnoses, problem = self._diagnoses(record)
        if first is not None:
            return self._note(
                record,
                f"duplicate case id, first seen at {first}; rename or remove one",
                IssueKind.DUPLICATE,
            )
        if problem is not None:
            kind = IssueKind.NO_DIAGNOSIS if not record.diagnoses else IssueKind.UNMAPPED_DIAGNOSIS
            return self._note(record, problem, kind)
        for field, dropped in (("observed", observed[1]), ("excluded", excluded[1])):
            for message in dropped:
                self._note(
                    record, f"{field} term dropped: {message}", IssueKind.UNMAPPED_PHENOTYPE,
                    rejected=False,
                )  # fmt: skip
        if not observed[0]:
            return self._note(
                record,
                "no usable observed phenotype; a case needs at least one",
                IssueKind.NO_PHENOTYPE,
            )
        sex = Sex.parse(record.sex)
        if sex is Sex.UNKNOWN_SEX and not is_unknown_on_purpose(record.sex):
            self._note(
                record,
                f"sex {_show(record.sex)} not recognised; recorded as UNKNOWN_SEX; accepted "
                f"(any letter case): {accepted_sex_values()}",
                IssueKind.BAD_VALUE,
                rejected=False,
            )
        self.cases.append(
            Case(
                record.id,
                observed[0],
                excluded[0],
                diagnoses,
                sex,
                self._age(record),
                record.publication,
            )
        )
        return None

    def _use(self, record: SourceRecord, code: Code, role: CodeRole) -> str | UnknownCodeError:
        tally = self._uses.get((role, code))
        if tally is None:
            try:
                tally = _Tally(record.location, target=self._mapper.map(code, role))
            except UnknownCodeError as exc:
                tally = _Tally(record.location, reason=str(exc))
            self._uses[(role, code)] = tally
        tally.count += 1
        return tally.target if tally.target is not None else UnknownCodeError(str(tally.reason))

    def _map(
        self, record: SourceRecord, codes: tuple[Code, ...], field: str
    ) -> tuple[tuple[str, ...], list[str]]:
        kept: dict[str, None] = {}  # ordered set: an obsolete id may resolve to one already there
        dropped: list[str] = []
        for code in codes:
            found = self._use(record, code, CodeRole.PHENOTYPE)
            if isinstance(found, str):
                kept[found] = None
            else:
                dropped.append(str(found))
        return tuple(kept), dropped

    def _diagnoses(self, record: SourceRecord) -> tuple[tuple[str, ...], str | None]:
        if not record.diagnoses and self._require_diagnosis:
            return (), "no diagnosis; pass require_diagnosis=False to keep undiagnosed cases"
        kept: dict[str, None] = {}
        problem: str | None = None
        for code in record.diagnoses:
            found = self._use(record, code, CodeRole.DIAGNOSIS)
            if isinstance(found, str):
                kept[found] = None
            elif problem is None:
                problem = f"unknown disease: {found}"
        return tuple(kept), problem

    def _age(self, record: SourceRecord) -> float | None:
        for name, value in (("age", record.age), ("onset", record.onset)):
            try:
                years = _years(value)
            except ValueError as exc:
                self._note(
                    record, f"field {name!r}: {exc}; ignored", IssueKind.BAD_VALUE, rejected=False
                )
                continue
            if years is not None:
                return years
        return None


def _years(value: str | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _parse_duration(value)
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{value!r} is not a finite, non-negative number of years")
    return float(value)
