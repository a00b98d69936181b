"""The common case model: one patient, as every adapter, generator and model sees it.

A :class:`Case` is pseudonymous: an opaque id chosen by the hospital, sex, age, observed and
excluded phenotypes as current HPO ids, and diagnoses as ``OMIM:`` or ``ORPHA:`` ids. It never
leaves its site; the protocol layer has no field that could carry one.
"""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass, field

__all__ = ["SEX_SPELLINGS", "Case", "Sex", "accepted_sex_values", "is_unknown_on_purpose"]


class Sex(enum.Enum):
    """Phenotypic sex as recorded by the hospital (GA4GH phenopacket vocabulary)."""

    FEMALE = "FEMALE"
    MALE = "MALE"
    OTHER_SEX = "OTHER_SEX"
    UNKNOWN_SEX = "UNKNOWN_SEX"

    @classmethod
    def parse(cls, value: object) -> Sex:
        """Map a recorded value (``"MALE"``, ``"m"``, ``"男"``, ``None``...) to a :class:`Sex`.

        Every spelling in :data:`SEX_SPELLINGS` is accepted; anything else (numeric codes
        included: they differ between hospitals) is :attr:`UNKNOWN_SEX`, which
        :func:`is_unknown_on_purpose` tells apart from an empty or "unknown" value.
        """
        if value is None:
            return cls.UNKNOWN_SEX
        return _SPELLINGS.get(_fold(value), cls.UNKNOWN_SEX)


def _fold(value: object) -> str:
    return unicodedata.normalize("NFKC", str(value)).strip().upper()


SEX_SPELLINGS: dict[Sex, tuple[str, ...]] = {
    Sex.MALE: ("MALE", "M", "男", "男性"),
    Sex.FEMALE: ("FEMALE", "F", "女", "女性"),
    Sex.OTHER_SEX: ("OTHER_SEX", "OTHER", "其他"),
    Sex.UNKNOWN_SEX: ("UNKNOWN_SEX", "UNKNOWN", "未知", "不详", ""),
}
"""Every accepted spelling of each sex, in any letter case; the one place sex is parsed."""

_SPELLINGS = {spelling: sex for sex, spellings in SEX_SPELLINGS.items() for spelling in spellings}


def is_unknown_on_purpose(value: object) -> bool:
    """Whether a recorded sex says "unknown" (or nothing), rather than something unreadable."""
    return value is None or _SPELLINGS.get(_fold(value)) is Sex.UNKNOWN_SEX


def accepted_sex_values() -> str:
    """The accepted spellings, as a message names them (``MALE, M, 男, 男性; FEMALE...``)."""
    return "; ".join(
        ", ".join(s or "empty" for s in spellings) for spellings in SEX_SPELLINGS.values()
    )


@dataclass(frozen=True)
class Case:
    """One patient's phenotype record and diagnosis.

    Parameters
    ----------
    id
        Pseudonymous case id, unique within its site.
    observed
        HPO ids of phenotypes present, already resolved to current (non-obsolete) terms.
    excluded
        HPO ids of phenotypes the clinician explicitly ruled out.
    disease_ids
        Confirmed diagnoses (``OMIM:nnnnnn`` or ``ORPHA:nnn``); empty for an undiagnosed case.
    sex
        Recorded sex.
    age_years
        Age at last encounter (or onset when that is all there is), in years; ``None`` if unknown.
    publication
        Source grouping (a PubMed id for published cases) used to split data without leakage.
    """

    id: str
    observed: tuple[str, ...]
    excluded: tuple[str, ...] = ()
    disease_ids: tuple[str, ...] = ()
    sex: Sex = Sex.UNKNOWN_SEX
    age_years: float | None = None
    publication: str | None = field(default=None, compare=True)

    @property
    def primary_disease(self) -> str | None:
        """The first confirmed diagnosis, the label used for training and scoring."""
        return self.disease_ids[0] if self.disease_ids else None
