"""What every adapter reads a hospital's files into, before any code is checked.

An adapter (:mod:`~alliance.data.compact`, :mod:`~alliance.data.phenopacket`,
:mod:`~alliance.data.fhir`, :mod:`~alliance.data.tabular`, :mod:`~alliance.data.omop`) turns its
format into a stream of :class:`SourceRecord` (one patient, codes exactly as written, each a
:class:`~alliance.data.codes.Code`) and :class:`RecordError` (a record that could not even be
parsed). Each carries a :class:`Location` precise enough for the hospital to find it: file and
line, or file and resource id.

:mod:`alliance.data.admission` then admits records one at a time: it maps every code through the
hospital's :class:`~alliance.data.codes.CodeMapper`, rejects duplicates and cases without a usable
phenotype or diagnosis, and counts what it saw for the data-quality report. Adapters never decide
whether a code is valid, so every format is checked by the same rules.

Messages here name fields, lines and resource ids, never a patient's data.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from alliance.data.codes import Code

__all__ = ["IssueKind", "Location", "RecordError", "RecordStream", "SourceRecord"]


@dataclass(frozen=True)
class Location:
    """Where a record sits in the hospital's data.

    Parameters
    ----------
    path
        The file (or database table) it came from.
    line
        1-based line (or spreadsheet row) where the format has lines.
    resource
        The resource or row id where the format has them (``Observation/obs-12``,
        ``person_id 3``, ``list entry 4``).
    """

    path: str
    line: int | None = None
    resource: str | None = None

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return where if self.resource is None else f"{where} ({self.resource})"


class IssueKind(enum.Enum):
    """What was wrong with a record; the quality report groups issues by it."""

    MALFORMED = "malformed"  # structure or types wrong: bad JSON, missing field, wrong type
    ENCODING = "encoding"  # bytes are not text in the configured encoding
    DUPLICATE = "duplicate"  # the id was already seen in this load
    UNMAPPED_PHENOTYPE = "unmapped phenotype"  # a phenotype code that maps to no current HPO term
    NO_PHENOTYPE = "no phenotype"  # no observed term left after mapping
    UNMAPPED_DIAGNOSIS = "unmapped diagnosis"  # a diagnosis code that maps to no study disease
    NO_DIAGNOSIS = "no diagnosis"  # no diagnosis, where one is required
    BAD_VALUE = "bad value"  # an unreadable sex, age or other optional value (a warning)


@dataclass(frozen=True)
class SourceRecord:
    """One patient as an adapter read it: codes as written, values as text or numbers.

    Parameters
    ----------
    id
        The hospital's pseudonymous case id.
    location
        Where the record was read.
    observed, excluded
        Phenotype codes present and explicitly ruled out, in the order written.
    diagnoses
        Confirmed diagnosis codes, primary first.
    sex
        Sex as recorded (``"MALE"``, ``"f"``, ``"male"``...); ``None`` if absent.
    age
        Age at last encounter: years as a number, or an ISO-8601 duration (``"P3Y6M"``).
    onset
        Age at onset, as ``age``; used when ``age`` is absent.
    publication
        Source grouping (a PubMed id for published cases), if the format carries one.
    """

    id: str
    location: Location
    observed: tuple[Code, ...]
    excluded: tuple[Code, ...] = ()
    diagnoses: tuple[Code, ...] = ()
    sex: str | None = None
    age: str | float | None = None
    onset: str | float | None = None
    publication: str | None = None


@dataclass(frozen=True)
class RecordError:
    """A record that could not be parsed at all.

    Parameters
    ----------
    location
        Where it sits.
    message
        What was wrong and what to do, naming fields, never patient data.
    record
        The case id when it could be read.
    kind
        :attr:`IssueKind.MALFORMED` unless the bytes themselves were unreadable.
    """

    location: Location
    message: str
    record: str | None = None
    kind: IssueKind = IssueKind.MALFORMED


RecordStream = Iterator[SourceRecord | RecordError]
"""What an adapter's reader yields, in the order of the hospital's files."""
