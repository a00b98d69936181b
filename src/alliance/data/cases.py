"""The common case model: one patient, as every adapter, generator and model sees it.

A :class:`Case` is pseudonymous: an opaque id chosen by the hospital, sex, age, observed and
excluded phenotypes as current HPO ids, and diagnoses as ``OMIM:`` or ``ORPHA:`` ids. It never
leaves its site; the protocol layer has no field that could carry one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["Case", "Sex"]


class Sex(enum.Enum):
    """Phenotypic sex as recorded by the hospital (GA4GH phenopacket vocabulary)."""

    FEMALE = "FEMALE"
    MALE = "MALE"
    OTHER_SEX = "OTHER_SEX"
    UNKNOWN_SEX = "UNKNOWN_SEX"

    @classmethod
    def parse(cls, value: object) -> Sex:
        """Map a recorded value (``"MALE"``, ``"male"``, ``"M"``, ``None``...) to a :class:`Sex`."""
        if value is None:
            return cls.UNKNOWN_SEX
        text = str(value).strip().upper()
        aliases = {
            "M": "MALE",
            "F": "FEMALE",
            "OTHER": "OTHER_SEX",
            "UNKNOWN": "UNKNOWN_SEX",
            "": "UNKNOWN_SEX",
        }
        text = aliases.get(text, text)
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN_SEX


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
