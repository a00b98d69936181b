"""The demo hospitals' case files: each keeps its patients in its own format and coding.

In the story every hospital records its data its own way. :func:`write_site_files` writes one
hospital's synthetic cases the way it keeps them, and returns the :class:`SiteFiles` that say how
to read them back, so that the demo's sites load their cases through the adapters exactly as a
deployed site would (:func:`~alliance.data.loading.read_source`):

==========  ===============================================  =============================
hospital    format                                           codes
==========  ===============================================  =============================
1st         FHIR R4 Bundle                                   HPO
2nd         GA4GH Phenopacket v2, one file per patient       HPO
3rd         CSV, one row per patient                         HPO
4th         OMOP CDM tables as CSV files                     HPO source values
5th         CSV, one row per finding, with labels            local codes + mapping table
6th         Excel workbook, one row per patient              HPO
7th         OMOP CDM in an SQLite database                   HPO source values
8th         FHIR R4 Bundle                                   local codes + mapping table
9th         Excel workbook, one row per finding              HPO
10th        compact JSON lines                               HPO
11th        GA4GH Phenopacket v2, a list in one file         HPO
12th        TSV, one row per finding                         HPO
==========  ===============================================  =============================

(a consortium of more hospitals cycles through the same list). A hospital with local codes gets
its own vocabulary (``<PREFIX>-0001``..., in the order its terms first appear), labelled with the
term names, and the mapping table ``local_codes.csv`` that maps them back. Each hospital's folder
also gets ``data.toml``, the ``[data]`` table of its site config, so that
``alliance data check --config <folder>/data.toml`` shows how its files were understood.

Every format keeps the case order, exact ages and all codes, so the cases read back equal the
cases written and the demo's results do not depend on how the hospitals keep their files.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alliance.data.cases import Case
from alliance.data.codes import Code, CodeSystem
from alliance.data.compact import write_jsonl
from alliance.data.loading import DataSource, SourceFormat
from alliance.data.ontology import Ontology
from alliance.data.phenopacket import case_to_phenopacket
from alliance.data.synth import SiteCohort
from alliance.data.tabular import RowLayout, TableLayout

__all__ = ["SITE_FORMATS", "SiteFiles", "write_site_files"]


@dataclass(frozen=True)
class _LocalCoding:
    """A hospital's own vocabulary: the code it writes for each HPO term, and its label."""

    codes: dict[str, Code]
    labels: dict[Code, str]


_Writer = Callable[[Sequence[Case], Path, _LocalCoding | None], DataSource]


@dataclass(frozen=True)
class SiteFiles:
    """How one hospital keeps its cases, and where.

    Parameters
    ----------
    hospital
        The hospital's id.
    description
        Format and coding, in words (``"FHIR R4 Bundle, local codes"``).
    train, test
        The sources of its training and held-out cases.
    """

    hospital: str
    description: str
    train: DataSource
    test: DataSource


def _fhir(cases: Sequence[Case], path: Path, local: _LocalCoding | None) -> DataSource:
    from alliance.data.fhir import write_fhir

    file = path.with_suffix(".json")
    write_fhir(cases, file, phenotype_codes=local.codes if local else None)
    return DataSource(str(file), SourceFormat.FHIR)


def _phenopacket_folder(
    cases: Sequence[Case], path: Path, local: _LocalCoding | None
) -> DataSource:
    path.mkdir(parents=True, exist_ok=True)
    for n, case in enumerate(cases):
        # Numbered names keep the hospital's case order when the folder is read in name order.
        doc = case_to_phenopacket(case)
        doc["metaData"] = {**doc["metaData"], "created": "2026-01-01T00:00:00Z"}  # type: ignore[dict-item]
        (path / f"{n:05d}-{case.id}.json").write_text(json.dumps(doc), encoding="utf-8")
    return DataSource(str(path), SourceFormat.PHENOPACKET)


def _phenopacket_list(cases: Sequence[Case], path: Path, local: _LocalCoding | None) -> DataSource:
    file = path.with_suffix(".json")
    docs = [case_to_phenopacket(case) for case in cases]
    for doc in docs:
        doc["metaData"] = {**doc["metaData"], "created": "2026-01-01T00:00:00Z"}  # type: ignore[dict-item]
    file.write_text(json.dumps(docs), encoding="utf-8")
    return DataSource(str(file), SourceFormat.PHENOPACKET)


def _table(suffix: str, layout: TableLayout) -> _Writer:
    def write(cases: Sequence[Case], path: Path, local: _LocalCoding | None) -> DataSource:
        from alliance.data.tabular import write_table

        file = path.with_suffix(suffix)
        write_table(
            cases,
            file,
            layout,
            phenotype_codes=local.codes if local else None,
            labels=local.labels if local else None,
        )
        return DataSource(str(file), SourceFormat.TABLE, table=layout)

    return write


def _omop_files(cases: Sequence[Case], path: Path, local: _LocalCoding | None) -> DataSource:
    from alliance.data.omop import write_omop

    write_omop(cases, path, phenotype_codes=local.codes if local else None)
    return DataSource(str(path), SourceFormat.OMOP)


def _omop_database(cases: Sequence[Case], path: Path, local: _LocalCoding | None) -> DataSource:
    from alliance.data.omop import write_omop

    url = f"sqlite:///{path.with_suffix('.db').resolve()}"
    write_omop(cases, url, phenotype_codes=local.codes if local else None)
    return DataSource(url, SourceFormat.OMOP)


def _jsonl(cases: Sequence[Case], path: Path, local: _LocalCoding | None) -> DataSource:
    file = path.with_suffix(".jsonl")
    write_jsonl(cases, file)
    return DataSource(str(file), SourceFormat.COMPACT)


_FINDING = TableLayout(layout=RowLayout.FINDING)

#: Each hospital's format, its coding (local-code prefix or ``None`` for HPO) and description,
#: in the order of the consortium's hospitals.
SITE_FORMATS: tuple[tuple[_Writer, str | None, str], ...] = (
    (_fhir, None, "FHIR R4 Bundle, HPO codes"),
    (_phenopacket_folder, None, "GA4GH Phenopacket v2, one file per patient"),
    (_table(".csv", TableLayout()), None, "CSV, one row per patient, HPO codes"),
    (_omop_files, None, "OMOP CDM tables (CSV files)"),
    (_table(".csv", _FINDING), "NEU", "CSV, one row per finding, local codes"),
    (_table(".xlsx", TableLayout()), None, "Excel, one row per patient, HPO codes"),
    (_omop_database, None, "OMOP CDM in an SQLite database"),
    (_fhir, "PED", "FHIR R4 Bundle, local codes"),
    (_table(".xlsx", _FINDING), None, "Excel, one row per finding, HPO codes"),
    (_jsonl, None, "compact JSON lines"),
    (_phenopacket_list, None, "GA4GH Phenopacket v2, a list in one file"),
    (
        _table(".tsv", TableLayout(layout=RowLayout.FINDING, delimiter="\t")),
        None,
        "TSV, one row per finding, HPO codes",
    ),
)


def write_site_files(
    cohort: SiteCohort, folder: str | Path, *, index: int, ontology: Ontology
) -> SiteFiles:
    """Write one hospital's training and held-out cases in its format, into its own folder.

    Parameters
    ----------
    cohort
        The hospital and its cases.
    folder
        The hospital's folder (created).
    index
        The hospital's position in the consortium; it picks the format from
        :data:`SITE_FORMATS`.
    ontology
        Names the terms of a local vocabulary.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    writer, prefix, description = SITE_FORMATS[index % len(SITE_FORMATS)]
    local: _LocalCoding | None = None
    mapping: Path | None = None
    if prefix is not None:
        local = _vocabulary([*cohort.train, *cohort.test], prefix, ontology)
        mapping = root / "local_codes.csv"
        _write_mapping(mapping, local)
    train = writer(cohort.train, root / "train", local)
    test = writer(cohort.test, root / "test", local)
    if mapping is not None:
        train = _with_mapping(train, mapping)
        test = _with_mapping(test, mapping)
    files = SiteFiles(cohort.hospital.id, description, train, test)
    (root / "data.toml").write_text(_data_toml(files, root, cohort.hospital.name), "utf-8")
    return files


def _data_toml(files: SiteFiles, root: Path, name: str) -> str:
    """The ``[data]`` table of the hospital's site config, for ``alliance data check``."""

    def where(source: DataSource) -> str:
        if source.is_database:
            # Relative to the config's folder (DataConfig resolves it), so the folder can move.
            path = source.location.removeprefix("sqlite:///")
            return "sqlite:///" + Path(os.path.relpath(path, root)).as_posix()
        return Path(os.path.relpath(source.location, root)).as_posix()

    lines = [
        f"# How {name} keeps its cases: {files.description}.",
        "# Check them with: alliance data check --config data.toml",
        "[data]",
        f"train = {json.dumps(where(files.train))}",
        f"test = {json.dumps(where(files.test))}",
        f'format = "{files.train.format.value}"',
    ]
    if files.train.mapping is not None:
        lines.append(f"mapping = {json.dumps(files.train.mapping.name)}")
    table = files.train.table
    if table is not None:
        lines += [
            "",
            "[data.table]",
            f'layout = "{table.layout.value}"',
            f"delimiter = {json.dumps(table.delimiter)}",
        ]
    return "\n".join(lines) + "\n"


def _with_mapping(source: DataSource, mapping: Path) -> DataSource:
    return DataSource(source.location, source.format, source.table, source.schema, mapping)


def _vocabulary(cases: Sequence[Case], prefix: str, ontology: Ontology) -> _LocalCoding:
    codes: dict[str, Code] = {}
    for case in cases:
        for term in (*case.observed, *case.excluded):
            if term not in codes:
                codes[term] = Code(CodeSystem.LOCAL, f"{prefix}-{len(codes) + 1:04d}")
    return _LocalCoding(codes, {code: ontology.name(term) for term, code in codes.items()})


def _write_mapping(path: Path, local: _LocalCoding) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["code", "target", "label"])
        for term, code in local.codes.items():
            writer.writerow([code.value, term, local.labels[code]])
