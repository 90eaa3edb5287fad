"""Every public function and method of the two packages has a docstring and full type hints.

Public: a name without a leading underscore, in a module whose path has none, defined there
(not re-exported). The optional frameworks' adapters are imported too (the test environment
installs them), so they are held to the same bar.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

PACKAGES = ("lrfinder_plugins", "lrfinder_adapters")


def _modules() -> Iterator[ModuleType]:
    for name in PACKAGES:
        package = importlib.import_module(name)
        yield package
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not any(part.startswith("_") for part in info.name.split(".")[1:]):
                yield importlib.import_module(info.name)


def _public_callables() -> Iterator[tuple[str, Callable[..., Any]]]:
    for module in _modules():
        for name in getattr(module, "__all__", None) or dir(module):
            obj = getattr(module, name, None)
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj
            elif inspect.isclass(obj):
                yield f"{module.__name__}.{name}", obj
                for attr, member in vars(obj).items():
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if not attr.startswith("_") and inspect.isfunction(member):
                        yield f"{module.__name__}.{name}.{attr}", member


PUBLIC = sorted(dict(_public_callables()).items())


def test_there_is_a_public_api_to_check() -> None:
    """The walk finds the entry points (a broken walk would pass every check below)."""
    names = {name for name, _ in PUBLIC}
    assert "lrfinder_adapters.pytorch.find_lr" in names
    assert "lrfinder_plugins.suggest.margin" in names and len(names) > 150


@pytest.mark.parametrize(("name", "obj"), PUBLIC, ids=[name for name, _ in PUBLIC])
def test_public_callable_has_a_docstring_and_types(name: str, obj: Callable[..., Any]) -> None:
    """A docstring, and every parameter (but ``self``/``cls``) and the return annotated; a class
    is checked for its docstring only."""
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if inspect.isclass(obj):
        return
    signature = inspect.signature(obj)
    untyped = [
        p
        for p, param in signature.parameters.items()
        if p not in ("self", "cls") and param.annotation is inspect.Parameter.empty
    ]
    assert not untyped, f"{name}: parameters without a type: {untyped}"
    assert signature.return_annotation is not inspect.Signature.empty, f"{name}: no return type"
