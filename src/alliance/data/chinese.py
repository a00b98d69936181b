"""The official Chinese labels of HPO terms, shipped inside the package.

Chinese hospitals write findings in Chinese (肌张力低下, 全面发育迟缓, 共济失调 …) and
Chinese-speaking clinicians read a differential in Chinese. Both rest on the HPO project's
official translation, which ships as ``alliance/data/hpo_zh/hp-zh.tsv`` (term id and label;
licence and attribution in ``NOTICE.md`` beside it), so that an air-gapped hospital needs
nothing else. Terms added to HPO after the translation have no Chinese label.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

__all__ = ["chinese_label", "chinese_labels", "normalise_chinese"]

_RESOURCE = "hpo_zh/hp-zh.tsv"


@functools.cache
def chinese_labels() -> Mapping[str, str]:
    """Every shipped Chinese label, by HPO id (``"HP:0001252" -> "肌张力低下"``)."""
    text = resources.files("alliance.data").joinpath(_RESOURCE).read_text(encoding="utf-8")
    labels: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        term, _, label = line.partition("\t")
        if label:
            labels[term] = label
    return MappingProxyType(labels)


def chinese_label(term: str) -> str | None:
    """The official Chinese label of ``term`` (an HPO id), or ``None`` where it has none."""
    return chinese_labels().get(term)


def normalise_chinese(text: str) -> str:
    """A label as compared: NFKC (full-width forms folded), without spaces and punctuation."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if not unicodedata.category(ch).startswith(("P", "Z")))
