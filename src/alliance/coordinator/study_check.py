"""A study file checked whole, as an ethics board approves it and the coordinator queues it.

:meth:`~alliance.protocol.study.StudySpec.parse` checks every field the protocol knows, with
bounds. What only the layers above know is checked here too: the ``[model]`` options of the
named model kind (:func:`~alliance.models.tasks.check_model_options`, without building the model)
and the ``[strategy]`` name and options (by building the strategy, which holds no model). So
``alliance study hash`` prints no hash, and ``POST /v1/studies`` queues nothing, for a study that
could never run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from alliance.algorithms.strategies import make_strategy
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
    """Parse a study file and check its model and strategy options.

    Parameters
    ----------
    text
        The study file's text.
    where
        What to call it in errors (its path).
    model_check
        Validates the ``[model]`` table without building the model (default: the bounds of the
        registered model kinds).

    Raises
    ------
    ConfigError
        ``where: [table] key ...``, naming the field, what it accepts and what it got.
    """
    spec = StudySpec.parse(text, where=where)
    try:
        model_check(spec.model)
        make_strategy(spec.strategy["name"], **spec.strategy_options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return spec
