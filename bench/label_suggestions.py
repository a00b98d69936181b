"""How well ``alliance data map`` suggests terms for Chinese labels and keeps opposites away.

What it measures
----------------
With :class:`alliance.data.suggest.LabelIndex` over the shipped ontology and official Chinese
labels (no HPO release file, so no English synonyms):

- *hospital labels*: the four most frequent unmapped Chinese labels of issue 15 (肌张力低下,
  智力障碍, 全面发育迟缓, 共济失调): the first candidate and its score;
- *reworded Chinese labels*: every current phenotype term whose official Chinese label holds a
  word for "decreased" or "increased" (低下, 减退, 降低, 增高, 升高 ...), that word replaced by
  each other word of its group, as hospitals write them (肌张力减退 → 肌张力低下): how often the
  term is the first candidate, and among the first three;
- *English opposites*: every pair of current terms whose names differ only by one antonym of
  :data:`alliance.data.polarity.ENGLISH_OPPOSITES` or prefix of
  :data:`~alliance.data.polarity.OPPOSITE_PREFIXES` ("Increased body weight" / "Decreased body
  weight", "Hypertonia" / "Hypotonia"): how often the other term of the pair is a strong
  candidate (score ≥ 0.3) for each name;
- the median time of one query.

How to run
----------
From the repository root::

    python bench/label_suggestions.py [--json out.json]

It prints a table and writes JSON (``bench/results/label_suggestions.json`` by default).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from alliance.data import polarity
from alliance.data.chinese import chinese_labels
from alliance.data.ontology import load_ontology
from alliance.data.polarity import CHINESE_DECREASED, CHINESE_INCREASED
from alliance.data.suggest import LabelIndex, normalise_label

HOSPITAL_LABELS = {
    "肌张力低下": "HP:0001252",
    "智力障碍": "HP:0001249",
    "全面发育迟缓": "HP:0001263",
    "共济失调": "HP:0001251",
}
STRONG = 0.3


def reworded(index: LabelIndex, terms: set[str]) -> dict[str, float]:
    labels = chinese_labels()
    top1 = top3 = total = 0
    for term in sorted(terms):
        label = labels.get(term)
        if label is None:
            continue
        for group in (CHINESE_DECREASED, CHINESE_INCREASED):
            for word in group:
                if word not in label:
                    continue
                for other in group:
                    if other == word:
                        continue
                    found = [s.hpo_id for s in index.suggest(label.replace(word, other), limit=3)]
                    total += 1
                    top1 += found[:1] == [term]
                    top3 += term in found
    return {"queries": total, "top1": top1 / total, "top3": top3 / total}


def opposite_pairs(names: dict[str, str]) -> list[tuple[str, str]]:
    by_words = {frozenset(normalise_label(n).split()): t for t, n in names.items()}
    pairs = []
    for words, term in by_words.items():
        for a, b in polarity.ENGLISH_OPPOSITES:
            if a in words:
                other = by_words.get((words - {a}) | {b})
                if other is not None:
                    pairs.append((term, other))
        for a, b in polarity.OPPOSITE_PREFIXES:
            for word in words:
                if word.startswith(a):
                    other = by_words.get((words - {word}) | {b + word[len(a) :]})
                    if other is not None:
                        pairs.append((term, other))
    return pairs


def strong_opposites(index: LabelIndex, names: dict[str, str], pairs: list[tuple[str, str]]) -> int:
    strong = 0
    for one, two in pairs:
        for query, unwanted in ((one, two), (two, one)):
            found = index.suggest(names[query], limit=20)
            strong += any(s.hpo_id == unwanted and s.score >= STRONG for s in found)
    return strong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", type=Path, default=Path("bench/results/label_suggestions.json"))
    args = parser.parse_args()
    ontology = load_ontology()
    started = time.perf_counter()
    index = LabelIndex(ontology)
    built = time.perf_counter() - started
    terms = set(ontology.phenotype_terms)
    names = {t: ontology.name(t) for t in terms}
    hospital = {}
    for label, expected in HOSPITAL_LABELS.items():
        best = index.suggest(label, limit=1)[0]
        hospital[label] = {"expected": expected, "first": best.hpo_id, "score": best.score}
    pairs = opposite_pairs(names)
    times = []
    for label in [*HOSPITAL_LABELS, "Decreased body weight", "hypotonia, generalised"] * 5:
        t = time.perf_counter()
        index.suggest(label, limit=5)
        times.append(time.perf_counter() - t)
    reworded_result = reworded(index, terms)
    result = {
        "index_build_s": built,
        "hospital_labels": hospital,
        "hospital_first_right": sum(h["first"] == h["expected"] for h in hospital.values()),
        "reworded_chinese": reworded_result,
        "english_opposite_pairs": len(pairs),
        "opposite_strong_candidates": strong_opposites(index, names, pairs),
        "median_query_ms": 1000 * statistics.median(times),
    }
    for label, h in hospital.items():
        print(f"{label:<8} first {h['first']} ({h['score']:.2f}), expected {h['expected']}")
    r = reworded_result
    print(
        f"reworded Chinese labels: {r['queries']:.0f} queries, top-1 {r['top1']:.1%}, "
        f"top-3 {r['top3']:.1%}"
    )
    print(
        f"English opposite pairs: {len(pairs)}; the opposite a strong candidate "
        f"(≥ {STRONG}) in {result['opposite_strong_candidates']} of {2 * len(pairs)} queries"
    )
    print(f"index built in {built:.1f} s; median query {result['median_query_ms']:.1f} ms")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
