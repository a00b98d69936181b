"""Reading a hospital's cases, whatever its format: where they are, how they are coded, one entry.

A :class:`DataSource` says where a hospital's cases are and how to read them; the ``[data]``
table of ``site.toml`` describes one for training and optionally one for held-out cases
(:class:`DataConfig`):

.. code-block:: toml

    [data]
    train = "cases/"             # a file, a folder, or an OMOP database URL (a relative
                                 # sqlite:/// path is relative to this file's folder)
    test = "held-out.xlsx"       # optional
    format = "auto"              # auto, jsonl, phenopacket, fhir, table, omop
    mapping = "local_codes.csv"  # optional: the hospital's code → HPO/OMIM/ORPHA table
    hpo_release = "hp.obo"       # optional: alternative ids, synonyms, SNOMED/UMLS/ICD xrefs
    schema = "cdm"               # optional: the OMOP schema in a database
    report_min_count = 5         # counts below this are suppressed in `alliance data check`

    [data.table]                 # for CSV and Excel files: see alliance.data.tabular
    layout = "finding"
    id = "patient"

With ``format = "auto"`` each file is read by its name: ``.jsonl``/``.jsonl.gz`` compact cases
(:mod:`~alliance.data.compact`), ``.json`` a FHIR Bundle when it names a ``resourceType``, else
Phenopacket v2 (:mod:`~alliance.data.fhir`, :mod:`~alliance.data.phenopacket`),
``.csv``/``.tsv``/``.xlsx`` a table (:mod:`~alliance.data.tabular`); a folder holding
``person.csv``, or a database URL, is an OMOP CDM (:mod:`~alliance.data.omop`). Any other folder
is read file by file, in name order (hidden files and other kinds skipped).

:func:`read_source` runs the adapter and admits its records (:mod:`~alliance.data.admission`:
codes mapped by the hospital's :class:`~alliance.data.codes.CodeMapper`, duplicates and cases
without phenotype or diagnosis rejected, every problem a :class:`LoadIssue` naming file and line
or resource). A file that cannot be read at all (empty, not decodable, a table without its id
column) costs only itself and counts as one rejected record.
:class:`~alliance.core.errors.DataError` is raised only when nothing can be loaded: a missing
path, a folder without case files, or every record rejected.
:func:`load_cases` is the same for a bare path.
"""

from __future__ import annotations

import enum
import functools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alliance.core.config import TomlFile
from alliance.core.errors import ConfigError, DataError
from alliance.data.admission import CodeUse, LoadIssue, LoadResult, admit
from alliance.data.codes import Code, CodeMapper, CrossReferences, LocalMapping
from alliance.data.compact import read_compact, write_jsonl
from alliance.data.ontology import DiseaseCatalogue, Ontology
from alliance.data.phenopacket import read_phenopackets
from alliance.data.records import Location, RecordError, RecordStream
from alliance.data.tabular import TableLayout

__all__ = [
    "CodeUse",
    "DataConfig",
    "DataSource",
    "LoadIssue",
    "LoadResult",
    "SourceFormat",
    "code_mapper",
    "load_cases",
    "local_labels",
    "read_source",
    "write_jsonl",
]

logger = logging.getLogger(__name__)

_EXPECTED = (
    "expected JSON-lines of cases (.jsonl or .jsonl.gz), a GA4GH Phenopacket v2 or FHIR Bundle "
    "file (.json), a table (.csv, .tsv, .xlsx), an OMOP CDM folder or database URL, or a "
    "folder of such files"
)
_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:')


class SourceFormat(enum.Enum):
    """How a source's files are read."""

    AUTO = "auto"
    COMPACT = "jsonl"
    PHENOPACKET = "phenopacket"
    FHIR = "fhir"
    TABLE = "table"
    OMOP = "omop"


_SUFFIXES: dict[SourceFormat, tuple[str, ...]] = {
    SourceFormat.COMPACT: (".jsonl", ".jsonl.gz"),
    SourceFormat.PHENOPACKET: (".json",),
    SourceFormat.FHIR: (".json",),
    SourceFormat.TABLE: (".csv", ".tsv", ".xlsx"),
}


@dataclass(frozen=True)
class DataSource:
    """Where a hospital's cases are and how they are read and coded.

    Parameters
    ----------
    location
        A file, a folder, or (OMOP) a SQLAlchemy database URL.
    format
        How to read it; ``AUTO`` decides by file name (see the module docstring).
    table
        The layout of CSV and Excel files (defaults of :class:`~alliance.data.tabular.TableLayout`
        when ``None``).
    schema
        The schema of OMOP tables in a database.
    mapping
        The hospital's mapping table of local (or any) codes.
    hpo_release
        An HPO release file (``hp.obo``) for alternative ids, synonyms and cross-references;
        when ``None``, :func:`~alliance.data.hpo_release.find_release` looks for one.
    """

    location: str
    format: SourceFormat = SourceFormat.AUTO
    table: TableLayout | None = None
    schema: str | None = None
    mapping: Path | None = None
    hpo_release: Path | None = None

    @property
    def is_database(self) -> bool:
        """Whether the location is a database URL rather than a path."""
        return "://" in self.location


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` table of a site's config: its training and held-out cases.

    Use :meth:`load` for a file, or :meth:`from_toml` inside a larger config.
    """

    train: DataSource
    test: DataSource | None = None
    report_min_count: int = 5

    @classmethod
    def load(cls, path: str | Path) -> DataConfig:
        """Read ``[data]`` of a TOML file (nothing else in it is needed or checked)."""
        return cls.from_toml(TomlFile(path))

    @classmethod
    def from_toml(cls, f: TomlFile) -> DataConfig:
        """Read ``[data]`` of an already parsed file.

        Raises
        ------
        ConfigError
            Naming the file and key that is missing or wrong.
        """
        raw_format = f.string("data", "format", default="auto")
        try:
            fmt = SourceFormat(raw_format)
        except ValueError:
            choices = ", ".join(repr(s.value) for s in SourceFormat)
            raise ConfigError(
                f"{f.path}: [data] format {raw_format!r} is unknown; choose one of {choices}"
            ) from None
        table_opts = f.data.get("data", {}).get("table")
        table = None
        if table_opts is not None:
            if not isinstance(table_opts, dict):
                raise ConfigError(f"{f.path}: [data.table] must be a table")
            table = TableLayout.from_mapping(table_opts, where=f"{f.path}: [data.table]")
        schema = f.string("data", "schema", default="") or None
        shared = {
            "format": fmt,
            "table": table,
            "schema": schema,
            "mapping": f.path_of("data", "mapping", optional=True),
            "hpo_release": f.path_of("data", "hpo_release", optional=True),
        }

        def source(key: str, *, optional: bool) -> DataSource | None:
            # An optional source may be written as "" (the site.toml template's `test = ""`).
            if optional and f.path_of("data", key, must_exist=False, optional=True) is None:
                return None
            text = f.string("data", key)
            if "://" in text:
                return DataSource(_sqlite_beside(text, f.path.parent), **shared)  # type: ignore[arg-type]
            path = f.path_of("data", key)
            return DataSource(str(path), **shared)  # type: ignore[arg-type]

        train = source("train", optional=False)
        assert train is not None
        return cls(
            train=train,
            test=source("test", optional=True),
            report_min_count=f.integer("data", "report_min_count", default=5, minimum=1),
        )


def _sqlite_beside(url: str, folder: Path) -> str:
    """A relative SQLite URL (``sqlite:///omop.db``) made absolute against the config's folder."""
    prefix = "sqlite:///"
    rest = url[len(prefix) :] if url.startswith(prefix) else None
    if rest is None or not rest or rest.startswith("/") or rest.startswith(":memory:"):
        return url
    return prefix + str((folder / rest).resolve())


def load_cases(
    path: str | Path,
    *,
    ontology: Ontology,
    catalogue: DiseaseCatalogue | None = None,
    require_diagnosis: bool = True,
) -> LoadResult:
    """Load cases from a file, a folder or an OMOP database URL, its format decided by name.

    See :func:`read_source`; this is it for ``DataSource(str(path))``.
    """
    return read_source(
        DataSource(str(path)),
        ontology=ontology,
        catalogue=catalogue,
        require_diagnosis=require_diagnosis,
    )


def read_source(
    source: DataSource,
    *,
    ontology: Ontology,
    catalogue: DiseaseCatalogue | None = None,
    require_diagnosis: bool = True,
    allow_empty: bool = False,
) -> LoadResult:
    """Read a hospital's cases and admit them (codes mapped, duplicates refused).

    Parameters
    ----------
    source
        Where the cases are and how they are coded.
    ontology
        Resolves HPO ids; obsolete ids become their current replacement.
    catalogue
        When given, a case with a disease not in it is rejected.
    require_diagnosis
        Reject cases without any diagnosis (the default, for training); pass ``False`` to keep
        undiagnosed cases, for instance to rank them.
    allow_empty
        Return a result with no case instead of raising (the quality report wants to show why).

    Returns
    -------
    LoadResult
        The loaded cases, every issue, rejecting or not, and every distinct code seen.

    Raises
    ------
    DataError
        If the location does not exist or holds no case file, a file is empty or unreadable,
        the mapping table or HPO release file is wrong, or every record was rejected.
    """
    mapper = code_mapper(source, ontology=ontology, catalogue=catalogue)
    result = admit(_records(source), mapper, require_diagnosis=require_diagnosis)
    if result.records == 0 and not allow_empty:
        raise DataError(f"{source.location}: holds no case record; {_EXPECTED}")
    if not result.cases and not allow_empty:
        first = "; ".join(str(issue) for issue in result.issues[:3])
        raise DataError(
            f"{source.location}: none of the {result.rejected} records could be loaded; "
            f"first issues: {first}"
        )
    logger.info(
        "loaded %d cases from %s (%d rejected, %d warnings)",
        len(result.cases),
        source.location,
        result.rejected,
        len(result.issues) - result.rejected,
    )
    return result


def local_labels(source: DataSource) -> dict[Code, str]:
    """The meanings of local codes that a source's tables carry in their label column.

    Only CSV and Excel files in finding layout have one; other formats give nothing.
    """
    from alliance.data.tabular import local_labels as table_labels

    if source.format not in (SourceFormat.AUTO, SourceFormat.TABLE) or source.is_database:
        return {}
    root = Path(source.location)
    if not root.exists() or (root.is_dir() and (root / "person.csv").exists()):
        return {}
    labels: dict[Code, str] = {}
    for file, fmt in _files(root, source.format):
        if fmt is SourceFormat.TABLE:
            for code, label in table_labels(file, source.table or TableLayout()).items():
                labels.setdefault(code, label)
    return labels


def code_mapper(
    source: DataSource, *, ontology: Ontology, catalogue: DiseaseCatalogue | None
) -> CodeMapper:
    """The mapper of a source's codes: its mapping table and HPO release file, if any."""
    local = LocalMapping.read(source.mapping) if source.mapping is not None else None
    return CodeMapper(ontology, catalogue, local=local, references=_references(source))


def _references(source: DataSource) -> CrossReferences | None:
    from alliance.data.hpo_release import find_release

    path = find_release(source.hpo_release)
    if path is None:
        return None
    stat = path.stat()
    return _read_release(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read_release(path: str, mtime_ns: int, size: int) -> CrossReferences:
    # Keyed by modification time and size too, so a replaced file is read again.
    from alliance.data.hpo_release import HpoRelease

    return HpoRelease.read(path)


# --- finding and reading files -----------------------------------------------------------------


def _records(source: DataSource) -> RecordStream:
    if source.format is SourceFormat.OMOP or source.is_database:
        yield from _omop(source, source.location)
        return
    root = Path(source.location)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder; {_EXPECTED}")
    if root.is_dir() and source.format is SourceFormat.AUTO and (root / "person.csv").exists():
        yield from _omop(source, root)
        return
    for file, fmt in _files(root, source.format):
        try:
            yield from _read_file(source, file, fmt)
        except DataError as exc:
            # A file that cannot be read at all (empty, undecodable, a table without its id
            # column) costs only itself: it counts as one rejected record, named in the report.
            message = str(exc).removeprefix(f"{file}: ")
            yield RecordError(Location(str(file)), message)


def _omop(source: DataSource, location: str | Path) -> RecordStream:
    from alliance.data.omop import read_omop

    return read_omop(location, schema=source.schema)


def _files(root: Path, fmt: SourceFormat) -> Iterator[tuple[Path, SourceFormat]]:
    if not root.is_dir():
        kind = _format_of(root, fmt)
        if kind is None:
            raise DataError(f"{root}: unsupported file type; {_EXPECTED}")
        yield root, kind
        return
    found = [
        (child, kind)
        for child in sorted(root.iterdir())
        # Hidden files are editor or OS leftovers (macOS "._x.json"), never case files.
        if child.is_file()
        and not child.name.startswith(".")
        and (kind := _format_of(child, fmt)) is not None
    ]
    if not found:
        raise DataError(f"{root}: folder holds no case file; {_EXPECTED}")
    yield from found


def _format_of(path: Path, fmt: SourceFormat) -> SourceFormat | None:
    name = path.name.lower()
    candidates = [fmt] if fmt is not SourceFormat.AUTO else list(_SUFFIXES)
    for kind in candidates:
        if any(name.endswith(suffix) for suffix in _SUFFIXES.get(kind, ())):
            if fmt is SourceFormat.AUTO and name.endswith(".json"):
                return SourceFormat.FHIR if _names_resource_type(path) else SourceFormat.PHENOPACKET
            return kind
    return None


def _names_resource_type(path: Path) -> bool:
    """Whether a JSON file starts like a FHIR resource (``"resourceType": ...``)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return _RESOURCE_TYPE.search(head) is not None


def _read_file(source: DataSource, file: Path, fmt: SourceFormat) -> RecordStream:
    if fmt is SourceFormat.COMPACT:
        return read_compact(file)
    if fmt is SourceFormat.PHENOPACKET:
        return read_phenopackets(file)
    if fmt is SourceFormat.FHIR:
        from alliance.data.fhir import read_fhir

        return read_fhir(file)
    from alliance.data.tabular import read_table

    return read_table(file, source.table or TableLayout())
