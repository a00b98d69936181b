"""Every command's ``--help`` shows its text as written: rich markup eats no ``[word]``.

Typer renders help with rich markup, where ``[data]`` is a style tag and vanishes unless written
``\\[data]``. This walks every command and group of ``alliance``, takes each text its help shows
(the docstring, every option's and argument's help), and checks that each bracketed word the
author meant is in the rendered help, and that no escaping backslash is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from alliance.cli.app import app

runner = CliRunner()
_BRACKETED = re.compile(r"\[+[^\[\]]*\]+")


# Typer vendors its own click: commands are told apart by what they have, not their class.
Command = Any


def commands(command: Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from commands(sub, (*path, name))


def find(path: tuple[str, ...]) -> Command:
    command: Command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def texts(command: Command) -> list[str]:
    """What the author wrote for this command's help, as written in the source."""
    found = [command.help or "", command.epilog or ""]
    found += [getattr(param, "help", None) or "" for param in command.params]
    return [text for text in found if text]


def rendered(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


ALL = list(commands(typer.main.get_command(app)))


def test_the_walk_reaches_every_command() -> None:
    assert ("coordinator", "serve") in ALL
    assert ("data", "map") in ALL
    assert ("demo",) in ALL
    assert len(ALL) > 30


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "alliance")
def test_help_keeps_every_bracketed_word(path: tuple[str, ...]) -> None:
    shown = rendered(path)
    assert "\\[" not in shown  # an escape shown as written
    for text in texts(find(path)):
        meant = " ".join(text.replace("\\[", "[").split())
        for words in _BRACKETED.findall(meant):
            assert words in shown, f"{' '.join(path)} --help lost {words!r} of {meant!r}"
