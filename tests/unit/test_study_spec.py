"""The typed study specification: strategy and model options checked once, when the study is
read or built; one quorum rule, one async/secure exclusion and one default threshold."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.cli_logging import kept_logging  # noqa: F401 - the fixture
from typer.testing import CliRunner

from alliance.algorithms.strategies import FedAdam, FedProx, build_strategy
from alliance.cli.app import app
from alliance.core.errors import ConfigError
from alliance.data.ontology import DiseaseSource
from alliance.protocol.aggregation import AggregationMode, AggregationPlan
from alliance.protocol.messages import TrainingPlan
from alliance.protocol.model_spec import ModelSpec, NoOptions, RankerOptions
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.protocol.privacy import default_threshold as study_default
from alliance.protocol.strategy_spec import StrategyName, StrategySpec
from alliance.protocol.study import StudySpec, effective_quorum, spec_hash
from alliance.secagg import RoundContext, RoundSetup, default_threshold

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("kept_logging")
HEAD = '[study]\nid = "s"\nrounds = 2\nsites = ["a", "b", "c", "d"]\n'


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('[strategy]\nname = "fedprox"\nspeed = 3\n', "[strategy] speed: fedprox takes no option"),
        ('[strategy]\nname = "fedavg"\nmu = 0.1\n', "[strategy] mu: fedavg takes no option 'mu'"),
        ('[strategy]\nname = "fedprox"\nmu = -1\n', "[strategy] mu of fedprox must be >= 0"),
        ('[strategy]\nname = "fedadam"\nbeta1 = 1\n', "[strategy] beta1 of fedadam must be < 1"),
        ('[strategy]\nname = "fedadam"\ntau = "x"\n', "[strategy] tau of fedadam must be a number"),
        ('[model]\nkind = "phenotype-ranker"\nwidth = 3\n', "[model] width: phenotype-ranker"),
        ("[model]\ndim = 2048\n", "[model] dim must be an integer in [1, 1024], got 2048"),
        ('[model]\nsources = ["ORPHA", "X"]\n', "[model] sources must be among"),
        ('[model]\nkind = "transformer"\n', "[model] kind 'transformer' is unknown"),
    ],
)
def test_a_bad_option_fails_at_parse_naming_file_table_and_key(
    tmp_path: Path, table: str, words: str
) -> None:
    text = HEAD + table
    with pytest.raises(ConfigError) as info:
        StudySpec.parse(text, where="study.toml")
    assert str(info.value).startswith(f"study.toml: {words}"), str(info.value)
    file = tmp_path / "study.toml"
    file.write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["study", "hash", str(file)])
    assert result.exit_code == 2, result.output
    assert "sha256:" not in result.output
    assert f"{file}: {words}" in " ".join(result.output.split())


def test_the_options_are_typed_records_with_their_defaults() -> None:
    spec = StudySpec.parse(
        HEAD + '[strategy]\nname = "fedadam"\nbeta1 = 0.8\n'
        '[model]\ndim = 16\nsources = ["OMIM", "ORPHA"]\n'
    )
    assert spec.strategy == StrategySpec(StrategyName.FEDADAM, beta1=0.8)
    assert spec.strategy.options == {"server_lr": 0.1, "beta1": 0.8, "beta2": 0.99, "tau": 1e-3}
    assert spec.strategy.proximal_mu == 0.0
    strategy = build_strategy(spec.strategy)
    assert isinstance(strategy, FedAdam)
    assert (strategy.beta1, strategy.server_lr) == (0.8, 0.1)
    assert spec.model == ModelSpec(
        "phenotype-ranker", RankerOptions(16, (DiseaseSource.OMIM, DiseaseSource.ORPHA))
    )
    assert spec.model.to_table() == {
        "kind": "phenotype-ranker",
        "dim": 16,
        "sources": ["OMIM", "ORPHA"],
        "min_phenotypes": 3,
    }
    prox = StudySpec.parse(HEAD + '[strategy]\nname = "fedprox"\n').strategy
    assert prox.proximal_mu == 0.01
    assert isinstance(build_strategy(prox), FedProx)


def test_a_study_built_in_code_is_checked_the_same_and_reads_back() -> None:
    spec = StudySpec.build(
        study_id="built",
        rounds=3,
        seed=5,
        sites=["c", "a", "b"],
        strategy=StrategySpec(StrategyName.FEDPROX, mu=0.5),
        plan=TrainingPlan(batch_size=8, seed=5),
        model=ModelSpec(options=RankerOptions(dim=8)),
        privacy=PrivacyPlan(mechanism="dp-sgd", target_epsilon=3.0),
        secagg=SecAggPlan(enabled=True, threshold=3),
    )
    assert spec.sites == ("a", "b", "c")
    assert spec.title == "built"
    assert spec.privacy.rounds == 3
    assert StudySpec.parse(spec.text) == spec
    assert spec.hash == spec_hash(spec.text)
    asynchronous = StudySpec.build(
        study_id="a", rounds=1, aggregation=AggregationPlan(AggregationMode.ASYNC, buffer=2)
    )
    assert StudySpec.parse(asynchronous.text) == asynchronous
    with pytest.raises(ConfigError, match=r"\[study\] rounds must be an integer in \[1, 10000\]"):
        StudySpec.build(study_id="x", rounds=0)
    with pytest.raises(ConfigError, match=r"\[study\] quorum 4 is larger than the 3 invited"):
        StudySpec.build(study_id="x", rounds=1, sites=["a", "b", "c"], quorum=4)
    with pytest.raises(ConfigError, match=r"\[strategy\] server_lr of fedavg must be > 0"):
        StudySpec.build(study_id="x", rounds=1, strategy=StrategySpec(server_lr=0.0))
    with pytest.raises(ConfigError, match=r"\[model\] dim must be an integer"):
        StudySpec.build(study_id="x", rounds=1, model=ModelSpec(options=RankerOptions(dim=0)))


def test_the_quorum_rule() -> None:
    plain, secure = SecAggPlan(), SecAggPlan(enabled=True)
    assert effective_quorum(12, requested=None, secagg=plain) == 12  # every site
    assert effective_quorum(12, requested=5, secagg=plain) == 5
    assert effective_quorum(None, requested=None, secagg=plain) == 1  # open invitation
    assert effective_quorum(12, requested=None, secagg=secure) == 8  # the threshold
    pinned = SecAggPlan(enabled=True, threshold=10)
    assert effective_quorum(12, requested=3, secagg=pinned) == 10  # fewer can unmask nothing
    assert effective_quorum(6, requested=None, secagg=pinned) == 6  # bounded by the sites
    assert effective_quorum(None, requested=None, secagg=pinned) == 10
    sites = ", ".join(f'"h{i}"' for i in range(12))
    spec = StudySpec.parse(
        f'[study]\nid = "q"\nrounds = 1\nsites = [{sites}]\n[secure_aggregation]\n'
    )
    assert spec.quorum == spec.quorum_for(12) == 8
    assert spec.quorum_for(6) == 4  # a cohort of six
    with pytest.raises(ConfigError, match=r"threshold 13 is larger than the 12 invited sites"):
        StudySpec.parse(
            f'[study]\nid = "q"\nrounds = 1\nsites = [{sites}]\n'
            "[secure_aggregation]\nthreshold = 13\n"
        )


def test_async_and_secure_aggregation_are_refused_together_in_code_and_in_files() -> None:
    words = 'mode = "async" cannot be combined with [secure_aggregation]'
    with pytest.raises(ConfigError) as info:
        StudySpec.build(
            study_id="x",
            rounds=1,
            sites=["a", "b", "c"],
            secagg=SecAggPlan(enabled=True),
            aggregation=AggregationPlan(AggregationMode.ASYNC),
        )
    assert words in str(info.value)
    text = HEAD + '[aggregation]\nmode = "async"\n[secure_aggregation]\n'
    with pytest.raises(ConfigError, match=r"^study\.toml: \[aggregation\] mode"):
        StudySpec.parse(text, where="study.toml")


def test_one_default_threshold_for_the_study_and_the_round_setup() -> None:
    assert study_default is default_threshold
    context = RoundContext("f", "s", 1, 0)
    for n in range(2, 40):
        sites = tuple(f"s{i:02d}" for i in range(n))
        setup = RoundSetup(context=context, sites=sites, vector_length=1, modulus_bits=32)
        assert SecAggPlan(enabled=True).threshold_for(n) == setup.share_threshold == setup.quorum
        assert SecAggPlan(enabled=True).share_threshold(n) == setup.share_threshold


def test_a_registered_kind_takes_only_its_options() -> None:
    text = HEAD + '[model]\nkind = "none-taken"\n'
    with pytest.raises(ConfigError, match="kind 'none-taken' is unknown"):
        StudySpec.parse(text)
    from alliance.protocol.model_spec import MODEL_OPTIONS, register_model_options

    register_model_options("none-taken", NoOptions.from_table)
    try:
        assert StudySpec.parse(text).model == ModelSpec("none-taken", NoOptions())
        with pytest.raises(ConfigError, match=r"\[model\] this kind takes no options"):
            StudySpec.parse(text + "dim = 3\n")
        with pytest.raises(ConfigError, match="ships with alliance"):
            register_model_options("phenotype-ranker", NoOptions.from_table)
    finally:
        del MODEL_OPTIONS["none-taken"]
