"""Fed-Heart-Disease: alliance's federation side by side with FLamby's published benchmark.

What it measures
----------------
Test accuracy of a logistic regression on FLamby's Fed-Heart-Disease task (four hospitals,
binary "heart disease or not"), trained

- on the pooled training data of all four hospitals,
- on each hospital's training data alone ("Local 0".."Local 3"),
- federated with FedAvg, FedProx and FedAdam through :class:`alliance.sim.Simulation`
  (the real site and coordinator code over the in-memory transport),

each over seeds 42-46, next to the means FLamby published for the same runs (parsed from
FLamby's own result files), with the wall time of each run. Accuracy is reported twice, both as
FLamby reports it: on FLamby's "Pooled Test" (all 254 test rows, normalised with the pooled
training mean and std) and over the four per-centre tests (each centre's test rows normalised
with that centre's training statistics; FLamby's ``client_test_0..3``, here summed over the 254
rows). The table goes to stdout; settings, per-seed numbers and FLamby's reference numbers go to
``bench/results/heart_disease.json``. Nothing here asserts a time.

How to run
----------
From the repository root::

    /tmp/venv/bin/python bench/heart_disease.py           # seeds 42-46 (about a minute)
    /tmp/venv/bin/python bench/heart_disease.py --quick   # seed 42 only
    /tmp/venv/bin/python bench/heart_disease.py --data DIR --flamby-results DIR --out FILE

The data are read from ``../shared/data/heart_disease/`` next to the repository (never copied
into it) and FLamby's result files from ``../shared/data/flamby_results/fed_heart_disease/``.

Protocol (FLamby's ``flamby/datasets/fed_heart_disease``, re-implemented, not copied)
------------------------------------------------------------------------------------
- Per file: drop columns 10, 11, 12 (slope, ca, thal), then every row with a missing value
  ('?'); 740 rows remain (Cleveland 303, Hungary 261, Switzerland 46, Long Beach VA 130).
- One-hot encode columns 2 (chest-pain type) and 6 (resting ECG) over the union of the four
  centres' values, dropping the first level (``pd.get_dummies(..., drop_first=True)``): 13
  features. Target: 0 stays 0, 1-4 become 1.
- Split each centre 66/34 as ``train_test_split(random_state=43, stratify=binary target)``
  does (stratified only when both classes have more than 2 rows, as FLamby does). scikit-learn
  is not a dependency: its StratifiedShuffleSplit draw order on ``numpy.random.RandomState(43)``
  is re-implemented, which gives the train/test sizes 199/104, 172/89, 30/16, 85/45 of FLamby's
  README and result files. Checked once, when this script was written, against FLamby's loader
  logic run with pandas 3.1.1 and scikit-learn 1.9.1: the same test rows in every centre and the
  same normalised features (to float32 rounding). When scikit-learn is importable the script
  re-checks the rows at run time; otherwise it says it did not.
- Normalise with the training mean and (unbiased) std of each centre, ``(x - mean) /
  (std + 1e-9)``; the pooled baseline and FLamby's "Pooled Test" use the pooled training
  statistics instead.
- Model: ``nn.Linear(13, 2)`` with cross-entropy, the two-logit form of FLamby's
  ``sigmoid(Linear(13, 1))`` with binary cross-entropy; prediction = argmax (= p > 0.5).
- Pooled and local baselines: Adam, lr 1e-3, batch 4, 50 epochs (FLamby's LR, BATCH_SIZE,
  NUM_EPOCHS_POOLED). Federated: 15 rounds (FLamby's ``get_nb_max_rounds(100)``), batch 4,
  FedProx mu 0.01, FedAdam server lr 0.01, betas (0.9, 0.999), tau 1e-8, client lr 1e-3
  (FedAvg, FedProx) or 1e-2 (FedAdam), as in FLamby's ``config_heart_disease.json``.

Deviations from FLamby (printed with the results, and kept in the JSON)
-----------------------------------------------------------------------
- Clients train with Adam (alliance's ``train_locally``, a fresh optimiser every round), not
  SGD: alliance's :class:`~alliance.protocol.TrainingPlan` has no optimiser choice.
- Local work per round is counted in epochs, 3 per round (150/129/24/66 steps for the four
  centres at batch 4, 369 in all), not FLamby's 100 steps for every client (400 in all).
- Same seeds, different random streams (shuffling, and a two-logit model), so single runs are
  not expected to match FLamby's; the means are what is compared.

Credits
-------
Data: Janosi, Steinbrunn, Pfisterer, Detrano (1988), "Heart Disease", UCI Machine Learning
Repository, CC BY 4.0. Benchmark and reference results: Ogier du Terrail et al., "FLamby:
Datasets and Benchmarks for Cross-Silo Federated Learning in Realistic Healthcare Settings",
NeurIPS 2022 Datasets and Benchmarks.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import TensorDataset

from alliance.algorithms.strategies import Strategy, make_strategy
from alliance.models.training import train_locally
from alliance.protocol import TrainingPlan
from alliance.sim import Simulation

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_DATA_DIR = SHARED_DATA / "heart_disease"
DEFAULT_FLAMBY_DIR = SHARED_DATA / "flamby_results" / "fed_heart_disease"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "heart_disease.json"

DATA_CITATION = (
    "Data: Janosi, Steinbrunn, Pfisterer, Detrano (1988), Heart Disease, "
    "UCI Machine Learning Repository, CC BY 4.0."
)
FLAMBY_CITATION = (
    "Reference: Ogier du Terrail et al., FLamby: Datasets and Benchmarks for Cross-Silo "
    "Federated Learning in Realistic Healthcare Settings, NeurIPS 2022 Datasets and Benchmarks."
)

# FLamby's centre ids: processed.<name>.data is centre CENTRES.index(name).
CENTRES = ("cleveland", "hungarian", "switzerland", "va")
N_RAW_COLUMNS = 14
DROPPED_COLUMNS = frozenset({10, 11, 12})  # slope, ca, thal: mostly missing outside Cleveland
LABEL_COLUMN = 13
KEPT_COLUMNS = tuple(c for c in range(N_RAW_COLUMNS) if c not in DROPPED_COLUMNS)
FEATURE_COLUMNS = tuple(c for c in KEPT_COLUMNS if c != LABEL_COLUMN)
CATEGORICAL_COLUMNS = (2, 6)  # chest-pain type, resting ECG
COLUMN_NAMES = {
    0: "age",
    1: "sex",
    2: "cp",
    3: "trestbps",
    4: "chol",
    5: "fbs",
    6: "restecg",
    7: "thalach",
    8: "exang",
    9: "oldpeak",
}
MISSING = frozenset({"?", ""})
TRAIN_FRACTION = 0.66
SPLIT_RANDOM_STATE = 43
NORM_EPS = 1e-9
EXPECTED_ROWS = 740
SEEDS = (42, 43, 44, 45, 46)

Array = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Settings:
    """Training settings; FLamby's values unless marked otherwise."""

    batch_size: int = 4  # FLamby BATCH_SIZE
    learning_rate: float = 1e-3  # FLamby LR (Adam) for pooled/local; FedAvg/FedProx client lr
    centralised_epochs: int = 50  # FLamby NUM_EPOCHS_POOLED, for pooled and each local run
    rounds: int = 15  # FLamby get_nb_max_rounds(100) = (486 // 4 // 4) * 50 // 100
    local_epochs: int = 3  # ours: FLamby does 100 local steps per client per round
    client_optimiser: str = "Adam (alliance train_locally; FLamby: SGD)"
    fedprox_mu: float = 0.01
    fedadam_client_lr: float = 1e-2
    fedadam_server_lr: float = 1e-2
    fedadam_beta1: float = 0.9
    fedadam_beta2: float = 0.999
    fedadam_tau: float = 1e-8
    torch_threads: int = 1


DEVIATIONS = (
    "Clients train with Adam (alliance's train_locally, fresh optimiser state every round); "
    "FLamby's federated clients use SGD at the same learning rates.",
    "Local work is 3 epochs per round (150/129/24/66 steps for the four centres at batch 4, 369 "
    "in all); FLamby gives every client 100 steps per round (400 in all). Rounds (15), batch "
    "size, FedProx mu and FedAdam's server settings are FLamby's.",
    "Model nn.Linear(13, 2) + softmax cross-entropy instead of sigmoid(Linear(13, 1)) + BCE: the "
    "same logistic regression, parameterised differently, so initial weights differ.",
    "Same seeds but different random streams (initialisation, shuffling): single runs are not "
    "expected to reproduce FLamby's; compare means and spread.",
)


class DataNotFoundError(Exception):
    """The UCI files are not where they should be."""


# ----------------------------------------------------------------------------------------------
# Data: FLamby's preprocessing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Centre:
    """One hospital's cleaned rows, encoded features, binary target and FLamby's split."""

    index: int
    name: str
    rows_in_file: int
    features: Array
    labels: Labels
    test_mask: Mask
    stratified: bool

    @property
    def n_train(self) -> int:
        return int((~self.test_mask).sum())

    @property
    def n_test(self) -> int:
        return int(self.test_mask.sum())


@dataclass(frozen=True)
class Task:
    """The four centres as tensors, normalised the two ways FLamby does."""

    centres: list[Centre]
    feature_names: list[str]
    site_train: dict[str, Pair]  # each centre's own training statistics
    site_test: dict[str, Pair]  # FLamby's client_test_i
    pooled_train: Pair  # pooled training statistics
    pooled_test: Pair  # FLamby's "Pooled Test"
    constant_columns: dict[str, list[str]]  # zero training std, per centre

    @property
    def n_features(self) -> int:
        return len(self.feature_names)


def read_processed_file(path: Path) -> tuple[int, Array]:
    """Rows of one ``processed.*.data`` file with columns 10-12 dropped and incomplete rows out.

    Returns the number of rows in the file and the kept rows (columns ``KEPT_COLUMNS``).
    """
    lines = [line for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
    kept_rows: list[list[float]] = []
    for lineno, line in enumerate(lines, start=1):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != N_RAW_COLUMNS:
            raise ValueError(f"{path}:{lineno}: expected {N_RAW_COLUMNS} fields, got {len(fields)}")
        kept = [fields[c] for c in KEPT_COLUMNS]
        if any(f in MISSING for f in kept):
            continue
        kept_rows.append([float(f) for f in kept])
    return len(lines), np.asarray(kept_rows, dtype=np.float64)


def one_hot(tables: Sequence[Array]) -> tuple[list[Array], list[str]]:
    """FLamby's ``get_dummies(columns=[2, 6], drop_first=True)`` over all centres at once.

    Levels are the sorted union of the four centres' values; the first is dropped. Columns come
    in pandas' order: the other features as they were, then the dummies.
    """
    pos = {c: i for i, c in enumerate(KEPT_COLUMNS)}
    levels = {
        c: sorted({float(v) for t in tables for v in t[:, pos[c]]}) for c in CATEGORICAL_COLUMNS
    }
    plain = [c for c in FEATURE_COLUMNS if c not in CATEGORICAL_COLUMNS]
    names = [COLUMN_NAMES[c] for c in plain] + [
        f"{COLUMN_NAMES[c]}={v:g}" for c in CATEGORICAL_COLUMNS for v in levels[c][1:]
    ]
    encoded = []
    for t in tables:
        cols = [t[:, pos[c]] for c in plain] + [
            (t[:, pos[c]] == v).astype(np.float64)
            for c in CATEGORICAL_COLUMNS
            for v in levels[c][1:]
        ]
        encoded.append(np.column_stack(cols))
    return encoded, names


def _approximate_mode(counts: Labels, n_draws: int, rng: np.random.RandomState) -> Labels:
    """Per-class draw counts, with scikit-learn's tie-breaking draws on ``rng``."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (candidates,) = np.where(remainder == value)
            take = min(len(candidates), need)
            floored[rng.choice(candidates, size=take, replace=False)] += 1
            need -= take
            if need == 0:
                break
    out: Labels = floored.astype(np.int64)
    return out


def flamby_test_mask(labels: Labels) -> tuple[Mask, bool]:
    """Which rows FLamby puts in the test set, and whether the split was stratified.

    The draw order of scikit-learn's ``train_test_split(test_size=1 - 0.66, train_size=0.66,
    random_state=43, shuffle=True, stratify=...)``: sizes ceil(0.34 n) / floor(0.66 n), then
    (stratified) per-class counts and one permutation per class, or (not stratified) one
    permutation of all rows, test rows first. scikit-learn's final shuffle of the two index
    lists changes their order, not their members, so it is left out.
    """
    n = len(labels)
    n_test = math.ceil((1.0 - TRAIN_FRACTION) * n)
    n_train = math.floor(TRAIN_FRACTION * n)
    rng = np.random.RandomState(SPLIT_RANDOM_STATE)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    mask = np.zeros(n, dtype=np.bool_)
    stratified = len(classes) > 1 and bool(np.all(counts > 2))
    if not stratified:
        mask[rng.permutation(n)[:n_test]] = True
        return mask, False
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    for i, members in enumerate(by_class):
        shuffled = members.take(rng.permutation(int(counts[i])), mode="clip")
        mask[shuffled[n_i[i] : n_i[i] + t_i[i]]] = True
    return mask, True


def sklearn_split_matches(centres: Sequence[Centre]) -> bool | None:
    """Compare with scikit-learn's own split when it is installed; ``None`` when it is not."""
    try:
        model_selection: Any = importlib.import_module("sklearn.model_selection")
    except ImportError:
        return None
    for c in centres:
        _, counts = np.unique(c.labels, return_counts=True)
        stratify = c.labels if len(counts) > 1 and bool(np.all(counts > 2)) else None
        _, test = model_selection.train_test_split(
            np.arange(len(c.labels)),
            test_size=1.0 - TRAIN_FRACTION,
            train_size=TRAIN_FRACTION,
            random_state=SPLIT_RANDOM_STATE,
            shuffle=True,
            stratify=stratify,
        )
        if set(test.tolist()) != set(np.flatnonzero(c.test_mask).tolist()):
            return False
    return True


def standardise(x: Array, reference: Array) -> npt.NDArray[np.float32]:
    """``(x - mean) / (std + 1e-9)`` with the mean and unbiased std of ``reference``."""
    mean = reference.mean(axis=0)
    std = reference.std(axis=0, ddof=1)
    out: npt.NDArray[np.float32] = ((x - mean) / (std + NORM_EPS)).astype(np.float32)
    return out


def pair(x: npt.NDArray[np.float32], y: Labels) -> Pair:
    return torch.from_numpy(x), torch.from_numpy(y)


def load_task(data_dir: Path) -> Task:
    """Read the four files and apply FLamby's preprocessing and split."""
    if not data_dir.is_dir():
        raise DataNotFoundError(f"data folder not found: {data_dir}")
    paths = [data_dir / f"processed.{name}.data" for name in CENTRES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataNotFoundError(f"missing in {data_dir}: {', '.join(missing)}")
    read = [read_processed_file(p) for p in paths]
    encoded, names = one_hot([rows for _, rows in read])
    centres = []
    for i, (name, (n_lines, rows), x) in enumerate(zip(CENTRES, read, encoded, strict=True)):
        labels = (rows[:, KEPT_COLUMNS.index(LABEL_COLUMN)] > 0).astype(np.int64)
        mask, stratified = flamby_test_mask(labels)
        centres.append(Centre(i, name, n_lines, x, labels, mask, stratified))

    site_train, site_test, constant = {}, {}, {}
    for c in centres:
        train_x = c.features[~c.test_mask]
        site_train[c.name] = pair(standardise(train_x, train_x), c.labels[~c.test_mask])
        test_x = c.features[c.test_mask]
        site_test[c.name] = pair(standardise(test_x, train_x), c.labels[c.test_mask])
        flat = [n for n, s in zip(names, train_x.std(axis=0, ddof=1), strict=True) if s == 0]
        if flat:
            constant[c.name] = flat
    all_train = np.concatenate([c.features[~c.test_mask] for c in centres])
    all_test = np.concatenate([c.features[c.test_mask] for c in centres])
    return Task(
        centres=centres,
        feature_names=names,
        site_train=site_train,
        site_test=site_test,
        pooled_train=pair(
            standardise(all_train, all_train),
            np.concatenate([c.labels[~c.test_mask] for c in centres]),
        ),
        pooled_test=pair(
            standardise(all_test, all_train),
            np.concatenate([c.labels[c.test_mask] for c in centres]),
        ),
        constant_columns=constant,
    )


# ----------------------------------------------------------------------------------------------
# FLamby's published results
# ----------------------------------------------------------------------------------------------


@dataclass
class FlambyMethod:
    """One method's rows in FLamby's result files."""

    label: str  # as written in the files, e.g. "FedAvg100"
    pooled_test: dict[int, float]  # seed -> accuracy on "Pooled Test"
    per_centre: dict[int, dict[int, float]]  # seed -> centre -> accuracy on client_test_i
    hyperparameters: dict[str, str]


def flamby_key(label: str) -> str:
    """``FedAvg100`` -> ``FedAvg`` (the suffix is FLamby's number of local updates)."""
    m = re.fullmatch(r"([A-Za-z]+)\d+", label)
    return m.group(1) if m else label


def read_flamby(folder: Path) -> dict[str, FlambyMethod]:
    """Parse FLamby's ``heart_seed*.csv`` files (their columns come in any order)."""
    methods: dict[str, FlambyMethod] = {}
    skip = {"Test", "Metric", "seed", "Method"}
    for path in sorted(folder.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                label, seed, test = row["Method"], int(row["seed"]), row["Test"]
                entry = methods.setdefault(
                    flamby_key(label),
                    FlambyMethod(
                        label=label,
                        pooled_test={},
                        per_centre={},
                        hyperparameters={k: v for k, v in row.items() if k not in skip and v},
                    ),
                )
                value = float(row["Metric"])
                if test == "Pooled Test":
                    entry.pooled_test[seed] = value
                elif m := re.fullmatch(r"client_test_(\d+)", test):
                    entry.per_centre.setdefault(seed, {})[int(m.group(1))] = value
    return methods


def weighted_centre_accuracy(per_centre: dict[int, float], test_sizes: Sequence[int]) -> float:
    """Accuracy over all centres' test rows from per-centre accuracies."""
    correct = sum(per_centre[i] * n for i, n in enumerate(test_sizes))
    return correct / sum(test_sizes)


def counts_consistent(methods: dict[str, FlambyMethod], test_sizes: Sequence[int]) -> bool:
    """Whether every per-centre accuracy in FLamby's files is k / n for our test sizes n."""
    return all(
        abs(acc * test_sizes[i] - round(acc * test_sizes[i])) < 1e-6
        for m in methods.values()
        for per in m.per_centre.values()
        for i, acc in per.items()
    )


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One trained model's accuracies and its wall time."""

    pooled_test: float
    per_centre: dict[str, float]
    per_centre_all: float
    seconds: float


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    flamby: str  # key in FLamby's files (after flamby_key)


def accuracy(model: nn.Module, data: Pair) -> tuple[int, int]:
    model.eval()
    with torch.no_grad():
        predicted = model(data[0]).argmax(dim=1)
    return int((predicted == data[1]).sum()), len(data[1])


def evaluate(model: nn.Module, task: Task, seconds: float) -> RunResult:
    right, total = accuracy(model, task.pooled_test)
    per = {name: accuracy(model, test) for name, test in task.site_test.items()}
    return RunResult(
        pooled_test=right / total,
        per_centre={name: r / n for name, (r, n) in per.items()},
        per_centre_all=sum(r for r, _ in per.values()) / sum(n for _, n in per.values()),
        seconds=seconds,
    )


def train_central(data: Pair, n_features: int, seed: int, s: Settings) -> nn.Module:
    """Pooled or single-centre training, FLamby's baseline recipe."""
    torch.manual_seed(seed)
    model = nn.Linear(n_features, 2)
    train_locally(
        model,
        TensorDataset(*data),
        epochs=s.centralised_epochs,
        batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        seed=seed,
    )
    return model


def federated_strategy(key: str, s: Settings) -> tuple[Strategy, float]:
    """The strategy and the client learning rate FLamby's config gives it."""
    if key == "fedavg":
        return make_strategy("fedavg"), s.learning_rate
    if key == "fedprox":
        return make_strategy("fedprox", mu=s.fedprox_mu), s.learning_rate
    if key == "fedadam":
        strategy = make_strategy(
            "fedadam",
            server_lr=s.fedadam_server_lr,
            beta1=s.fedadam_beta1,
            beta2=s.fedadam_beta2,
            tau=s.fedadam_tau,
        )
        return strategy, s.fedadam_client_lr
    raise ValueError(f"unknown federated method {key!r}")


def train_federated(key: str, task: Task, seed: int, s: Settings) -> nn.Module:
    """A whole federation of the four centres through alliance's Simulation."""
    strategy, client_lr = federated_strategy(key, s)
    n_features = task.n_features
    sim = Simulation(
        model_fn=lambda: nn.Linear(n_features, 2),
        sites=task.site_train,
        strategy=strategy,
        rounds=s.rounds,
        plan=TrainingPlan(
            local_epochs=s.local_epochs,
            batch_size=s.batch_size,
            learning_rate=client_lr,
            seed=seed,
        ),
        seed=seed,
        study=f"heart-disease-{key}-{seed}",
    )
    return sim.run().model


Trainer = Callable[[int, Settings], nn.Module]


def methods_for(task: Task) -> list[tuple[Method, Trainer]]:
    """Every method with the function that trains it for a seed."""

    def central(data: Pair) -> Trainer:
        return lambda seed, s: train_central(data, task.n_features, seed, s)

    def federated(key: str) -> Trainer:
        return lambda seed, s: train_federated(key, task, seed, s)

    runs = [(Method("pooled", "Pooled training", "Pooled Training"), central(task.pooled_train))]
    for c in task.centres:
        method = Method(f"local_{c.name}", f"Local {c.index} ({c.name})", f"Local {c.index}")
        runs.append((method, central(task.site_train[c.name])))
    for key, label in (("fedavg", "FedAvg"), ("fedprox", "FedProx"), ("fedadam", "FedAdam")):
        runs.append((Method(key, f"{label} (alliance)", label), federated(key)))
    return runs


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float] | None:
    """Mean and population std (ddof=0, as FLamby's scripts compute it)."""
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def fmt(stats: tuple[float, float] | None, n: int) -> str:
    if stats is None:
        return "—"
    return f"{stats[0]:.3f}" if n == 1 else f"{stats[0]:.3f} ± {stats[1]:.3f}"


def flamby_summary(m: FlambyMethod | None, test_sizes: Sequence[int]) -> dict[str, Any] | None:
    if m is None:
        return None
    seeds = sorted(m.pooled_test)
    centre_all = {
        seed: weighted_centre_accuracy(m.per_centre[seed], test_sizes)
        for seed in seeds
        if len(m.per_centre.get(seed, {})) == len(test_sizes)
    }
    pooled = mean_std([m.pooled_test[s] for s in seeds])
    centres = mean_std(list(centre_all.values()))
    return {
        "label": m.label,
        "seeds": seeds,
        "pooled_test": {str(s): m.pooled_test[s] for s in seeds},
        "pooled_test_mean": pooled[0] if pooled else None,
        "pooled_test_std": pooled[1] if pooled else None,
        "per_centre_test": {
            str(s): {CENTRES[i]: acc for i, acc in sorted(m.per_centre[s].items())}
            for s in sorted(m.per_centre)
        },
        "per_centre_all": {str(s): v for s, v in centre_all.items()},
        "per_centre_all_mean": centres[0] if centres else None,
        "per_centre_all_std": centres[1] if centres else None,
        "hyperparameters": m.hyperparameters,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="UCI files' folder")
    parser.add_argument(
        "--flamby-results",
        type=Path,
        default=DEFAULT_FLAMBY_DIR,
        help="folder of FLamby's heart_seed*.csv result files",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--quick", action="store_true", help="one seed (42) instead of 42-46")
    args = parser.parse_args(argv)

    console = Console(width=120, highlight=False)
    try:
        task = load_task(args.data)
    except DataNotFoundError as exc:
        print(
            f"heart_disease: {exc} (the UCI processed.*.data files; see "
            "../shared/data/SOURCES.md, or pass --data DIR)",
            file=sys.stderr,
        )
        return 2

    settings = Settings()
    seeds = SEEDS[:1] if args.quick else SEEDS
    torch.set_num_threads(settings.torch_threads)
    started = time.perf_counter()

    console.print("[bold]Fed-Heart-Disease: alliance vs FLamby's published benchmark[/bold]")
    console.print(DATA_CITATION)
    console.print(FLAMBY_CITATION)
    console.print()

    # Data summary
    total = sum(len(c.labels) for c in task.centres)
    for c in task.centres:
        console.print(
            f"  centre {c.index} {c.name:<12} {len(c.labels):>4} rows kept of {c.rows_in_file:>3}"
            f"  train {c.n_train:>3} / test {c.n_test:>3}  positive {c.labels.mean():.0%}"
            f"  split {'stratified' if c.stratified else 'not stratified'}"
        )
    console.print(
        f"  total {total} rows (FLamby: {EXPECTED_ROWS}), {task.n_features} features: "
        + ", ".join(task.feature_names)
    )
    if total != EXPECTED_ROWS:
        console.print(f"  [red]WARNING: {total} rows, FLamby has {EXPECTED_ROWS}[/red]")
    for name, cols in task.constant_columns.items():
        console.print(
            f"  note: {name} has constant training columns {cols}: FLamby's (x - mean) / "
            "(std + 1e-9) is kept as is"
        )
    split_check = sklearn_split_matches(task.centres)
    if split_check is None:
        split_note = (
            "split: scikit-learn's train_test_split(random_state=43) re-implemented; sizes match "
            "FLamby's; rows matched scikit-learn 1.9.1 when checked by hand, not re-checked in "
            "this run (scikit-learn not installed)"
        )
    elif split_check:
        split_note = "split: same test rows as scikit-learn's train_test_split(random_state=43)"
    else:
        split_note = "split: DIFFERS from scikit-learn's train_test_split: not FLamby's exact rows"
    console.print(f"  {split_note}")
    console.print()

    # FLamby's reference
    test_sizes = [c.n_test for c in task.centres]
    flamby: dict[str, FlambyMethod] = {}
    if args.flamby_results.is_dir():
        flamby = read_flamby(args.flamby_results)
    if not flamby:
        console.print(f"  no FLamby result files in {args.flamby_results}: reference omitted")
    elif not counts_consistent(flamby, test_sizes):
        console.print(
            "  [red]WARNING: FLamby's per-centre accuracies are not k/n for test sizes "
            f"{test_sizes}: the split differs from FLamby's[/red]"
        )

    # Runs
    runs = methods_for(task)
    results: dict[str, dict[int, RunResult]] = {}
    for method, train in runs:
        results[method.key] = {}
        for seed in seeds:
            t0 = time.perf_counter()
            model = train(seed, settings)
            results[method.key][seed] = evaluate(model, task, time.perf_counter() - t0)
        done = results[method.key]
        console.print(
            f"  ran {method.label:<26} seeds {','.join(map(str, seeds))}  "
            f"pooled test {np.mean([r.pooled_test for r in done.values()]):.3f}  "
            f"{sum(r.seconds for r in done.values()):.1f} s"
        )
    console.print()

    # Table
    n = len(seeds)
    table = Table(
        title=(
            f"Fed-Heart-Disease accuracy, mean ± std over seeds {seeds[0]}-{seeds[-1]}"
            if n > 1
            else f"Fed-Heart-Disease accuracy, seed {seeds[0]} (FLamby: mean ± std over 42-46)"
        ),
        caption=(
            "Pooled test: all 254 test rows normalised with pooled training statistics "
            "(FLamby's 'Pooled Test'). Per-centre tests: each centre's test rows normalised "
            "with its own training statistics (FLamby's client_test_0..3), over all 254 rows. "
            "std: ddof=0."
        ),
    )
    table.add_column("method")
    table.add_column("pooled test\nalliance", justify="right")
    table.add_column("pooled test\nFLamby", justify="right")
    table.add_column("per-centre tests\nalliance", justify="right")
    table.add_column("per-centre tests\nFLamby", justify="right")
    table.add_column("s / run", justify="right")
    method_json: dict[str, Any] = {}
    for method, _ in runs:
        done = results[method.key]
        ours_pooled = mean_std([r.pooled_test for r in done.values()])
        ours_centres = mean_std([r.per_centre_all for r in done.values()])
        ref = flamby_summary(flamby.get(method.flamby), test_sizes)
        ref_pooled = (ref["pooled_test_mean"], ref["pooled_test_std"]) if ref else None
        ref_centres = (ref["per_centre_all_mean"], ref["per_centre_all_std"]) if ref else None
        seconds = float(np.mean([r.seconds for r in done.values()]))
        table.add_row(
            method.label,
            fmt(ours_pooled, n),
            fmt(ref_pooled, 2),
            fmt(ours_centres, n),
            fmt(ref_centres, 2),
            f"{seconds:.2f}",
        )
        method_json[method.key] = {
            "label": method.label,
            "flamby_method": method.flamby,
            "seeds": {str(seed): asdict(r) for seed, r in done.items()},
            "pooled_test_mean": ours_pooled[0] if ours_pooled else None,
            "pooled_test_std": ours_pooled[1] if ours_pooled else None,
            "per_centre_all_mean": ours_centres[0] if ours_centres else None,
            "per_centre_all_std": ours_centres[1] if ours_centres else None,
            "seconds_per_run_mean": seconds,
        }
    ours = {m.flamby for m, _ in runs}
    others = sorted(k for k in flamby if k not in ours)
    if others:
        table.add_section()
    for key in others:
        ref = flamby_summary(flamby[key], test_sizes)
        assert ref is not None
        table.add_row(
            f"{key} (FLamby only)",
            "not run",
            fmt((ref["pooled_test_mean"], ref["pooled_test_std"]), 2),
            "not run",
            fmt((ref["per_centre_all_mean"], ref["per_centre_all_std"]), 2),
            "",
        )
    console.print(table)
    console.print()
    console.print("Deviations from FLamby's protocol:")
    for d in DEVIATIONS:
        console.print(f"  - {d}")
    elapsed = time.perf_counter() - started

    report = {
        "benchmark": "heart_disease",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "machine": platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
        "citations": {"data": DATA_CITATION, "flamby": FLAMBY_CITATION},
        "data": {
            "dir": str(args.data),
            "licence": "CC BY 4.0",
            "centres": {
                c.name: {
                    "flamby_centre": c.index,
                    "rows_in_file": c.rows_in_file,
                    "rows_kept": len(c.labels),
                    "train": c.n_train,
                    "test": c.n_test,
                    "positive_fraction": float(c.labels.mean()),
                    "stratified_split": c.stratified,
                    "constant_training_columns": task.constant_columns.get(c.name, []),
                }
                for c in task.centres
            },
            "rows_total": total,
            "features": task.feature_names,
            "split": {
                "train_fraction": TRAIN_FRACTION,
                "random_state": SPLIT_RANDOM_STATE,
                "matches_sklearn": split_check,
                "note": split_note,
            },
        },
        "seeds": list(seeds),
        "settings": asdict(settings),
        "deviations": list(DEVIATIONS),
        "methods": method_json,
        "flamby_reference": {
            "dir": str(args.flamby_results),
            "test_sizes": dict(zip(CENTRES, test_sizes, strict=True)),
            "methods": {k: flamby_summary(m, test_sizes) for k, m in sorted(flamby.items())},
        },
        "seconds_total": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print()
    console.print(f"{len(seeds)} seed(s), {elapsed:.1f} s in all; wrote {args.out}")
    console.print(DATA_CITATION)
    console.print(FLAMBY_CITATION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
