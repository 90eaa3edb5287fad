"""The public surface: __all__ sorted and complete, no framework import, lazy torch names."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

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
