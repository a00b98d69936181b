"""Configuration files that break the TOML parser, and user text that looks like rich markup.

TOML is read in one place (:func:`alliance.core.config.parse_toml`); arrays nested deeper than
:mod:`tomllib` can recurse are a ConfigError naming the file, so every command exits 2 with one
line instead of a RecursionError traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.cli_logging import kept_logging  # noqa: F401 - the fixture
from typer.testing import CliRunner

from alliance.cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("kept_logging")
DEEP = "x = " + "[" * 5000 + "]" * 5000 + "\n"


def deep_file(tmp_path: Path) -> Path:
    path = tmp_path / "deep.toml"
    path.write_text(DEEP, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["site", "budget", "--config"],
        ["site", "models", "--config"],
        ["study", "model", "rare", "--out", "OUT", "--config"],
        ["data", "check", "--config"],
        ["coordinator", "serve", "--config"],
        ["study", "status", "--config"],
        ["consortium", "init", "demo", "--out", "OUT", "--sites"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_deeply_nested_toml_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    path = deep_file(tmp_path)
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    result = runner.invoke(app, [*args, str(path)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert not isinstance(result.exception, RecursionError)
    assert "Traceback" not in output
    assert "nested too deeply" in output
    assert "deep.toml" in output


def test_study_hash_of_a_deeply_nested_study_file(tmp_path: Path) -> None:
    path = deep_file(tmp_path)
    result = runner.invoke(app, ["study", "hash", str(path)])
    assert result.exit_code == 2, result.output
    assert "nested too deeply" in result.output


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (["consortium", "init"], "[coordinator] and one [[site]] each"),
        (["data", "check"], "only its [data] table"),
        (["study"], "puts in [policy] approved_studies"),
        (["evaluate"], "the held-out cases ([data] test, the default"),
    ],
)
def test_help_shows_table_names_in_brackets(command: list[str], words: str) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert words in " ".join(result.output.split())
