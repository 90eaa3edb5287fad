"""Meta-tests: every hook is specified, documented in the plugin guide and exercised by a test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from lrfinder_plugins import hookspecs

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
SPEC_MARK = f"{hookspecs.PROJECT_NAME}_spec"


def hook_specs() -> dict[str, object]:
    """Every function in hookspecs.py marked as a hook specification, by name."""
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, SPEC_MARK)
    }


HOOKS = sorted(hook_specs())


def is_first_result(name: str) -> bool:
    return bool(getattr(hook_specs()[name], SPEC_MARK).get("firstresult"))


def test_hookspecs_are_found() -> None:
    """The meta-tests below see the hooks (a renamed marker would make them pass vacuously)."""
    assert {"lrfinder_make_step", "lrfinder_make_probe", "lrfinder_is_oom"} <= set(HOOKS)
    assert all(name.startswith("lrfinder_") for name in HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_section_in_the_guide(name: str) -> None:
    """docs/plugins.md has a reference section for the hook."""
    assert f"\n### `{name}`\n" in GUIDE.read_text()


def test_guide_reference_table_lists_exactly_the_hooks() -> None:
    """The guide's hook table names every hook and no hook that does not exist."""
    listed = set(re.findall(r"^\| `(lrfinder_\w+)\(", GUIDE.read_text(), flags=re.MULTILINE))
    assert listed == set(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_implemented_by_a_test(name: str) -> None:
    """Some test (or an example the tests install) implements the hook, so it is exercised."""
    sources = [*ROOT.joinpath("tests").rglob("*.py"), *ROOT.joinpath("examples").rglob("*.py")]
    pattern = re.compile(rf"def {name}\(")
    users = [
        p.name for p in sources if p.name != Path(__file__).name and pattern.search(p.read_text())
    ]
    assert users, f"no test implements {name}"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_docstring_states_its_contract(name: str) -> None:
    """Each hook says when it is called, and what None (and the return value) mean."""
    doc = " ".join((inspect.getdoc(hook_specs()[name]) or "").split())
    assert "Called" in doc, f"{name}: when is it called?"
    if is_first_result(name):
        assert "``None``" in doc and "first" in doc, f"{name}: what do None and order mean?"
    else:
        assert "``None``" in doc or "return value is ignored" in doc, f"{name}: return value?"


def test_readme_plugins_section_points_to_the_guide() -> None:
    """README's Plugins section links the plugin author's guide."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Plugins\n", 1)[1].split("\n## ", 1)[0]
    assert "docs/plugins.md" in section
