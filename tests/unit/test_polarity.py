"""Telling labels that say the opposite apart from labels that say the same."""

from __future__ import annotations

import pytest

from alliance.data.polarity import chinese_key, has_han, opposite
from alliance.data.suggest import normalise_label


def words(label: str) -> set[str]:
    return set(normalise_label(label).split())


@pytest.mark.parametrize(
    ("one", "two", "expected"),
    [
        ("Decreased body weight", "Increased body weight", True),
        ("Reduced muscle tone", "Elevated muscle tone", True),
        ("Tall stature", "Short stature", True),
        ("Hypertonia", "Hypotonia", True),
        ("Microcephaly", "Macrocephaly", True),
        ("Absent thumb", "Present thumb", True),
        ("Decreased body weight", "Abnormality of body weight", False),
        ("Decreased body weight", "Decreased body weight", False),
        ("Hypotonia", "Neonatal hypotonia", False),
        ("Increased and decreased tone", "Increased tone", False),  # both in one: no difference
        ("Hypoplasia", "Hypertrichosis", False),  # other stems
    ],
)
def test_english_opposites(one: str, two: str, expected: bool) -> None:
    assert opposite(words(one), words(two)) is expected
    assert opposite(words(two), words(one)) is expected


@pytest.mark.parametrize(
    ("one", "two", "expected"),
    [
        ("肌张力低下", "肌张力增高", True),
        ("体重下降", "体重增加", True),
        ("高血压", "低血压", True),
        ("小头畸形", "大头畸形", True),
        ("毛发过度", "毛发缺乏", True),
        ("肌张力低下", "肌张力减退", False),
        ("肌张力低下", "面部肌张力低下", False),
        ("共济失调", "发作性共济失调", False),
    ],
)
def test_chinese_opposites(one: str, two: str, expected: bool) -> None:
    assert opposite(chinese_key(one), chinese_key(two)) is expected
    assert opposite(chinese_key(two), chinese_key(one)) is expected


def test_chinese_words_for_decreased_and_increased_read_alike() -> None:
    assert chinese_key("肌张力低下") == chinese_key("肌张力减退") == "肌张力↓"
    assert chinese_key("体重升高") == chinese_key("体重增加") == "体重↑"
    assert chinese_key(" 肌张力（减低）") == "肌张力↓"  # full-width punctuation and spaces go


def test_han_characters_are_told_from_other_scripts() -> None:
    assert has_han("肌张力低下 hypotonia")
    assert not has_han("Hypotonia; Судороги ①")
