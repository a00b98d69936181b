"""A study file checked whole, as an ethics board approves it and the coordinator queues it.

:meth:`~alliance.protocol.study.StudySpec.parse` checks every field, the ``[strategy]`` and
``[model]`` options included, with bounds. What is left to a coordinator is whether it can build
the model kind the study names (``model_check``: by default the kinds of
:data:`alliance.models.tasks.MODEL_KINDS`). So ``alliance study hash`` prints no hash, and
``POST /v1/studies`` queues nothing, for a study that could never run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from alliance.core.errors import ConfigError
from alliance.models.tasks import check_model_options
from alliance.protocol.study import StudySpec

__all__ = ["load_study"]


def load_study(
    text: str,
    *,
    where: str = "study file",
    model_check: Callable[[Mapping[str, Any]], None] = check_model_options,
) -> StudySpec:
    """Parse a study file and check that its model kind can be built here.

    Parameters
    ----------
    text
        The study file's text.
    where
        What to call it in errors (its path).
    model_check
        Checks the ``[model]`` table (as :meth:`ModelSpec.to_table` writes it) against the
        model kinds this coordinator builds (default: :data:`~alliance.models.tasks.MODEL_KINDS`).

    Raises
    ------
    ConfigError
        ``where: [table] key ...``, naming the field, what it accepts and what it got.
    """
    spec = StudySpec.parse(text, where=where)
    try:
        model_check(spec.model.to_table())
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return spec
