"""Every field of a study file is checked with bounds before anyone approves or queues it.

An ethics board approves the hash that ``alliance study hash`` prints, so a study that cannot run
(a model too large for memory, an infinite timeout, an id with a newline) must be refused there,
and again by the coordinator when it is submitted, each time naming the field and what it takes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.cli_logging import kept_logging  # noqa: F401 - the fixture
from tests.unit.study_cases import CASES, study_text
from typer.testing import CliRunner

from alliance.cli.app import app
from alliance.coordinator.study_check import load_study
from alliance.core.errors import ConfigError
from alliance.protocol.study import StudySpec, is_study_id

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("kept_logging")


def test_the_valid_study_is_accepted(tmp_path: Path) -> None:
    spec = load_study(study_text(), where="study.toml")
    assert spec.study_id == "ok-study"
    file = tmp_path / "study.toml"
    file.write_text(study_text(), encoding="utf-8")
    result = runner.invoke(app, ["study", "hash", str(file)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == spec.hash


@pytest.mark.parametrize(("text", "words"), CASES)
def test_a_bad_field_is_refused_naming_it(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_study(text, where="study.toml")
    message = str(info.value)
    assert message.startswith("study.toml: "), message
    assert words in message, message


@pytest.mark.parametrize(("text", "words"), CASES)
def test_study_hash_prints_no_hash_for_a_bad_study(tmp_path: Path, text: str, words: str) -> None:
    file = tmp_path / "study.toml"
    file.write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["study", "hash", str(file)])
    assert result.exit_code == 2, result.output
    assert "sha256:" not in result.output
    assert "Traceback" not in result.output
    assert " ".join(words.split()) in " ".join(result.output.split())


def test_a_study_id_is_matched_whole() -> None:
    assert is_study_id("rare-2026")
    for bad in ("x\n", "x\r\n", "\nx", "x y", "-x", "X", "a" * 64, 5, None):
        assert not is_study_id(bad)
    with pytest.raises(ConfigError, match=r"\[study\] id"):
        StudySpec.parse('[study]\nid = "x\\n"\nrounds = 1\n')
