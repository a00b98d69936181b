"""Findings typed by a clinician, ids and names mixed, resolved to current HPO terms."""

from __future__ import annotations

import pytest

from alliance.core.errors import UnknownCodeError
from alliance.data.ontology import Ontology
from alliance.data.suggest import LabelIndex
from alliance.data.terms import ResolvedTerm, TermResolver, split_terms


@pytest.fixture(scope="module")
def resolver(ontology: Ontology) -> TermResolver:
    # Names only (no release file), so the test does not depend on one being installed.
    return TermResolver(ontology, LabelIndex(ontology))


def test_split_terms_drops_empty_parts() -> None:
    assert split_terms(" seizure, ,Microcephaly ,") == ["seizure", "Microcephaly"]
    assert split_terms("") == []
    assert split_terms("全面发育迟缓，第二、三脚趾并趾,癫痫发作") == [
        "全面发育迟缓",
        "第二、三脚趾并趾",
        "癫痫发作",
    ]


def test_ids_and_names_mixed_resolve_in_order(resolver: TermResolver) -> None:
    found = resolver.resolve_all(
        ["Seizures", "HP:0001263", "microcephaly", "hp:0000252"], field="--hpo"
    )
    assert found == [
        ResolvedTerm("Seizures", "HP:0001250", "Seizure"),
        ResolvedTerm("HP:0001263", "HP:0001263", "Global developmental delay"),
        ResolvedTerm("microcephaly", "HP:0000252", "Microcephaly"),
    ]  # the repeat (by id, lower case) is left out


def test_an_obsolete_id_becomes_its_replacement(resolver: TermResolver) -> None:
    assert resolver.resolve("HP:0002355").hpo_id == "HP:0001288"


def test_a_near_name_is_refused_with_candidates(resolver: TermResolver) -> None:
    with pytest.raises(UnknownCodeError) as info:
        resolver.resolve_all(["seizure", "seizur"], field="--hpo")
    message = str(info.value)
    assert message.startswith("--hpo: 'seizur' is not the name of an HPO term")
    assert "Seizure (HP:0001250)" in message
    candidates = message.split("closest: ", 1)[1].split(");", 1)[0]
    assert candidates.count("(HP:") == 3  # the best three, each with its id
    assert "given by its id" in message  # how to pass a name with a comma


def test_gibberish_and_bad_ids_are_refused(resolver: TermResolver) -> None:
    with pytest.raises(UnknownCodeError, match="no term reads anything like it"):
        resolver.resolve("---")
    with pytest.raises(UnknownCodeError, match="HP:9999999 is not in HPO release"):
        resolver.resolve("HP:9999999")
    with pytest.raises(UnknownCodeError, match="not an HPO id"):
        resolver.resolve("HP:12")


def test_a_resolver_for_ids_only_builds_no_index(ontology: Ontology) -> None:
    resolver = TermResolver(ontology)
    assert resolver.resolve("HP:0001250").name == "Seizure"
    assert resolver._index is None


def test_official_chinese_labels_resolve(ontology: Ontology) -> None:
    resolver = TermResolver(ontology)
    found = resolver.resolve_all(["全面发育迟缓", "HP:0001252", "癫痫发作"])
    assert [t.hpo_id for t in found] == ["HP:0001263", "HP:0001252", "HP:0001250"]
    assert found[0].name == "Global developmental delay"
    # A common spelling that is not the official label (肌张力减退) is not guessed.
    with pytest.raises(UnknownCodeError) as info:
        resolver.resolve("肌张力低下")
    assert "closest: Hypotonia (HP:0001252, as '肌张力减退')" in str(info.value)
