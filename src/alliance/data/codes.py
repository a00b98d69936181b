"""Clinical codes as hospitals write them, and how they are mapped onto the study's vocabulary.

Hospitals code the same finding differently: ``HP:0001250`` at one, SNOMED CT ``91175000`` at
another, ``NEU-017`` in a third's own list. An adapter keeps every code as written, as a
:class:`Code` (a :class:`CodeSystem` and the value within it); :func:`parse_code` reads the usual
spellings (``HP:0001250``, ``HP_0001250``, ``OMIM:154700``, ``MIM:154700``, ``ORPHA:558``,
``SNOMEDCT:91175000``, ``ICD10:Q87.4``, ``UMLS:C0036572``); anything else is a local code.

A :class:`CodeMapper` maps each code once (results are cached) and says why when it cannot:

phenotypes, to a current HPO id
    1. a row of the hospital's :class:`LocalMapping` table, whatever the code's system (so a
       hospital can override any mapping);
    2. an HPO id as such; an obsolete id to its replacement; an alternative id (``alt_id``) to
       its primary term, when an HPO release file with alternative ids is loaded;
    3. SNOMED CT, UMLS and ICD-10 codes through the cross-references of that HPO release file,
       when exactly one current term carries the code (several: ambiguous, listed as unmapped).

diagnoses, to an ``OMIM:`` or ``ORPHA:`` id of the study's catalogue
    1. a row of the hospital's mapping table;
    2. an OMIM or ORPHA id as such, checked against the catalogue when one is given.
    ICD-10 diagnoses need a mapping-table row: ICD-10 has no one-to-one public map to OMIM or
    ORPHA in the shipped knowledge.

The mapping table is a CSV file the hospital maintains (UTF-8), with a header row and the
columns ``code`` (as written in its data, system prefix included where the data has one),
``target`` (``HP:``, ``OMIM:`` or ``ORPHA:`` id) and optionally ``label`` (the local meaning,
used by ``alliance data map`` to suggest targets). A wrong row stops the load with its line
number: a broken mapping table must be fixed, not half-used. A row with an empty target is one
still to be filled in: its code is *not mapped yet*, which its message says, rather than *not in
the table*.
"""

from __future__ import annotations

import csv
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from alliance.core.errors import DataError, UnknownCodeError
from alliance.data.ontology import DiseaseCatalogue, Ontology

__all__ = [
    "Code",
    "CodeMapper",
    "CodeRole",
    "CodeSystem",
    "CrossReferences",
    "LocalMapping",
    "parse_code",
]


class CodeSystem(enum.Enum):
    """A coding system; the value is the prefix used in CURIEs."""

    HPO = "HP"
    OMIM = "OMIM"
    ORPHA = "ORPHA"
    SNOMED = "SNOMEDCT"
    UMLS = "UMLS"
    ICD10 = "ICD10"
    LOCAL = "LOCAL"


class CodeRole(enum.Enum):
    """What a code stands for in a record."""

    PHENOTYPE = "phenotype"
    DIAGNOSIS = "diagnosis"


# Spellings of each system's prefix found in hospital data, upper-cased.
_PREFIXES: dict[str, CodeSystem] = {
    "HP": CodeSystem.HPO,
    "HPO": CodeSystem.HPO,
    "OMIM": CodeSystem.OMIM,
    "MIM": CodeSystem.OMIM,
    "ORPHA": CodeSystem.ORPHA,
    "ORPHANET": CodeSystem.ORPHA,
    "SNOMEDCT": CodeSystem.SNOMED,
    "SNOMEDCT_US": CodeSystem.SNOMED,
    "SNOMED_CT": CodeSystem.SNOMED,
    "SNOMED": CodeSystem.SNOMED,
    "SCTID": CodeSystem.SNOMED,
    "SCT": CodeSystem.SNOMED,
    "UMLS": CodeSystem.UMLS,
    "ICD10": CodeSystem.ICD10,
    "ICD-10": CodeSystem.ICD10,
    "LOCAL": CodeSystem.LOCAL,
}
_CURIE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*)[:_](\S.*?)\s*$")
_HPO_VALUE = re.compile(r"^\d{7}$")
_DISEASE_VALUE = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Code:
    """A code as written: its system and its value within the system (``HPO``, ``0001250``).

    Parameters
    ----------
    system
        The coding system.
    value
        The code within it, without prefix; a local code exactly as written.
    """

    system: CodeSystem
    value: str

    def __str__(self) -> str:
        if self.system is CodeSystem.LOCAL:
            return self.value
        return f"{self.system.value}:{self.value}"


def parse_code(text: str, *, default: CodeSystem = CodeSystem.LOCAL) -> Code:
    """Read a code written with or without a system prefix.

    ``HP:0001250``, ``hp_0001250``, ``OMIM:154700``, ``SNOMEDCT:91175000`` and the other
    spellings in the module docstring name their system; a value with no known prefix belongs to
    ``default`` (a local code unless the source says otherwise, as a FHIR coding's system does).
    Only the underscore form ``HP_0001250`` of HPO ids (the OBO IRI suffix) is read as a prefix
    with an underscore; ``NEU_12`` stays a local code.
    """
    stripped = text.strip()
    match = _CURIE.match(stripped)
    if match is not None:
        prefix, value = match.group(1).upper(), match.group(2)
        separator = stripped[len(match.group(1))]
        system = _PREFIXES.get(prefix)
        if system is not None and (separator == ":" or system is CodeSystem.HPO):
            return Code(system, value.upper() if system is CodeSystem.ICD10 else value)
    return Code(default, stripped)


class CrossReferences(Protocol):
    """What an HPO release file adds to the shipped ontology (:mod:`alliance.data.hpo_release`)."""

    version: str

    def primary(self, hpo_id: str) -> str | None:
        """The primary id of an alternative id (``alt_id``), or ``None``."""
        ...

    def terms_for(self, code: Code) -> tuple[str, ...]:
        """HPO ids whose cross-references name ``code`` (SNOMED CT, UMLS, ICD-10...)."""
        ...


@dataclass(frozen=True)
class LocalMapping:
    """The hospital's own mapping table: codes as written in its data to HPO, OMIM or ORPHA ids.

    Use :meth:`read` to load the CSV file described in the module docstring.
    """

    path: str
    targets: dict[Code, str]
    labels: dict[Code, str]
    pending: frozenset[Code] = frozenset()
    """Codes whose row has no target yet (as ``alliance data map`` writes them): not mapped yet."""

    @classmethod
    def read(cls, path: str | Path) -> LocalMapping:
        """Read and check a mapping table.

        Raises
        ------
        DataError
            If the file is missing or unreadable, lacks the ``code`` or ``target`` column, or a
            row has an empty code, a malformed target or a code mapped twice; the message lists
            every wrong row (file and line).
        """
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise DataError(f"{file}: mapping table not found; check [data] mapping") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{file}: mapping table cannot be read as UTF-8: {exc}") from None
        reader = csv.DictReader(text.splitlines())
        columns = {name.strip().lower(): name for name in reader.fieldnames or ()}
        missing = [name for name in ("code", "target") if name not in columns]
        if missing:
            raise DataError(
                f"{file}: mapping table lacks the column(s) {', '.join(missing)}; its header row "
                "must name 'code' and 'target' (and optionally 'label')"
            )
        targets: dict[Code, str] = {}
        labels: dict[Code, str] = {}
        pending: set[Code] = set()
        problems: list[str] = []
        for row in reader:
            line = reader.line_num
            raw = (row.get(columns["code"]) or "").strip()
            target_text = (row.get(columns["target"]) or "").strip()
            label = (row.get(columns["label"]) or "").strip() if "label" in columns else ""
            if not raw:
                if target_text:
                    problems.append(f"line {line}: empty code")
                continue
            code = parse_code(raw)
            if not target_text:
                # A row still to be filled in (as `alliance data map` writes them): not an error.
                pending.add(code)
                if label:
                    labels[code] = label
                continue
            target = parse_code(target_text)
            if target.system not in (CodeSystem.HPO, CodeSystem.OMIM, CodeSystem.ORPHA) or not (
                _HPO_VALUE if target.system is CodeSystem.HPO else _DISEASE_VALUE
            ).match(target.value):
                problems.append(
                    f"line {line}: target {target_text[:40]!r} is not an HP:nnnnnnn, OMIM:n or "
                    "ORPHA:n id"
                )
                continue
            if code in targets and targets[code] != str(target):
                problems.append(f"line {line}: code {raw[:40]!r} is mapped twice")
                continue
            targets[code] = str(target)
            if label:
                labels[code] = label
        if problems:
            shown = "; ".join(problems[:10])
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            raise DataError(f"{file}: mapping table has wrong rows: {shown}{more}; fix them")
        return cls(str(file), targets, labels, frozenset(pending - targets.keys()))


class CodeMapper:
    """Maps codes as written onto current HPO ids and the study's disease ids.

    Parameters
    ----------
    ontology
        The shipped HPO release.
    catalogue
        The study's diseases; when given, a diagnosis outside it is unmapped.
    local
        The hospital's mapping table, consulted first.
    references
        Alternative ids and cross-references of an HPO release file, if one is loaded.
    """

    def __init__(
        self,
        ontology: Ontology,
        catalogue: DiseaseCatalogue | None = None,
        *,
        local: LocalMapping | None = None,
        references: CrossReferences | None = None,
    ) -> None:
        self.ontology = ontology
        self.catalogue = catalogue
        self.local = local
        self.references = references
        self._cache: dict[tuple[CodeRole, Code], str | UnknownCodeError] = {}

    def map(self, code: Code, role: CodeRole) -> str:
        """The study id for ``code`` in ``role``.

        Raises
        ------
        UnknownCodeError
            Saying why the code cannot be mapped and what the hospital can do.
        """
        key = (role, code)
        found = self._cache.get(key)
        if found is None:
            try:
                found = (
                    self._phenotype(code) if role is CodeRole.PHENOTYPE else self._diagnosis(code)
                )
            except UnknownCodeError as exc:
                found = exc
            self._cache[key] = found
        if isinstance(found, UnknownCodeError):
            raise found
        return found

    def map_all(self, codes: Iterable[Code], role: CodeRole) -> dict[Code, str]:
        """Every mappable code of ``codes`` with its study id (unmappable ones left out)."""
        out: dict[Code, str] = {}
        for code in codes:
            try:
                out[code] = self.map(code, role)
            except UnknownCodeError:
                continue
        return out

    # --- phenotypes ------------------------------------------------------------------------

    def _phenotype(self, code: Code) -> str:
        local = self._local(code)
        if local is not None:
            if not local.startswith("HP:"):
                raise UnknownCodeError(
                    f"{code}: the mapping table maps it to {local}, which is not an HPO term; "
                    "phenotypes must map to HP: ids"
                )
            return self._hpo(local, via=f"{code} (mapping table)")
        if code.system is CodeSystem.HPO:
            if not _HPO_VALUE.match(code.value):
                shown = str(code) if code.value[:1].isdigit() else code.value
                raise UnknownCodeError(
                    f"{_cut(shown)!r} is not an HPO id; expected the form HP:0001250 (HP: and 7 "
                    "digits)"
                )
            return self._hpo(f"HP:{code.value}", via=None)
        if code.system in (CodeSystem.SNOMED, CodeSystem.UMLS, CodeSystem.ICD10):
            return self._cross_reference(code)
        if code.system is CodeSystem.LOCAL:
            self._not_yet(code, "HPO term")
            raise UnknownCodeError(
                f"local code {_cut(code.value)!r} is not in the mapping table"
                + (f" {self.local.path}" if self.local else "")
                + "; add a row (`alliance data map` suggests HPO terms)"
            )
        raise UnknownCodeError(
            f"{code} is a {code.system.name} code, not a phenotype; map it in the mapping table "
            "if it is one"
        )

    def _hpo(self, curie: str, *, via: str | None) -> str:
        try:
            return self.ontology.resolve(curie)
        except UnknownCodeError as exc:
            primary = self.references.primary(curie) if self.references else None
            if primary is not None:
                try:
                    return self.ontology.resolve(primary)
                except UnknownCodeError:
                    pass
            prefix = f"{via}: " if via else ""
            raise UnknownCodeError(prefix + str(exc)) from None

    def _cross_reference(self, code: Code) -> str:
        name = {CodeSystem.SNOMED: "SNOMED CT", CodeSystem.UMLS: "UMLS", CodeSystem.ICD10: "ICD-10"}
        if self.references is None:
            raise UnknownCodeError(
                f"{name[code.system]} code {_cut(code.value)!r}: no HPO release file with "
                "cross-references is loaded; set [data] hpo_release or map it in the mapping table"
            )
        current = sorted({t for t in self._resolved(self.references.terms_for(code))})
        if len(current) == 1:
            return current[0]
        if not current:
            raise UnknownCodeError(
                f"{name[code.system]} code {_cut(code.value)!r} is cross-referenced by no current "
                f"HPO term (HPO release file {self.references.version}); map it in the mapping "
                "table"
            )
        raise UnknownCodeError(
            f"{name[code.system]} code {_cut(code.value)!r} is ambiguous: cross-referenced by "
            f"{', '.join(current[:4])}; choose one in the mapping table"
        )

    def _resolved(self, terms: Iterable[str]) -> Iterable[str]:
        for term in terms:
            try:
                yield self._hpo(term, via=None)
            except UnknownCodeError:
                continue

    # --- diagnoses -------------------------------------------------------------------------

    def _diagnosis(self, code: Code) -> str:
        local = self._local(code)
        if local is not None:
            if local.startswith("HP:"):
                raise UnknownCodeError(
                    f"{code}: the mapping table maps it to {local}, a phenotype; diagnoses must "
                    "map to OMIM: or ORPHA: ids"
                )
            return self._disease(local, via=f"{code} (mapping table)")
        if code.system in (CodeSystem.OMIM, CodeSystem.ORPHA):
            return self._disease(str(code), via=None)
        self._not_yet(code, "OMIM: or ORPHA: id")
        if code.system is CodeSystem.ICD10:
            raise UnknownCodeError(
                f"ICD-10 diagnosis {_cut(code.value)!r} has no one-to-one OMIM or ORPHA id; add a "
                "row to the mapping table"
            )
        raise UnknownCodeError(
            f"diagnosis {_cut(str(code))!r} is not an OMIM or ORPHA id and not in the mapping "
            "table; add a row there"
        )

    def _disease(self, curie: str, *, via: str | None) -> str:
        system, _, value = curie.partition(":")
        prefix = f"{via}: " if via else ""
        if not _DISEASE_VALUE.match(value):
            raise UnknownCodeError(
                f"{prefix}disease id {_cut(curie)!r} is not of the form OMIM:nnnnnn or ORPHA:nnn"
            )
        normal = f"{system}:{int(value)}"
        if self.catalogue is not None and normal not in self.catalogue:
            try:
                self.catalogue.index(normal)
            except UnknownCodeError as exc:
                raise UnknownCodeError(prefix + str(exc)) from None
        return normal

    def _not_yet(self, code: Code, target: str) -> None:
        """Raise if the mapping table has a row for ``code`` whose target is still empty."""
        if self.local is None:
            return
        if code in self.local.pending or Code(CodeSystem.LOCAL, code.value) in self.local.pending:
            raise UnknownCodeError(
                f"{_cut(str(code) if code.system is not CodeSystem.LOCAL else code.value)!r} is "
                f"not mapped yet: its row in the mapping table {self.local.path} has an empty "
                f"target; fill in its {target} (`alliance data map` suggests HPO terms)"
            )

    def _local(self, code: Code) -> str | None:
        if self.local is None:
            return None
        found = self.local.targets.get(code)
        if found is None and code.system is not CodeSystem.LOCAL:
            # A table may list "SNOMEDCT:123" or just "123": accept the bare value too.
            found = self.local.targets.get(Code(CodeSystem.LOCAL, code.value))
        return found


def _cut(text: str) -> str:
    """A code as quoted in a message, cut short so that free text never leaks whole."""
    return text if len(text) <= 40 else text[:37] + "..."
