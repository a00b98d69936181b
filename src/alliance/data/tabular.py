"""Spreadsheets as hospitals export them: CSV, TSV and Excel tables of cases or of findings.

A hospital's table has a header row, then either

one row per case (:attr:`RowLayout.CASE`)
    columns ``id`` and ``observed``, optionally ``excluded``, ``diagnoses``, ``sex`` and ``age``;
    a code cell may hold several codes separated by ``;``;
one row per finding (:attr:`RowLayout.FINDING`)
    columns ``id`` and ``code``, optionally ``status`` (present or absent; empty is present),
    ``kind`` (phenotype or diagnosis; empty: OMIM, ORPHA and ICD-10 codes are diagnoses, others
    phenotypes), ``label`` (the local meaning of a local code), ``sex`` and ``age``. The rows of
    one case may be scattered: cases come in the order of their first row, located there. A
    diagnosis marked absent is a ruled-out candidate, not a diagnosis, and is left out; sex and
    age are the first non-empty ones among the case's rows.

A :class:`TableLayout` (the ``[data.table]`` table of ``site.toml``) names the columns, the row
layout, the system of codes written without prefix, the delimiter, the encoding and the Excel
sheet. :func:`read_table` reads ``.csv``, ``.tsv`` (always tab-separated), ``.txt`` and ``.xlsx``
files into the :data:`~alliance.data.records.RecordStream` that
:func:`~alliance.data.admission.admit` checks: codes as written (each read by
:func:`~alliance.data.codes.parse_code`), sex as text, age in years as a number or an ISO-8601
duration as text (``P3Y6M``). :func:`local_labels` collects the labels of local codes for
``alliance data map``; :func:`write_table` writes cases back in either layout.

What stops the whole file is a :class:`~alliance.core.errors.DataError`: a missing or unreadable
file, an unsupported type, no header row, a required column missing (the message lists the header
and the ``[data.table]`` key to set). Everything else costs one row, as a
:class:`~alliance.data.records.RecordError` located by file and line (the spreadsheet row number
in Excel): a row with fewer cells than the header, an empty id or code, an unrecognised status or
kind, a date as age, and a line whose bytes are not text in the configured encoding
(:attr:`~alliance.data.records.IssueKind.ENCODING`). Messages name the column and quote a coded
cell (status, kind; a long one is only measured) with the values accepted there, never another
cell's content; files, lines and case ids are in the error's location and record. Status and kind
accept English and Chinese words (有/无, 阳性/阴性, 表型/诊断 ...). Repeated case ids are yielded as
they are: admission rejects duplicates.

Bytes, encodings and Excel workbooks are the business of :mod:`alliance.data.spreadsheet`; this
module gives the cells their meaning.
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime
import enum
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from alliance.core.errors import ConfigError, DataError
from alliance.data.cases import Case
from alliance.data.codes import Code, CodeSystem, parse_code
from alliance.data.records import Location, RecordError, RecordStream, SourceRecord
from alliance.data.spreadsheet import Cell, Row, SheetRows, cell_text, write_rows

__all__ = ["RowLayout", "TableLayout", "local_labels", "read_table", "write_table"]


class RowLayout(enum.Enum):
    """What one row of a hospital's table stands for."""

    CASE = "case"
    FINDING = "finding"


_FIELDS = {
    RowLayout.CASE: ("id", "sex", "age", "observed", "excluded", "diagnoses"),
    RowLayout.FINDING: ("id", "sex", "age", "code", "status", "kind", "label"),
}
_REQUIRED = {RowLayout.CASE: ("id", "observed"), RowLayout.FINDING: ("id", "code")}
_PRESENT = ("present", "yes", "y", "1", "true", "observed", "+", "有", "是", "阳性", "存在")
_ABSENT = ("absent", "no", "n", "0", "false", "excluded", "-", "无", "否", "阴性", "排除", "不存在")
_STATUS = {**dict.fromkeys(("", *_PRESENT), True), **dict.fromkeys(_ABSENT, False)}
_STATUS_HELP = f"accepted: {', '.join(_PRESENT)} or {', '.join(_ABSENT)}; empty means present"
_KINDS = {
    **dict.fromkeys(("phenotype", "finding", "表型", "症状", "体征"), False),
    **dict.fromkeys(("diagnosis", "disease", "诊断", "疾病"), True),
}
_KIND_HELP = (
    f"accepted: {', '.join(k for k, d in _KINDS.items() if not d)} or "
    f"{', '.join(k for k, d in _KINDS.items() if d)}; empty means a diagnosis for OMIM, ORPHA "
    "and ICD-10 codes"
)
_QUOTED = 12  # longest coded cell quoted in a message: codes are short, names and notes longer
_DIAGNOSIS_SYSTEMS = frozenset({CodeSystem.OMIM, CodeSystem.ORPHA, CodeSystem.ICD10})
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?$")
_DATES = (datetime.date, datetime.time, datetime.timedelta)  # datetime is a date


@dataclasses.dataclass(frozen=True)
class TableLayout:
    """How a hospital's table is laid out: the ``[data.table]`` table of ``site.toml``.

    Parameters
    ----------
    layout
        One row per case or one row per finding.
    id, sex, age
        Column names of the case id (required), sex and age (years, or ``P3Y6M``).
    observed, excluded, diagnoses
        Case layout: columns of codes present (required), ruled out and diagnosed.
    separator
        Case layout: what separates several codes in one cell.
    code, status, kind, label
        Finding layout: columns of the code (required), present/absent, phenotype/diagnosis and
        the local meaning of a local code.
    code_system
        The system of codes written without a prefix.
    delimiter
        The cell delimiter of ``.csv`` and ``.txt`` files (``.tsv`` files use a tab).
    encoding
        The encoding of text files, a Python codec name (``"utf-8"``, ``"gbk"``).
    sheet
        The Excel sheet to read; the first sheet if ``None``.

    Raises
    ------
    ConfigError
        If two fields of the layout name one column, or a delimiter, separator, encoding or
        sheet is unusable.
    """

    layout: RowLayout = RowLayout.CASE
    id: str = "id"
    sex: str = "sex"
    age: str = "age"
    observed: str = "observed"
    excluded: str = "excluded"
    diagnoses: str = "diagnoses"
    separator: str = ";"
    code: str = "code"
    status: str = "status"
    kind: str = "kind"
    label: str = "label"
    code_system: CodeSystem = CodeSystem.LOCAL
    delimiter: str = ","
    encoding: str = "utf-8"
    sheet: str | None = None

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for key in _FIELDS[self.layout]:
            name = getattr(self, key)
            if not name.strip():
                raise ConfigError(f"{key} must name a column, not be empty")
            other = seen.setdefault(name.strip().casefold(), key)
            if other != key:
                raise ConfigError(f"{other} and {key} name the same column {name!r}")
        if len(self.delimiter) != 1 or self.delimiter in '\r\n"':
            raise ConfigError('delimiter must be one character such as ",", ";" or "\\t"')
        if not self.separator.strip():
            raise ConfigError('separator must be a non-blank string such as ";"')
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(
                f'encoding {self.encoding[:40]!r} is not a known encoding; use "utf-8", "gbk"...'
            ) from None
        if self.sheet is not None and not self.sheet:
            raise ConfigError("sheet must be a sheet name, or be left out for the first sheet")

    @classmethod
    def from_mapping(cls, table: Mapping[str, object], *, where: str) -> TableLayout:
        """Read the ``[data.table]`` table of a TOML file.

        Parameters
        ----------
        table
            The parsed TOML table.
        where
            File and table as errors name them, such as ``"site.toml: [data.table]"``.

        Raises
        ------
        ConfigError
            On an unknown key, a value of the wrong type, an unknown layout or code system, or
            an unusable layout (see the class); the message starts with ``where``.
        """
        keys = [item.name for item in dataclasses.fields(cls)]
        unknown = sorted(str(key) for key in table if key not in keys)
        if unknown:
            raise ConfigError(
                f"{where} has unknown key(s) {', '.join(unknown)}; accepted: {', '.join(keys)}"
            )
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key == "layout":
                values[key] = _choice(RowLayout, value, where=f"{where} {key}")
            elif key == "code_system":
                values[key] = _choice(CodeSystem, value, where=f"{where} {key}")
            elif isinstance(value, str):
                values[key] = value
            else:
                raise ConfigError(f"{where} {key} must be a string")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where} {exc}") from None


def _choice(kind: type[enum.Enum], value: object, *, where: str) -> Any:
    accepted = [member.value for member in kind]
    if isinstance(value, str):
        for member in kind:
            if value.strip().upper() in (member.name, str(member.value).upper()):
                return member
    raise ConfigError(f"{where} must be one of {', '.join(repr(v) for v in accepted)}")


# --- reading -----------------------------------------------------------------------------------


def read_table(path: Path, layout: TableLayout) -> RecordStream:
    """Read a hospital's table into records, codes as written.

    Parameters
    ----------
    path
        A ``.csv``, ``.tsv``, ``.txt`` or ``.xlsx`` file.
    layout
        How the table is laid out.

    Returns
    -------
    RecordStream
        A :class:`~alliance.data.records.SourceRecord` per case, in the order of first
        appearance, and a :class:`~alliance.data.records.RecordError` per unusable row.

    Raises
    ------
    DataError
        At once, if the file is missing, unreadable or of an unsupported type, has no header row
        or lacks a required column.
    """
    table = _Table.open(path, layout)
    if layout.layout is RowLayout.CASE:
        return _case_records(table)
    return _finding_records(table)


def local_labels(path: Path, layout: TableLayout) -> dict[Code, str]:
    """The first non-empty label of each local code of a finding-layout table.

    Empty for a case-layout table or one without a label column; rows that fail to parse for
    other reasons (status, kind) still give their code's label.

    Raises
    ------
    DataError
        As :func:`read_table`.
    """
    table = _Table.open(path, layout)
    labels: dict[Code, str] = {}
    if layout.layout is RowLayout.CASE or "label" not in table.index:
        return labels
    for item in table.rows:
        if isinstance(item, tuple):
            line, cells = item
            code, label = table.text(cells, "code"), table.text(cells, "label")
            if code and label and table.problem(line, cells) is None:
                found = parse_code(code, default=layout.code_system)
                if found.system is CodeSystem.LOCAL:
                    labels.setdefault(found, label)
    return labels


class _RowError(Exception):
    """A row cannot be used; the message names the column, never the cell's content."""


class _Table:
    """A header and its rows (line, cells), from a text file or an Excel sheet."""

    def __init__(
        self, path: Path, layout: TableLayout, header: Sequence[object], *, counted: bool
    ) -> None:
        self.path, self.layout, self.counted = path, layout, counted
        self.rows: Iterator[Row | RecordError] = iter(())
        self.header = [cell_text(cell) for cell in header]
        positions: dict[str, list[int]] = {}
        for position, name in enumerate(self.header):
            positions.setdefault(name.casefold(), []).append(position)
        self.index: dict[str, int] = {}
        for key in _FIELDS[layout.layout]:
            name = getattr(layout, key)
            found = positions.get(name.strip().casefold(), [])
            if len(found) > 1:
                raise DataError(f"{path}: the header row names column {name!r} twice; rename one")
            if found:
                self.index[key] = found[0]
            elif key in _REQUIRED[layout.layout]:
                raise DataError(self._missing(key, name))

    @classmethod
    def open(cls, path: Path, layout: TableLayout) -> _Table:
        sheet = SheetRows(
            path, delimiter=layout.delimiter, encoding=layout.encoding, sheet=layout.sheet
        )
        rows = iter(sheet)
        for item in rows:
            if isinstance(item, RecordError):
                raise DataError(f"{item.location}: the header row cannot be read: {item.message}")
            if not _blank(item[1]):
                table = cls(path, layout, item[1], counted=sheet.counted)
                sheet.columns = table.header
                table.rows = (
                    row for row in rows if isinstance(row, RecordError) or not _blank(row[1])
                )
                return table
        raise DataError(f"{path}: the file is empty; a header row naming the columns is required")

    def _missing(self, key: str, name: str) -> str:
        other = RowLayout.FINDING if self.layout.layout is RowLayout.CASE else RowLayout.CASE
        hint = ""
        if _REQUIRED[other][1] in (name.casefold() for name in self.header):
            hint = f' (or, if it has one row per {other.value}, set layout = "{other.value}")'
        shown = ", ".join(repr(name[:40]) for name in self.header[:30])
        return (
            f"{self.path}: the header row has no column {name!r}; set [data.table] {key} = "
            f'"..." to the column that holds it{hint}; the header has: {shown}'
        )

    def text(self, cells: Sequence[object], key: str) -> str:
        """The cell of column ``key`` as stripped text; empty if the column or cell is absent."""
        position = self.index.get(key)
        return "" if position is None or position >= len(cells) else cell_text(cells[position])

    def problem(self, line: int, cells: Sequence[object]) -> RecordError | None:
        """Why a row cannot be used at all (missing cells, no id), or ``None``."""
        case_id = self.text(cells, "id")
        # Text rows only: a spreadsheet row has no count of cells, missing ones are empty.
        short = len(cells) < len(self.header)
        if self.counted and (short or not _blank(cells[len(self.header) :])):
            return self.error(
                line,
                f"the row has {len(cells)} cells where the header has {len(self.header)}; "
                "check the delimiter ([data.table] delimiter) and the quoting",
                case_id,
            )
        if not case_id:
            return self.error(line, f"column {self.layout.id!r} is empty; every row needs an id")
        return None

    def error(self, line: int, message: str, record: str | None = None) -> RecordError:
        return RecordError(Location(str(self.path), line), message, record or None)

    def codes(self, cells: Sequence[object], key: str) -> tuple[Code, ...]:
        pieces = self.text(cells, key).split(self.layout.separator)
        default = self.layout.code_system
        return tuple(parse_code(piece, default=default) for piece in pieces if piece.strip())

    def age(self, cells: Sequence[object]) -> str | float | None:
        position = self.index.get("age")
        value = None if position is None or position >= len(cells) else cells[position]
        if isinstance(value, _DATES):
            raise _RowError(
                f"column {self.layout.age!r} holds a date; write the age in years or as an "
                "ISO-8601 duration such as P3Y6M"
            )
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        text = cell_text(value)
        if _NUMBER.match(text):
            return float(text.replace(",", "."))
        return text or None


def _quote(value: str) -> str:
    """A coded cell as a message quotes it; a long one (free text typed there) is only measured."""
    return repr(value) if len(value) <= _QUOTED else f"a text of {len(value)} characters"


def _blank(cells: Sequence[object]) -> bool:
    return not any(cell_text(cell) for cell in cells)


def _case_records(table: _Table) -> RecordStream:
    for item in table.rows:
        if isinstance(item, RecordError):
            yield item
            continue
        line, cells = item
        problem = table.problem(line, cells)
        if problem is not None:
            yield problem
            continue
        case_id = table.text(cells, "id")
        try:
            age = table.age(cells)
        except _RowError as exc:
            yield table.error(line, str(exc), case_id)
            continue
        yield SourceRecord(
            case_id,
            Location(str(table.path), line),
            observed=table.codes(cells, "observed"),
            excluded=table.codes(cells, "excluded"),
            diagnoses=table.codes(cells, "diagnoses"),
            sex=table.text(cells, "sex") or None,
            age=age,
        )


@dataclasses.dataclass
class _Draft:
    """A case of a finding-layout table while its rows are gathered."""

    line: int
    sex: str | None = None
    age: str | float | None = None
    observed: list[Code] = dataclasses.field(default_factory=list)
    excluded: list[Code] = dataclasses.field(default_factory=list)
    diagnoses: list[Code] = dataclasses.field(default_factory=list)


def _finding_records(table: _Table) -> RecordStream:
    first_line: dict[str, int] = {}
    drafts: dict[str, _Draft] = {}
    for item in table.rows:
        if isinstance(item, RecordError):
            yield item
            continue
        line, cells = item
        problem = table.problem(line, cells)
        if problem is not None:
            yield problem
            continue
        case_id = table.text(cells, "id")
        first_line.setdefault(case_id, line)
        try:
            code, present, diagnosis, age = _finding(table, cells)
        except _RowError as exc:
            yield table.error(line, str(exc), case_id)
            continue
        draft = drafts.setdefault(case_id, _Draft(first_line[case_id]))
        draft.sex = draft.sex or table.text(cells, "sex") or None
        draft.age = draft.age if draft.age is not None else age
        if not diagnosis:
            (draft.observed if present else draft.excluded).append(code)
        elif present:
            draft.diagnoses.append(code)
    for case_id, draft in drafts.items():
        yield SourceRecord(
            case_id,
            Location(str(table.path), draft.line),
            tuple(draft.observed),
            tuple(draft.excluded),
            tuple(draft.diagnoses),
            draft.sex,
            draft.age,
        )


def _finding(table: _Table, cells: Sequence[object]) -> tuple[Code, bool, bool, str | float | None]:
    """A finding row's code, whether present, whether a diagnosis, and the age."""
    layout = table.layout
    text = table.text(cells, "code")
    if not text:
        raise _RowError(f"column {layout.code!r} is empty; every finding row needs a code")
    code = parse_code(text, default=layout.code_system)
    status = table.text(cells, "status")
    present = _STATUS.get(status.lower())
    if present is None:
        raise _RowError(
            f"column {layout.status!r} holds {_quote(status)}, not a status; {_STATUS_HELP}"
        )
    kind = table.text(cells, "kind")
    diagnosis = _KINDS.get(kind.lower()) if kind else code.system in _DIAGNOSIS_SYSTEMS
    if diagnosis is None:
        raise _RowError(f"column {layout.kind!r} holds {_quote(kind)}, not a kind; {_KIND_HELP}")
    return code, present, diagnosis, table.age(cells)


# --- writing -----------------------------------------------------------------------------------


def write_table(
    cases: Iterable[Case],
    path: Path,
    layout: TableLayout,
    *,
    phenotype_codes: Mapping[str, Code] | None = None,
    labels: Mapping[Code, str] | None = None,
) -> None:
    """Write cases as a ``.csv``, ``.tsv``, ``.txt`` or ``.xlsx`` table, atomically.

    Same cases, same bytes. Codes of ``layout.code_system`` are written bare, others with their
    prefix; diagnoses as written in the case (``OMIM:154700``); ages as the shortest text that
    reads back exactly (an Excel number where Excel keeps it exactly); sex as ``FEMALE``... A
    case without any code has no row in the finding layout.

    Parameters
    ----------
    cases
        The cases, written in this order.
    path
        The file to write; its folder must exist.
    layout
        The layout to write in (the text encoding and delimiter included).
    phenotype_codes
        A code to write instead of an HP id (a hospital's local code, say).
    labels
        Finding layout only: labels of codes (as written) for the ``label`` column.

    Raises
    ------
    ConfigError
        If the file type is unsupported, or ``labels`` is given for the case layout.
    DataError
        If a case cannot be written: a character outside the encoding, a code holding the
        separator; nothing is left at ``path`` but what was there before.
    """
    target = Path(path)
    if labels is not None and layout.layout is RowLayout.CASE:
        raise ConfigError("labels are written only in the finding layout (a label per row)")
    header = [getattr(layout, key) for key in _FIELDS[layout.layout]]
    if labels is None and layout.layout is RowLayout.FINDING:
        header.pop()
    rows = (
        (case.id, _rows_of(case, layout, phenotype_codes or {}, labels, where=str(target)))
        for case in cases
    )
    write_rows(
        target,
        header,
        rows,
        delimiter=layout.delimiter,
        encoding=layout.encoding,
        sheet=layout.sheet,
    )


def _rows_of(
    case: Case,
    layout: TableLayout,
    phenotype_codes: Mapping[str, Code],
    labels: Mapping[Code, str] | None,
    *,
    where: str,
) -> list[list[Cell]]:
    def written(term: str) -> tuple[Code, str]:
        code = phenotype_codes.get(term) or parse_code(term)
        return code, code.value if code.system is layout.code_system else str(code)

    age: Cell = "" if case.age_years is None else case.age_years
    start: list[Cell] = [case.id, case.sex.value, age]
    if layout.layout is RowLayout.CASE:
        columns = (
            [written(term)[1] for term in case.observed],
            [written(term)[1] for term in case.excluded],
            list(case.disease_ids),
        )
        if any(layout.separator in text for texts in columns for text in texts):
            raise DataError(f"{where}: case {case.id}: a code holds the separator; change it")
        return [start + [layout.separator.join(texts) for texts in columns]]
    rows: list[list[Cell]] = []
    for terms, status, kind in (
        (case.observed, "present", "phenotype"),
        (case.excluded, "absent", "phenotype"),
        (case.disease_ids, "present", "diagnosis"),
    ):
        for term in terms:
            code, text = written(term) if kind == "phenotype" else (parse_code(term), term)
            label = [] if labels is None else [labels.get(code, "")]
            rows.append([*start, text, status, kind, *label])
    return rows
