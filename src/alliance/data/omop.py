"""Read and write patient cases in the OMOP Common Data Model v5.4.

:func:`read_omop` reads a folder of CSV files (``person.csv``, ``observation.csv``,
``condition_occurrence.csv``, optionally ``concept.csv``; UTF-8, a header row, column names in
any case) or a database by SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``) with
those tables or views, in ``schema`` if given. It yields one
:class:`~alliance.data.records.SourceRecord` per person in file order (a database has no row
order: persons by ``person_id``, other rows by their id), then a
:class:`~alliance.data.records.RecordError` for each row of the other tables that is unusable.

person
    ``person_id`` (integer) must be unique; the case id is ``person_source_value``, or the
    ``person_id`` when that is empty. Sex from ``gender_concept_id`` (8507 male, 8532 female, 8521
    other), else ``gender_source_value`` as written, else 8551 as unknown (another concept is
    passed on as ``gender_concept_id N``, for the quality report to name). Birth from
    ``birth_datetime``, else ``year_of_birth``/``month_of_birth``/``day_of_birth`` (an unknown
    month reads as 1 July, an unknown day as the 15th).
codes
    ``*_source_value`` read by :func:`~alliance.data.codes.parse_code` (``HP:0001250``,
    ``OMIM:154700``, ``ORPHA:558``, ``SNOMEDCT:123``, ``ICD10:Q87.4``; no prefix: a local code).
    When it is empty, ``*_source_concept_id`` (nearer to what was written), else ``*_concept_id``,
    looked up in the concept table: vocabularies ``HPO``, ``SNOMED``, ``OMIM``, ``Orphanet``,
    ``ICD10`` and ``ICD10CM`` keep their system; any other gives the local code
    ``VOCABULARY:code``.
observation
    A phenotype, excluded when ``value_as_concept_id`` is 4132135 (SNOMED "Absent") or
    ``value_as_string`` is absent, excluded, no or negative (any case), present otherwise. The
    age observation (source value ``LOINC:30525-0`` or ``30525-0``, or concept 4265453) gives the
    age instead: ``value_as_number`` in ``unit_source_value`` ``a`` (or none), ``mo``, ``wk`` or
    ``d`` (365.25 days a year); of several, the largest. Without one, the age is the days from
    birth to the latest observation or condition date, over 365.25.
condition_occurrence
    OMIM, ORPHA and ICD-10 codes are diagnoses, in row order; other codes are phenotypes.
    ``condition_status_source_value`` ``refuted`` makes a phenotype excluded and drops a diagnosis.

A code repeated for one person is kept once. A malformed person row (``person_id`` not an integer
or repeated) and a row of another table whose ``person_id`` is not an integer or not in the person
table, or that has no code, are errors; an unusable age is one of kind
:attr:`~alliance.data.records.IssueKind.BAD_VALUE`; other persons still load. A missing folder,
table or required column, an undecodable file or an unreachable database raise
:class:`~alliance.core.errors.DataError` before anything is yielded. Messages name tables, lines,
row ids and columns, never a patient's values.

:func:`write_omop` writes cases as those three tables: CSV files, each written atomically, or
tables dropped and created again in one transaction. Dates are fixed: equal cases, equal output.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from alliance.core.errors import DataError
from alliance.core.files import write_atomically
from alliance.data.cases import Case, Sex
from alliance.data.codes import Code, CodeSystem, parse_code
from alliance.data.records import IssueKind, Location, RecordError, RecordStream, SourceRecord

__all__ = ["read_omop", "write_omop"]

_EXPECTED = "OMOP data holds person, observation and condition_occurrence (concept optional)"
_GENDERS = {8507: Sex.MALE, 8532: Sex.FEMALE, 8521: Sex.OTHER_SEX}
_GENDER_CONCEPTS = {Sex.MALE: 8507, Sex.FEMALE: 8532, Sex.OTHER_SEX: 8521, Sex.UNKNOWN_SEX: 8551}
_UNKNOWN_GENDER, _ABSENT, _PRESENT, _AGE, _EHR, _YEAR = 8551, 4132135, 4181412, 4265453, 32817, 9448
_ABSENT_WORDS = frozenset({"absent", "excluded", "no", "negative"})
_AGE_SOURCES = frozenset({"loinc:30525-0", "30525-0"})
_YEARS_PER_UNIT = {"a": 1.0, "": 1.0, "mo": 1 / 12, "wk": 7 / 365.25, "d": 1 / 365.25}
_DIAGNOSES = frozenset({CodeSystem.OMIM, CodeSystem.ORPHA, CodeSystem.ICD10})
_VOCABULARIES = {
    "HPO": CodeSystem.HPO,
    "SNOMED": CodeSystem.SNOMED,
    "OMIM": CodeSystem.OMIM,
    "ORPHANET": CodeSystem.ORPHA,
    "ORPHA": CodeSystem.ORPHA,
    "ICD10": CodeSystem.ICD10,
    "ICD10CM": CodeSystem.ICD10,
}
# Integers as some exports write them (pandas writes a nullable integer column as "12.0").
_INTEGER = re.compile(r"^[+-]?\d+(?:\.0*)?$")
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,59}$")
_REFERENCE_DATE = dt.date(2026, 1, 1)
_Row = dict[str, str | None]


class _Spec(NamedTuple):
    """Columns read from a table (space-separated); of ``any_of`` at least one is required."""

    name: str
    required: str
    optional: str = ""
    any_of: str = ""
    key: str = ""  # the row id: database order and row locations
    prefix: str = ""  # of the code columns
    dates: str = ""  # when the person was seen


_PERSON = _Spec(
    "person",
    "person_id",
    "person_source_value gender_concept_id gender_source_value birth_datetime year_of_birth "
    "month_of_birth day_of_birth",
    key="person_id",
)
_OBSERVATION = _Spec(
    "observation",
    "person_id",
    "observation_id observation_source_concept_id observation_date observation_datetime "
    "value_as_number value_as_string value_as_concept_id unit_source_value",
    "observation_source_value observation_concept_id",
    "observation_id",
    "observation",
    "observation_date observation_datetime",
)
_CONDITION = _Spec(
    "condition_occurrence",
    "person_id",
    "condition_occurrence_id condition_source_concept_id condition_start_date "
    "condition_start_datetime condition_end_date condition_status_source_value",
    "condition_source_value condition_concept_id",
    "condition_occurrence_id",
    "condition",
    "condition_start_date condition_start_datetime condition_end_date",
)
_CONCEPT = _Spec("concept", "concept_id vocabulary_id concept_code", key="concept_id")


@dataclass
class _Table:
    spec: _Spec
    where: str
    lines: bool  # positions are file lines, not row numbers of a query
    rows: list[tuple[int, _Row]]

    def location(self, position: int, row: _Row) -> Location:
        key = _integer(row.get(self.spec.key))
        resource = None if key is None else f"{self.spec.key} {key}"
        if self.lines:
            return Location(self.where, position, resource)
        return Location(self.where, None, resource or f"row {position}")


def read_omop(location: str | Path, *, schema: str | None = None) -> RecordStream:
    """Read persons, observations and conditions of an OMOP CDM v5.4 folder or database.

    Parameters
    ----------
    location
        A folder of CSV files, or a SQLAlchemy database URL (a string containing ``://``).
    schema
        The database schema holding the tables; the default schema when ``None``.

    Returns
    -------
    RecordStream
        One record per person, in person table order, then the errors of other tables' rows,
        by the rules of the module docstring.

    Raises
    ------
    DataError
        If the folder, a table or a required column is missing, a file is not UTF-8 CSV, or the
        database cannot be read. Everything is read before this function returns.
    """
    if not (isinstance(location, str) and "://" in location):
        return iter(_read(_Folder(Path(location))))
    engine = _engine(location, create=False)
    try:
        with engine.connect() as conn:
            return iter(_read(_Database(conn, schema)))
    except SQLAlchemyError as exc:
        raise _database_error(location, exc) from None
    finally:
        engine.dispose()


def write_omop(
    cases: Iterable[Case],
    dest: str | Path,
    *,
    schema: str | None = None,
    phenotype_codes: Mapping[str, Code] | None = None,
) -> None:
    """Write cases as the OMOP tables person, observation and condition_occurrence.

    Parameters
    ----------
    cases
        Written with ``person_id`` 1, 2, ... in order; the case id is ``person_source_value``.
    dest
        A folder (created if needed; each CSV file is moved into place only when complete) or a
        database URL, where the three tables are dropped and created in one transaction.
    schema
        The existing database schema to write into; the default schema when ``None``.
    phenotype_codes
        HP id to the code written instead (a local code as its bare value).

    Raises
    ------
    DataError
        If the database cannot be written; its old tables are then left as they were.
    """
    tables = _rows(cases, phenotype_codes or {})
    if isinstance(dest, str) and "://" in dest:
        _write_database(dest, schema, tables)
        return
    Path(dest).mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        _write_csv(Path(dest, f"{name}.csv"), _LAYOUT[name].split(), rows)


# --- sources -----------------------------------------------------------------------------------


class _Folder:
    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise DataError(f"{root}: no such folder; {_EXPECTED} as CSV files")
        self.root = root

    def has(self, name: str) -> bool:
        return (self.root / f"{name}.csv").is_file()

    def table(self, spec: _Spec, only: Collection[int] | None = None) -> _Table:
        path = self.root / f"{spec.name}.csv"
        if not path.is_file():
            found = ", ".join(sorted(p.name for p in self.root.glob("*.csv"))) or "none"
            raise DataError(f"{path}: missing; {_EXPECTED} as CSV files; found: {found}")
        try:
            with path.open(encoding="utf-8-sig", newline="") as handle:
                reader = csv.reader(handle)
                try:
                    return _Table(spec, str(path), True, _csv_rows(reader, spec, str(path), only))
                except csv.Error as exc:
                    raise DataError(f"{path}:{reader.line_num}: not readable CSV ({exc})") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text; save it as UTF-8") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot be read ({exc.strerror})") from None


def _csv_rows(
    reader: Any, spec: _Spec, where: str, only: Collection[int] | None
) -> list[tuple[int, _Row]]:
    header: list[str] = next(reader, [])
    columns = {name.strip().lower(): index for index, name in enumerate(header)}
    picked = [(name, columns[name]) for name in _check_columns(spec, header, where)]
    key = columns.get(spec.key)
    rows: list[tuple[int, _Row]] = []
    while True:
        start = reader.line_num + 1  # a quoted field may span lines: the row starts here
        values: list[str] | None = next(reader, None)
        if not values:
            if values is None:
                return rows
            continue
        if only is None or (key is not None and _integer(_cell(values, key)) in only):
            rows.append((start, {name: _cell(values, index) for name, index in picked}))


class _Database:
    def __init__(self, conn: Connection, schema: str | None) -> None:
        self.conn, self.schema, self.inspector = conn, schema, sa.inspect(conn)
        names = self.inspector.get_table_names(schema) + self.inspector.get_view_names(schema)
        self.names = {name.lower(): name for name in names}

    def has(self, name: str) -> bool:
        return name in self.names

    def table(self, spec: _Spec, only: Collection[int] | None = None) -> _Table:
        where = spec.name if self.schema is None else f"{self.schema}.{spec.name}"
        actual = self.names.get(spec.name)
        if actual is None:
            found = ", ".join(sorted(self.names.values())) or "none"
            raise DataError(f"table {where} is missing; {_EXPECTED}; tables found: {found}")
        found_columns = [c["name"] for c in self.inspector.get_columns(actual, self.schema)]
        columns = {name.lower(): name for name in found_columns}
        wanted = _check_columns(spec, found_columns, f"table {where}")
        table = sa.table(actual, *(sa.column(columns[n]) for n in wanted), schema=self.schema)
        query = sa.select(*table.c)
        if spec.key in columns:
            query = query.order_by(table.c[columns[spec.key]])
        queries = [query]
        if only is not None:  # only ids of the key column, a few hundred per query
            key, ids = table.c[columns[spec.key]], sorted(only)
            queries = [query.where(key.in_(ids[i : i + 500])) for i in range(0, len(ids), 500)]
        rows: list[tuple[int, _Row]] = []
        for each in queries:
            for values in self.conn.execute(each):
                row = {name: _text(value) for name, value in zip(wanted, values, strict=True)}
                rows.append((len(rows) + 1, row))
        return _Table(spec, where, False, rows)


def _check_columns(spec: _Spec, found: list[str], where: str) -> list[str]:
    """The columns of ``spec`` that ``found`` has, or a DataError naming those missing."""
    present = {name.strip().lower() for name in found}
    missing = [name for name in spec.required.split() if name not in present]
    if spec.any_of and not present.intersection(spec.any_of.split()):
        missing.append(spec.any_of.replace(" ", " or "))
    if missing:
        # Without a header row the first row would be shown: only name-like cells are listed.
        names = [name for name in found if _COLUMN_NAME.match(name.strip())]
        other = f" and {len(found) - len(names)} other cells" if len(names) < len(found) else ""
        raise DataError(
            f"{where}: lacks the column(s) {', '.join(missing)}; the columns found are "
            f"{', '.join(names[:40]) or 'none'}{other}"
        )
    wanted = f"{spec.required} {spec.any_of} {spec.optional}".split()
    return [name for name in wanted if name in present]


# --- records -----------------------------------------------------------------------------------


@dataclass
class _Person:
    record_id: str
    location: Location
    sex: str | None
    birth: dt.date | None
    observed: list[Code] = field(default_factory=list)
    excluded: list[Code] = field(default_factory=list)
    diagnoses: list[Code] = field(default_factory=list)
    ages: list[float] = field(default_factory=list)
    last_seen: dt.date | None = None

    def seen(self, day: dt.date | None) -> None:
        if day is not None and (self.last_seen is None or day > self.last_seen):
            self.last_seen = day

    def record(self) -> SourceRecord:
        age = max(self.ages) if self.ages else None
        if age is None and self.birth and self.last_seen and self.last_seen >= self.birth:
            age = (self.last_seen - self.birth).days / 365.25
        observed, excluded, diagnoses = (
            tuple(dict.fromkeys(codes)) for codes in (self.observed, self.excluded, self.diagnoses)
        )
        return SourceRecord(
            self.record_id, self.location, observed, excluded, diagnoses, self.sex, age
        )


def _read(source: _Folder | _Database) -> list[SourceRecord | RecordError]:
    people, observations, conditions = (
        source.table(s) for s in (_PERSON, _OBSERVATION, _CONDITION)
    )
    persons: dict[int, _Person] = {}
    items = [_person(people, position, row, persons) for position, row in people.rows]
    concepts = _concepts(source, (observations, conditions))
    errors = _attach(observations, persons, concepts) + _attach(conditions, persons, concepts)
    return [item.record() if isinstance(item, _Person) else item for item in items] + errors


def _person(
    table: _Table, position: int, row: _Row, persons: dict[int, _Person]
) -> _Person | RecordError:
    location = table.location(position, row)
    person_id = _integer(row.get("person_id"))
    if person_id is None:
        return RecordError(location, "person_id is empty or not an integer; fix the person row")
    record_id = row.get("person_source_value") or str(person_id)
    first = persons.get(person_id)
    if first is not None:
        message = f"person_id {person_id} repeats the person at {first.location}; renumber one"
        return RecordError(location, message, record_id, IssueKind.DUPLICATE)
    birth = _date(row, "birth_datetime") or _birth_from_parts(row)
    persons[person_id] = person = _Person(record_id, location, _sex(row), birth)
    return person


def _attach(
    table: _Table, persons: dict[int, _Person], concepts: dict[int, Code]
) -> list[RecordError]:
    """Give each row to its person; the errors of rows that cannot be used."""
    errors: list[RecordError] = []
    for position, row in table.rows:
        person_id = _integer(row.get("person_id"))
        person = None if person_id is None else persons.get(person_id)
        problem: str | None = f"person_id {person_id} is not in the person table"
        kind = IssueKind.MALFORMED
        if person_id is None:
            problem = "person_id is empty or not an integer"
        elif person is not None:
            for column in table.spec.dates.split():
                person.seen(_date(row, column))
            if table.spec is _OBSERVATION and _age_row(row):
                problem, kind = _age(row, person), IssueKind.BAD_VALUE
            else:
                problem = _use_code(row, table.spec, person, concepts)
        if problem is not None:
            errors.append(RecordError(table.location(position, row), problem, kind=kind))
    return errors


def _age_row(row: _Row) -> bool:
    source = (row.get("observation_source_value") or "").lower()
    return source in _AGE_SOURCES or _integer(row.get("observation_concept_id")) == _AGE


def _age(row: _Row, person: _Person) -> str | None:
    number = _number(row.get("value_as_number"))
    factor = _YEARS_PER_UNIT.get((row.get("unit_source_value") or "").lower())
    if number is None or factor is None or number < 0:
        return (
            "age observation ignored: value_as_number or unit_source_value (a, mo, wk, d) unusable"
        )
    person.ages.append(number * factor)
    return None


def _use_code(row: _Row, spec: _Spec, person: _Person, concepts: dict[int, Code]) -> str | None:
    code = _code(row, spec.prefix, concepts)
    if code is None:
        return (
            f"no code: {spec.prefix}_source_value is empty, no concept id is in the concept table"
        )
    if spec is _OBSERVATION:
        absent = _integer(row.get("value_as_concept_id")) == _ABSENT
        absent |= (row.get("value_as_string") or "").lower() in _ABSENT_WORDS
        (person.excluded if absent else person.observed).append(code)
        return None
    refuted = (row.get("condition_status_source_value") or "").lower() == "refuted"
    if code.system not in _DIAGNOSES:
        (person.excluded if refuted else person.observed).append(code)
    elif not refuted:
        person.diagnoses.append(code)
    return None


def _code(row: _Row, prefix: str, concepts: dict[int, Code]) -> Code | None:
    text = row.get(f"{prefix}_source_value")
    if text:
        return parse_code(text)
    for column in (f"{prefix}_source_concept_id", f"{prefix}_concept_id"):
        found = concepts.get(_integer(row.get(column)) or 0)
        if found is not None:
            return found
    return None


def _concepts(source: _Folder | _Database, tables: Iterable[_Table]) -> dict[int, Code]:
    """The codes of the concept ids that rows without a source value name."""
    needed = {
        concept
        for table in tables
        for _, row in table.rows
        if not row.get(f"{table.spec.prefix}_source_value")
        for suffix in ("_source_concept_id", "_concept_id")
        if (concept := _integer(row.get(table.spec.prefix + suffix)))
    }
    if not needed or not source.has(_CONCEPT.name):
        return {}
    found: dict[int, Code] = {}
    for _, row in source.table(_CONCEPT, only=needed).rows:
        text, vocabulary, value = (row.get(column) for column in _CONCEPT.required.split())
        concept_id = _integer(text)
        if concept_id is not None and vocabulary and value:
            system = _VOCABULARIES.get(vocabulary.upper())
            local = Code(CodeSystem.LOCAL, f"{vocabulary}:{value}")
            found[concept_id] = local if system is None else parse_code(value, default=system)
    return found


def _sex(row: _Row) -> str | None:
    concept = _integer(row.get("gender_concept_id"))
    if concept in _GENDERS:
        return _GENDERS[concept].value
    if written := row.get("gender_source_value"):
        return written
    if concept == _UNKNOWN_GENDER:
        return Sex.UNKNOWN_SEX.value
    # Passed on so that the quality report names the concept it could not read.
    return f"gender_concept_id {concept}" if concept else None


def _birth_from_parts(row: _Row) -> dt.date | None:
    year, month, day = (_integer(row.get(f"{part}_of_birth")) for part in ("year", "month", "day"))
    with contextlib.suppress(ValueError):
        if year is not None:
            return dt.date(year, 7, 1) if month is None else dt.date(year, month, day or 15)
    return None


def _text(value: object) -> str | None:
    text = None if value is None else str(value).strip()
    return text or None


def _cell(values: list[str], index: int) -> str | None:
    return _text(values[index]) if index < len(values) else None


def _integer(text: str | None) -> int | None:
    return int(text.partition(".")[0]) if text and _INTEGER.match(text) else None


def _number(text: str | None) -> float | None:
    with contextlib.suppress(ValueError):
        number = float(text) if text else math.nan
        return number if math.isfinite(number) else None
    return None


def _date(row: _Row, column: str) -> dt.date | None:
    text = row.get(column)
    with contextlib.suppress(ValueError):
        return dt.datetime.fromisoformat(text).date() if text else None
    return None


# --- writing -----------------------------------------------------------------------------------

# Columns written, in order: OMOP v5.4 names; _column_type gives their database types.
_LAYOUT = {
    "person": "person_id gender_concept_id year_of_birth month_of_birth day_of_birth "
    "race_concept_id ethnicity_concept_id person_source_value gender_source_value",
    "observation": "observation_id person_id observation_concept_id observation_date "
    "observation_type_concept_id value_as_number value_as_string value_as_concept_id "
    "unit_concept_id unit_source_value observation_source_value observation_source_concept_id",
    "condition_occurrence": "condition_occurrence_id person_id condition_concept_id "
    "condition_start_date condition_type_concept_id condition_status_source_value "
    "condition_source_value condition_source_concept_id",
}
_Written = dict[str, list[tuple[object, ...]]]


def _rows(cases: Iterable[Case], codes: Mapping[str, Code]) -> _Written:
    people: list[tuple[object, ...]] = []
    observations: list[tuple[object, ...]] = []
    conditions: list[tuple[object, ...]] = []
    when, how = _REFERENCE_DATE, _EHR
    for person_id, case in enumerate(cases, start=1):
        age = case.age_years
        born = None if age is None or not 0 <= age < 150 else when - dt.timedelta(age * 365.25)
        birth = (None, None, None) if born is None else (born.year, born.month, born.day)
        people.append(
            (person_id, _GENDER_CONCEPTS[case.sex], *birth, 0, 0, case.id, case.sex.value)
        )
        if age is not None:
            measured = (age, None, None, _YEAR, "a", "LOINC:30525-0", 0)
            observations.append((len(observations) + 1, person_id, _AGE, when, how, *measured))
        terms = [(t, False) for t in case.observed] + [(t, True) for t in case.excluded]
        for term, absent in terms:
            source = str(codes.get(term, term))
            value = ("absent", _ABSENT) if absent else ("present", _PRESENT)
            row = (len(observations) + 1, person_id, 0, when, how, None, *value, None, None)
            observations.append((*row, source, 0))
        for disease in case.disease_ids:
            conditions.append((len(conditions) + 1, person_id, 0, when, how, None, disease, 0))
    return {"person": people, "observation": observations, "condition_occurrence": conditions}


def _column_type(name: str) -> sa.types.TypeEngine[Any]:
    if name.endswith("_date"):
        return sa.Date()
    if name.endswith(("_source_value", "_as_string")):
        return sa.String()
    if name == "value_as_number":
        return sa.Float()
    return sa.BigInteger() if name in ("person_id", "observation_id") else sa.Integer()


def _write_csv(target: Path, columns: list[str], rows: list[tuple[object, ...]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        # repr: the shortest text that reads back as the very same float.
        writer.writerow(repr(v) if isinstance(v, float) else v for v in row)
    write_atomically(target, buffer.getvalue().encode("utf-8"))


def _write_database(url: str, schema: str | None, tables: _Written) -> None:
    metadata = sa.MetaData(schema=schema)
    for name, layout in _LAYOUT.items():
        columns = (
            sa.Column(c, _column_type(c), primary_key=i == 0, autoincrement=False)
            for i, c in enumerate(layout.split())
        )
        sa.Table(name, metadata, *columns)
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            metadata.drop_all(conn)
            metadata.create_all(conn)
            for table in metadata.sorted_tables:
                names = [column.name for column in table.columns]
                rows = [dict(zip(names, row, strict=True)) for row in tables[table.name]]
                if rows:
                    conn.execute(table.insert(), rows)
    except SQLAlchemyError as exc:
        raise _database_error(url, exc) from None
    finally:
        engine.dispose()


def _engine(url: str, *, create: bool = True) -> sa.Engine:
    try:
        parsed = make_url(url)
        engine = sa.create_engine(parsed)
    except (SQLAlchemyError, ValueError) as exc:
        raise DataError(f"not a usable database URL ({type(exc).__name__})") from None
    file = parsed.database if engine.dialect.name == "sqlite" and not create else None
    # Connecting would create an empty SQLite file where none was meant to be.
    if file and file != ":memory:" and not parsed.query.get("uri") and not Path(file).is_file():
        raise DataError(f"database {parsed.render_as_string()}: no such SQLite file")
    if engine.dialect.name == "sqlite":
        # pysqlite commits on its own before DDL; emitting BEGIN ourselves makes drop, create
        # and insert one transaction, as they are on PostgreSQL.
        sa.event.listen(engine, "connect", _sqlite_manual_transactions)
        sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_manual_transactions(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def _database_error(url: str, exc: SQLAlchemyError) -> DataError:
    shown = make_url(url).render_as_string(hide_password=True)
    # The driver's first line says what failed; later lines may quote statements and values.
    first = str(getattr(exc, "orig", None) or type(exc).__name__).strip().splitlines()
    return DataError(f"database {shown}: {first[0] if first else type(exc).__name__}")
