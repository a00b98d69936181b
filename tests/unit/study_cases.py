"""A valid study file and, field by field, bad values with the words their error must hold.

Shared by the tests of ``alliance study hash`` (``test_study_bounds.py``) and of
``POST /v1/studies`` and ``alliance study submit`` (``tests/integration/test_study_queue.py``).
"""

from __future__ import annotations

import pytest

VALID = {
    "study": {
        "id": '"ok-study"',
        "title": '"Rare disease"',
        "rounds": "3",
        "seed": "7",
        "sites": '["site-a", "site-b", "site-c"]',
        "quorum": "2",
        "round_timeout_s": "600",
    },
    "strategy": {"name": '"fedadam"', "server_lr": "0.1", "beta1": "0.9"},
    "plan": {"local_epochs": "1", "batch_size": "64", "learning_rate": "0.01"},
    "model": {"kind": '"phenotype-ranker"', "dim": "32", "min_phenotypes": "3"},
}

#: (table, key, bad value, words the error must hold: the field and the allowed range).
BAD = [
    ("study", "id", '"x\\n"', "[study] id"),
    ("study", "id", '"Upper"', "[study] id"),
    ("study", "id", '""', "[study] id"),
    ("study", "id", '"' + "a" * 64 + '"', "[study] id"),
    ("study", "id", "5", "[study] id"),
    ("study", "title", "5", "[study] title"),
    ("study", "title", '"' + "t" * 301 + '"', "[study] title"),
    ("study", "title", '"line\\nbreak"', "[study] title"),
    ("study", "rounds", "0", "[study] rounds must be an integer in [1, 10000]"),
    ("study", "rounds", "10001", "[study] rounds must be an integer in [1, 10000]"),
    ("study", "rounds", "2.5", "[study] rounds"),
    ("study", "rounds", "true", "[study] rounds"),
    ("study", "seed", "-1", "[study] seed must be an integer in [0, "),
    ("study", "seed", str(2**64), "[study] seed"),
    ("study", "sites", '["site-a", "site-a"]', "[study] sites"),
    ("study", "sites", '["site-a\\n"]', "[study] sites"),
    ("study", "sites", "[]", "[study] sites"),
    ("study", "quorum", "0", "[study] quorum"),
    ("study", "quorum", "4", "[study] quorum"),
    ("study", "round_timeout_s", "inf", "[study] round_timeout_s must be a finite number in"),
    ("study", "round_timeout_s", "nan", "[study] round_timeout_s must be a finite number in"),
    ("study", "round_timeout_s", "0", "[study] round_timeout_s"),
    ("study", "round_timeout_s", "-5", "[study] round_timeout_s"),
    ("study", "round_timeout_s", "1e9", "[study] round_timeout_s"),
    ("study", "round_timeout_s", '"600"', "[study] round_timeout_s"),
    ("strategy", "name", '"fedsgd"', "unknown strategy 'fedsgd'"),
    ("strategy", "name", "3", "[strategy] name"),
    ("strategy", "server_lr", "nan", "[strategy] server_lr"),
    ("strategy", "server_lr", "0", "[strategy] server_lr"),
    ("strategy", "server_lr", "1e300", "[strategy] server_lr"),
    ("strategy", "beta1", "1.5", "[strategy] beta1"),
    ("strategy", "speed", "3", "[strategy]"),
    ("strategy", "beta2", "1.0", "[strategy] beta2 of fedadam must be < 1"),
    ("strategy", "tau", "0", "[strategy] tau"),
    ("plan", "local_epochs", "0", "local_epochs"),
    ("plan", "local_epochs", "1000000", "local_epochs"),
    ("plan", "batch_size", "0", "batch_size"),
    ("plan", "batch_size", "1000000000", "batch_size"),
    ("plan", "learning_rate", "inf", "learning_rate"),
    ("plan", "learning_rate", "1e9", "learning_rate"),
    ("plan", "weight_decay", "-1", "weight_decay"),
    ("plan", "epochs", "1", "[plan]"),
    ("plan", "proximal_mu", "-1", "proximal_mu"),
    ("plan", "seed", "-1", "'seed' must be an integer in [0, "),
    ("model", "dim", "1099511627776", "[model] dim must be an integer in [1, 1024]"),
    ("model", "dim", "0", "[model] dim must be an integer in [1, 1024]"),
    ("model", "dim", "1.5", "[model] dim must be an integer in [1, 1024]"),
    ("model", "min_phenotypes", "0", "[model] min_phenotypes"),
    ("model", "min_phenotypes", "1000000", "[model] min_phenotypes"),
    ("model", "sources", "5", "[model] sources"),
    ("model", "sources", '["DECIPHER"]', "[model] sources"),
    ("model", "kind", '["phenotype-ranker"]', "[model] kind"),
    ("model", "kind", '"transformer"', "[model] kind"),
    ("model", "width", "3", "[model]"),
]
EXTRA_TABLES = [
    ("[privacy]\nmechanism = 'dp-sgd'\ntarget_epsilon = inf\n", "[privacy] target_epsilon"),
    ("[privacy]\nmechanism = 'dp-sgd'\nnoise_multiplier = 1e9\n", "[privacy] noise_multiplier"),
    ("[privacy]\nmechanism = 'dp-sgd'\ntarget_epsilon = 1\ndelta = 0\n", "[privacy] delta"),
    ("[privacy]\nmechanism = 'dp-sgd'\ntarget_epsilon = 1\nmax_grad_norm = 0\n", "max_grad_norm"),
    ("[privacy]\nclient_clip = inf\nclient_noise_multiplier = 1\n", "[privacy] client_clip"),
    ("[privacy]\nclient_clip = 1\nclient_noise_multiplier = -1\n", "client_noise_multiplier"),
    ("[secure_aggregation]\nclip_range = nan\n", "[secure_aggregation] clip_range"),
    ("[secure_aggregation]\nneighbours = -1\n", "[secure_aggregation] neighbours"),
    ("[secure_aggregation]\nvalue_bits = 64\n", "[secure_aggregation] value_bits"),
    ("[secure_aggregation]\nkey_batch = 0\n", "[secure_aggregation] key_batch"),
    ("[secure_aggregation]\nthreshold = 1\n", "[secure_aggregation] threshold"),
    ("[aggregation]\nmode = 'async'\nbuffer = 0\n", "[aggregation] buffer"),
    ("[aggregation]\nmode = 'fast'\n", "[aggregation] mode"),
    ("[secure_aggregation]\nstage_timeout_s = 1e12\n", "[secure_aggregation] stage_timeout_s"),
    ("[secure_aggregation]\nmax_weight = 1099511627776\n", "[secure_aggregation] max_weight"),
    ("[aggregation]\nmode = 'async'\nmax_staleness = 1099511627776\n", "max_staleness"),
    ("[aggregation]\nmode = 'async'\nstaleness_exponent = 1e9\n", "staleness_exponent"),
]


def study_text(table: str = "", key: str = "", value: str = "", extra: str = "") -> str:
    lines = []
    for name, keys in VALID.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {value if (name, k) == (table, key) else v}" for k, v in keys.items()]
        if name == table and key not in keys:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n" + extra


CASES = [pytest.param(study_text(t, k, v), words, id=f"{t}.{k}={v[:20]}") for t, k, v, words in BAD]
CASES += [pytest.param(study_text(extra=e), w, id=e.split("\n")[0] + w) for e, w in EXTRA_TABLES]
