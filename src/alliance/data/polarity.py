"""Labels that say the opposite: how ``alliance data map`` keeps "Increased body weight" away
from a hospital's "Decreased body weight".

Label similarity is blind to meaning: "Decreased body weight" and "Increased body weight" share
all but two letters, 低血压 and 高血压 all but one character. :func:`opposite` tells when two
labels differ by an antonym, so that a suggestion ranks such a term as a weak candidate only.

English (texts as :func:`~alliance.data.suggest.normalise_label` gives them)
    A word of a pair in one label only and its opposite in the other only: increased/decreased,
    elevated/reduced, high/low, tall/short, large/small, absent/present, gain/loss ... (see
    :data:`ENGLISH_OPPOSITES`); or two words that differ only by opposite prefixes, such as
    *hyper*\\ tonia/*hypo*\\ tonia or *macro*\\ cephaly/*micro*\\ cephaly.

Chinese (texts as :func:`chinese_key` gives them)
    The same, with substrings: 增高/降低, 增多/减少, 过度/缺乏, 高/低, 大/小 ... (see
    :data:`CHINESE_OPPOSITES`). Chinese labels say "decreased" and "increased" in many ways (the
    official HPO label of hypotonia is 肌张力减退, hospitals write 肌张力低下), so
    :func:`chinese_key` first writes each of these words as one mark, ``↓`` or ``↑``: 肌张力低下 and
    肌张力减退 then read alike, and 肌张力增高 the opposite.

An antonym found in both labels, or in neither, is no difference: "Abnormal body weight" is not
the opposite of "Decreased body weight".
"""

from __future__ import annotations

import re
from collections.abc import Collection

from alliance.data.chinese import normalise_chinese

__all__ = [
    "CHINESE_DECREASED",
    "CHINESE_INCREASED",
    "CHINESE_OPPOSITES",
    "ENGLISH_OPPOSITES",
    "OPPOSITE_PREFIXES",
    "chinese_key",
    "has_han",
    "opposite",
]


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((pair.partition("/")[0], pair.partition("/")[2]) for pair in text.split())


ENGLISH_OPPOSITES = _pairs(
    "increased/decreased increased/reduced elevated/decreased elevated/reduced "
    "increase/decrease high/low higher/lower tall/short long/short large/small big/small "
    "wide/narrow broad/narrow thick/thin absent/present absence/presence gain/loss "
    "excess/deficiency excessive/deficient early/late"
)
"""Pairs of English words of opposite meaning, lower case."""

OPPOSITE_PREFIXES: tuple[tuple[str, str], ...] = (("hyper", "hypo"), ("macro", "micro"))
"""Prefixes that turn a word into its opposite (hypertonia, hypotonia)."""

CHINESE_DECREASED = ("低下", "减退", "减低", "降低", "下降", "减少", "减弱", "减轻", "偏低", "过低")
"""Chinese words for "decreased", all read as ``↓`` by :func:`chinese_key`."""

CHINESE_INCREASED = ("增高", "升高", "增加", "增多", "增强", "偏高", "过高", "亢进")
"""Chinese words for "increased", all read as ``↑`` by :func:`chinese_key`."""

CHINESE_OPPOSITES = _pairs(
    "↑/↓ 过度/缺乏 过多/过少 增大/缩小 肥大/萎缩 存在/缺失 有/无 "
    "高/低 大/小 多/少 长/短 宽/窄 厚/薄 早/晚 粗/细"
)
"""Pairs of Chinese words of opposite meaning, as :func:`chinese_key` writes them."""

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Longest first, so that 过低 is read as one word before 低 could be.
_DIRECTION = re.compile(
    "|".join(sorted((*CHINESE_DECREASED, *CHINESE_INCREASED), key=len, reverse=True))
)


def has_han(text: str) -> bool:
    """Whether ``text`` holds a Chinese (Han) character."""
    return _HAN.search(text) is not None


def chinese_key(text: str) -> str:
    """A Chinese label as compared: :func:`normalise_chinese`, then every word for "decreased"
    written ``↓`` and every word for "increased" written ``↑`` (肌张力低下 → 肌张力↓)."""
    return _DIRECTION.sub(
        lambda m: "↓" if m.group() in CHINESE_DECREASED else "↑", normalise_chinese(text)
    )


def opposite(query: Collection[str] | str, candidate: Collection[str] | str) -> bool:
    """Whether two labels differ by an antonym.

    Parameters
    ----------
    query, candidate
        Both English (the sets of their normalised words) or both Chinese (their
        :func:`chinese_key` texts, searched by substring).

    Returns
    -------
    bool
        ``True`` when one label alone holds a word of a pair and the other alone its opposite.
    """
    pairs = CHINESE_OPPOSITES if isinstance(query, str) else ENGLISH_OPPOSITES
    for first, second in pairs:
        one, two = first in query, second in query
        other_one, other_two = first in candidate, second in candidate
        if (one and not two and other_two and not other_one) or (
            two and not one and other_one and not other_two
        ):
            return True
    if isinstance(query, str) or isinstance(candidate, str):
        return False
    return _opposite_prefixes(set(query) - set(candidate), set(candidate) - set(query))


def _opposite_prefixes(mine: set[str], theirs: set[str]) -> bool:
    for first, second in OPPOSITE_PREFIXES:
        for a, b in ((first, second), (second, first)):
            stems = {word[len(a) :] for word in mine if word.startswith(a) and len(word) > len(a)}
            if any(word.startswith(b) and word[len(b) :] in stems for word in theirs):
                return True
    return False
