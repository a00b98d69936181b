"""The public API is what ``__all__`` reaches: every listed name exists, is documented, and
every package's public modules are importable without side effects."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import alliance

PACKAGES = sorted(
    name for _, name, is_pkg in pkgutil.walk_packages(alliance.__path__, "alliance.") if is_pkg
)


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_exists_and_is_documented(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} needs a docstring"
    assert "TODO" not in module.__doc__, f"{name} needs a real docstring"
    exported = getattr(module, "__all__", None)
    if name == "alliance.cli":
        return
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    for attr in exported:
        obj = getattr(module, attr)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name}.{attr} has no docstring"


def test_packages_are_the_designed_layers() -> None:
    assert set(PACKAGES) >= {
        "alliance.core",
        "alliance.protocol",
        "alliance.data",
        "alliance.models",
        "alliance.algorithms",
        "alliance.transport",
        "alliance.evaluation",
        "alliance.store",
        "alliance.coordinator",
        "alliance.site",
        "alliance.sim",
        "alliance.cli",
    }
