"""How well each way of ranking diseases diagnoses real published cases and textbook patients.

What it measures
----------------
Top-1/3/10 accuracy (the true disease among the first k of the whole catalogue; ties count
against the ranker) of every *method* in :data:`METHODS`:

- ``prior``: the public-knowledge part of today's ranker (:meth:`PhenotypeRanker.prior`, an
  IC-weighted cosine of propagated term vectors), as an untrained model scores;
- ``knowledge``: :class:`alliance.models.knowledge.KnowledgeRanker` at its defaults, with the
  annotation frequencies of the HPO release that ``scripts/check`` installs (or none); and
  three variants: symmetric (α = 1/2), with an exclusion penalty, without frequencies;
- ``phenomizer``: the plain symmetric BMA-Resnik of ``bench/phenomizer_reference.py`` (no
  frequencies, no exclusion penalty); slow, so it ranks a fixed random subsample of the cases
  (``--reference-cases``, seed 0) and the other methods are shown on that subsample too.

Each method is a function from cases to a score matrix over the catalogue; a new row (a trained
or private model, say) is one more entry in :data:`METHODS` or one more scorer passed to
:func:`evaluate`.

On ``../shared/data/phenopacket_store_public.jsonl.gz`` (read with its attribution, never
copied), split by publication as ``alliance demo --cases`` splits it (the demo's own
:func:`split_by_publication`, hospitals and seed), every case counts: a case whose disease is
not in the catalogue is a miss for every method. The subsets are *all* cases, the held-out
publications' cases of diseases some hospital trains on (*known*) and of diseases no hospital
trains on (*unseen*, the rejected ones included). Cases rejected from a publication that has no
admitted case belong to no hospital and count in *all* only.

*Textbook patients*: for every catalogue disease with at least 5 annotated phenotypes, 5 of them
drawn at random (seed 0); and three classic presentations (Marfan, Prader-Willi, NF1) with the
rank of their disease.

How to run
----------
From the repository root (about 20 minutes on the shared, loaded 2-core machine, 15 of them for
the reference on its 150 cases)::

    python bench/diagnosis_quality.py
    python bench/diagnosis_quality.py --reference-cases 50 --out /tmp/quality.json

The table goes to stdout, everything (with settings and timings) to
``bench/results/diagnosis_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.phenomizer_reference import PhenomizerReference  # noqa: E402

from alliance.data.cases import Case  # noqa: E402
from alliance.data.compact import read_compact  # noqa: E402
from alliance.data.frequencies import find_frequencies  # noqa: E402
from alliance.data.loading import load_cases  # noqa: E402
from alliance.data.ontology import DiseaseCatalogue, Ontology, load_ontology  # noqa: E402
from alliance.data.records import SourceRecord  # noqa: E402
from alliance.data.splits import split_by_publication  # noqa: E402
from alliance.evaluation.metrics import ranks_of_truth, top_k  # noqa: E402
from alliance.models.features import PhenotypeFeatures  # noqa: E402
from alliance.models.knowledge import KnowledgeRanker  # noqa: E402
from alliance.models.ranker import CaseDataset, PhenotypeRanker  # noqa: E402
from alliance.sim.demo import PHENOPACKET_ATTRIBUTION, DemoConfig  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_CASES = SHARED_DATA / "phenopacket_store_public.jsonl.gz"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "diagnosis_quality.json"
MISS = np.iinfo(np.int64).max
CLASSIC = {
    "Marfan triad": (("HP:0001166", "HP:0001083", "HP:0002616"), "OMIM:154700"),
    "Prader-Willi": (("HP:0001252", "HP:0008872", "HP:0001513", "HP:0000135"), "OMIM:176270"),
    "NF1": (("HP:0007565", "HP:0001067", "HP:0000997", "HP:0009737"), "OMIM:162200"),
}

Scorer = Callable[[Sequence[Case]], npt.NDArray[np.float64]]


@dataclass
class Corpus:
    """Every case of the file: admitted ones, and the subsets each index list selects."""

    cases: list[Case]
    n_records: int
    subsets: dict[str, tuple[list[int], int]]  # name -> (indices into cases, rejected misses)


def prior_scorer(features: PhenotypeFeatures) -> Scorer:
    """Today's public-knowledge prior, as an untrained ranker computes it."""
    model = PhenotypeRanker(features, seed=DemoConfig().seed)

    def score(cases: Sequence[Case]) -> npt.NDArray[np.float64]:
        out = np.empty((len(cases), features.n_diseases))
        data = CaseDataset(features.encode(cases, labelled=False))
        with torch.no_grad():
            for start in range(0, len(cases), 256):
                batch = [data[i] for i in range(start, min(start + 256, len(cases)))]
                (obs, exc), _ = features.collate(batch)
                out[start : start + len(batch)] = model.prior(obs, exc).numpy()
        return out

    return score


def reference_scorer(ontology: Ontology, catalogue: DiseaseCatalogue) -> Scorer:
    """Plain symmetric BMA-Resnik, pair by pair (bench/phenomizer_reference.py)."""
    reference = PhenomizerReference(ontology)

    def score(cases: Sequence[Case]) -> npt.NDArray[np.float64]:
        rows = []
        for case in cases:
            obs = [t for t in dict.fromkeys(case.observed) if t in ontology.phenotype_terms]
            rows.append(reference.scores(obs, (), catalogue.diseases))
        return np.array(rows, dtype=np.float64)

    return score


def ranks(
    scorer: Scorer, cases: Sequence[Case], catalogue: DiseaseCatalogue
) -> npt.NDArray[np.int64]:
    """Rank of each case's disease (every admitted case's disease is in the catalogue)."""
    truth = [catalogue.index(c.disease_ids[0]) for c in cases]
    out = np.empty(len(cases), dtype=np.int64)
    for start in range(0, len(cases), 512):
        chunk = cases[start : start + 512]
        out[start : start + len(chunk)] = ranks_of_truth(scorer(chunk), truth[start : start + 512])
    return out


def topk(ranked: npt.NDArray[np.int64], misses: int = 0) -> dict[str, float | int]:
    """Top-k in percent, ``misses`` more cases counted as not found."""
    full = np.concatenate([ranked, np.full(misses, MISS, dtype=np.int64)])
    return {k: round(100 * v, 1) if k != "n" else v for k, v in top_k(full).as_dict().items()}


def load_corpus(path: Path, ontology: Ontology, catalogue: DiseaseCatalogue) -> Corpus:
    """Admitted cases, the demo's split, and where the rejected records fall."""
    records = [r for r in read_compact(path) if isinstance(r, SourceRecord)]
    cases = list(load_cases(path, ontology=ontology, catalogue=catalogue).cases)
    demo = DemoConfig()
    cohorts = split_by_publication(cases, demo.hospitals, seed=demo.seed)
    trained = {c.disease_ids[0] for cohort in cohorts for c in cohort.train}
    test_ids = {c.id for cohort in cohorts for c in cohort.test}
    held_out_pubs = {c.publication for cohort in cohorts for c in cohort.test if c.publication}
    admitted = {c.id for c in cases}
    rejected = [r for r in records if r.id not in admitted]
    pos = {c.id: i for i, c in enumerate(cases)}
    test = [pos[c] for c in sorted(test_ids, key=pos.__getitem__)]
    known = [i for i in test if cases[i].disease_ids[0] in trained]
    unseen = [i for i in test if cases[i].disease_ids[0] not in trained]
    rejected_held_out = sum(1 for r in rejected if r.publication in held_out_pubs)
    subsets = {
        "all cases": (list(range(len(cases))), len(rejected)),
        "held-out, known diseases": (known, 0),
        "held-out, unseen diseases": (unseen, rejected_held_out),
    }
    return Corpus(cases, len(records), subsets)


def textbook_cases(catalogue: DiseaseCatalogue, *, seed: int = 0) -> list[Case]:
    """Five annotated phenotypes, drawn at random, of every disease with at least five."""
    rng = np.random.default_rng(seed)
    out = []
    for d in catalogue.diseases:
        if len(d.phenotypes) >= 5:
            drawn = rng.choice(len(d.phenotypes), size=5, replace=False)
            out.append(
                Case(
                    f"textbook:{d.id}",
                    tuple(d.phenotypes[i] for i in sorted(drawn)),
                    disease_ids=(d.id,),
                )
            )
    return out


def evaluate(
    scorers: dict[str, Scorer],
    corpus: Corpus,
    catalogue: DiseaseCatalogue,
    *,
    reference: Scorer,
    reference_idx: list[int],
) -> dict[str, dict[str, dict[str, float | int]]]:
    """Every method on every subset; the reference and the rest on the reference's subsample."""
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    timings: dict[str, float] = {}
    for name, scorer in scorers.items():
        started = time.perf_counter()
        ranked = ranks(scorer, corpus.cases, catalogue)
        timings[name] = (time.perf_counter() - started) / len(corpus.cases)
        out[name] = {s: topk(ranked[idx], misses) for s, (idx, misses) in corpus.subsets.items()}
        out[name]["reference subsample"] = topk(ranked[reference_idx])
    started = time.perf_counter()
    sample = [corpus.cases[i] for i in reference_idx]
    out["phenomizer"] = {"reference subsample": topk(ranks(reference, sample, catalogue))}
    timings["phenomizer"] = (time.perf_counter() - started) / max(len(sample), 1)
    out["seconds per case"] = {"all": {k: round(v, 5) for k, v in timings.items()}}
    return out


def classic_ranks(
    scorers: dict[str, Scorer], catalogue: DiseaseCatalogue
) -> dict[str, dict[str, int]]:
    """Rank of each classic presentation's disease, per method."""
    cases = [Case(name, terms, disease_ids=(d,)) for name, (terms, d) in CLASSIC.items()]
    return {
        name: {c.id: int(r) for c, r in zip(cases, ranks(scorer, cases, catalogue), strict=True)}
        for name, scorer in scorers.items()
    }


def print_table(title: str, rows: dict[str, dict[str, float | int]]) -> None:
    """One markdown table: a row per method, top-1/3/10 and n."""
    print(f"\n{title}\n\n| method | top-1 | top-3 | top-10 | n |\n|---|---:|---:|---:|---:|")
    for name, m in rows.items():
        print(f"| {name} | {m['top1']} | {m['top3']} | {m['top10']} | {m['n']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    parser.add_argument(
        "--reference-cases",
        type=int,
        default=150,
        help="size of the random subsample the slow reference ranks",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not args.cases.is_file():
        parser.error(f"{args.cases}: not found; see ../shared/data/SOURCES.md")
    started = time.perf_counter()
    ontology = load_ontology()
    catalogue = ontology.catalogue()
    frequencies = find_frequencies()
    knowledge = KnowledgeRanker(ontology, catalogue, frequencies=frequencies)
    features = PhenotypeFeatures(ontology, catalogue)
    scorers = {
        "prior": prior_scorer(features),
        "knowledge": knowledge.score_cases,
        "knowledge, symmetric (α = 1/2)": KnowledgeRanker(
            ontology, catalogue, frequencies=frequencies, patient_weight=0.5
        ).score_cases,
        "knowledge, exclusion penalty 0.5": KnowledgeRanker(
            ontology, catalogue, frequencies=frequencies, exclusion_weight=0.5
        ).score_cases,
        "knowledge, no frequencies": KnowledgeRanker(ontology, catalogue).score_cases,
    }
    reference = reference_scorer(ontology, catalogue)
    corpus = load_corpus(args.cases, ontology, catalogue)
    rng = np.random.default_rng(0)
    size = min(args.reference_cases, len(corpus.cases))
    sample = sorted(rng.choice(len(corpus.cases), size=size, replace=False).tolist())
    real = evaluate(scorers, corpus, catalogue, reference=reference, reference_idx=sample)
    book = textbook_cases(catalogue)
    textbook = {name: topk(ranks(s, book, catalogue)) for name, s in scorers.items()}
    classic = classic_ranks(scorers, catalogue)
    for subset in (*corpus.subsets, "reference subsample"):
        print_table(
            f"{subset} (of {corpus.n_records} published cases)",
            {m: r[subset] for m, r in real.items() if subset in r},
        )
    print_table("textbook patients (5 annotated findings, seed 0)", textbook)
    print("\nclassic presentations, rank of the disease:", json.dumps(classic))
    print(f"\nseconds per case: {real['seconds per case']['all']}")
    result = {
        "settings": {
            "cases": str(args.cases),
            "attribution": PHENOPACKET_ATTRIBUTION,
            "hpo_version": ontology.version,
            "diseases": len(catalogue),
            "frequencies": frequencies.version if frequencies else None,
            "knowledge": {
                "patient_weight": knowledge.patient_weight,
                "exclusion_weight": knowledge.exclusion_weight,
            },
            "reference_cases": size,
            "split": {"hospitals": len(DemoConfig().hospitals), "seed": DemoConfig().seed},
        },
        "real_cases": real,
        "textbook": textbook,
        "classic": classic,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
