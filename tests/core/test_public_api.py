"""The public surface: __all__ sorted and complete, no framework import, lazy torch names."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lrfinder_plugins

FRAMEWORKS = ("torch", "lightning", "accelerate")


def test_all_is_sorted() -> None:
    """__all__ is kept in sorted order (easy to review, no duplicates hiding)."""
    assert lrfinder_plugins.__all__ == sorted(set(lrfinder_plugins.__all__))


def test_all_lists_every_public_class_and_function() -> None:
    """Every public class or function of the package exposed at its root is in __all__."""
    exposed = {
        name
        for name, value in vars(lrfinder_plugins).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__.startswith(("lrfinder_plugins", "lrfinder_adapters"))
    }
    assert exposed <= set(lrfinder_plugins.__all__), exposed - set(lrfinder_plugins.__all__)


@pytest.mark.parametrize(
    "name", [n for n in lrfinder_plugins.__all__ if n not in lrfinder_plugins._LAZY]
)
def test_every_eager_name_in_all_exists(name: str) -> None:
    """Each name in __all__ that needs no torch is an attribute right after import."""
    assert name in vars(lrfinder_plugins)


def test_lazy_names_are_in_all_and_dir() -> None:
    """The torch-backed names are public and listed by dir() before they are loaded."""
    assert set(lrfinder_plugins._LAZY) <= set(lrfinder_plugins.__all__) & set(dir(lrfinder_plugins))


def test_unknown_attribute_raises_attribute_error() -> None:
    """A name the package does not have raises AttributeError naming it."""
    with pytest.raises(AttributeError, match="no_such_name"):
        lrfinder_plugins.no_such_name  # noqa: B018


@pytest.mark.parametrize("name", sorted(lrfinder_plugins._LAZY))
def test_lazy_name_resolves(name: str) -> None:
    """Each lazy name loads from lrfinder_adapters on first use."""
    pytest.importorskip("torch")
    value = getattr(lrfinder_plugins, name)
    assert value.__module__ == lrfinder_plugins._LAZY[name] and value.__name__ == name


def loaded_frameworks(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return which frameworks it left in sys.modules."""
    probe = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import sys
        print(",".join(m for m in {FRAMEWORKS!r} if m in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return [m for m in done.stdout.strip().split(",") if m]


def test_import_loads_no_framework() -> None:
    """import lrfinder_plugins imports neither torch, lightning nor accelerate."""
    assert loaded_frameworks("import lrfinder_plugins") == []


def test_using_the_core_loads_no_framework() -> None:
    """A whole range test, its suggestions and a JSON file need no framework either."""
    code = """
        import tempfile, pathlib
        from lrfinder_plugins import RangeTest
        test = RangeTest(num_iter=20)
        while not test.finished:
            test.record(1.0 / (1.0 + test.next_lr()))
        result = test.result()
        result.suggestions()
        result.save_json(pathlib.Path(tempfile.mkdtemp()) / "r.json")
    """
    assert loaded_frameworks(code) == []


# -- the core stays framework-free ------------------------------------------------------------------
CORE = Path(lrfinder_plugins.__file__).parent
MAY_REACH_ADAPTERS = {"cli.py", "demo.py", "_tune_command.py"}  # front ends: adapters on first use
FORBIDDEN_IN_CORE = (*FRAMEWORKS, "lrfinder_adapters")


def _imports_outside_type_checking(tree: ast.AST) -> list[str]:
    """Every module imported by ``tree`` (function bodies included), ``if TYPE_CHECKING:`` aside."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize(
    "module",
    sorted(p.name for p in CORE.glob("*.py") if p.name not in MAY_REACH_ADAPTERS),
)
def test_core_module_never_imports_a_framework_or_the_adapters(module: str) -> None:
    """The engine modules import neither torch, lightning, accelerate nor lrfinder_adapters."""
    tree = ast.parse((CORE / module).read_text())
    reached = [
        name
        for name in _imports_outside_type_checking(tree)
        if name.split(".")[0] in FORBIDDEN_IN_CORE
    ]
    assert reached == [], f"{module} imports {reached}"


def test_root_reaches_the_adapters_only_through_lazy_names() -> None:
    """The package root names lrfinder_adapters only in _LAZY (loaded on first use)."""
    assert all(
        target.startswith("lrfinder_adapters.") for target in lrfinder_plugins._LAZY.values()
    )
    source = (CORE / "__init__.py").read_text()
    mentions = source.count('"lrfinder_adapters.')
    assert mentions == len(lrfinder_plugins._LAZY)


def test_core_has_no_hard_coded_list_of_adapters() -> None:
    """No core module but the front ends names an adapter: they come from entry points."""
    for path in CORE.glob("*.py"):
        if path.name in MAY_REACH_ADAPTERS | {"__init__.py"}:
            continue
        assert "lrfinder_adapters" not in path.read_text(), path.name


def test_loading_every_plugin_loads_no_framework() -> None:
    """Building the plugin manager imports the adapters' plugin modules, but no framework."""
    code = """
        from lrfinder_plugins import get_plugin_manager
        pm = get_plugin_manager()
        assert pm.get_plugin("lrfinder.torch") is not None, pm.list_name_plugin()
        assert pm.get_plugin("lrfinder.tensorboard") is not None, pm.list_name_plugin()
    """
    assert loaded_frameworks(code) == []
