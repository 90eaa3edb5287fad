"""The package layering: no import cycles, and the import-linter contracts in pyproject.toml hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """The import graph of both packages, as lint-imports sees it (TYPE_CHECKING imports dropped)."""
    return grimp.build_graph(
        "lrfinder_plugins",
        "lrfinder_adapters",
        exclude_type_checking_imports=True,
        cache_dir=None,
    )


def _cycles(graph: grimp.ImportGraph, package: str) -> list[str]:
    """Every pair of modules of ``package`` that reach each other, with both chains."""
    # The package root imports its modules (to re-export them); skipping it is sound only while
    # nothing it reaches imports it back, so no cycle can run through it.
    reached_by_root = graph.find_upstream_modules(package)
    reaching_root = graph.find_downstream_modules(package)
    assert not reached_by_root & reaching_root, (
        f"{package} is on an import cycle with {sorted(reached_by_root & reaching_root)}"
    )
    modules = sorted(graph.find_descendants(package))
    upstream = {module: graph.find_upstream_modules(module) for module in modules}
    cycles = []
    for i, first in enumerate(modules):
        for second in modules[i + 1 :]:
            if second in upstream[first] and first in upstream[second]:
                there = graph.find_shortest_chain(importer=first, imported=second)
                back = graph.find_shortest_chain(importer=second, imported=first)
                assert there is not None and back is not None
                cycles.append(f"{' -> '.join(there)}  and  {' -> '.join(back)}")
    return cycles


def test_core_has_no_import_cycle(graph: grimp.ImportGraph) -> None:
    """No two modules of lrfinder_plugins import each other, directly or indirectly."""
    cycles = _cycles(graph, "lrfinder_plugins")
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_adapters_have_no_import_cycle(graph: grimp.ImportGraph) -> None:
    """No two modules of lrfinder_adapters import each other, directly or indirectly."""
    cycles = _cycles(graph, "lrfinder_adapters")
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_private_core_modules_contract_is_complete(graph: grimp.ImportGraph) -> None:
    """The adapters' ban on private core modules lists every lrfinder_plugins._* module."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = (
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c["id"] == "adapters-use-public-core"
    )
    private = {
        module
        for module in graph.find_children("lrfinder_plugins")
        if module.rpartition(".")[2].startswith("_") and not module.endswith("__")
    }
    assert set(contract["forbidden_modules"]) == private


def test_import_contracts_are_kept() -> None:
    """lint-imports (the contracts in pyproject.toml) passes."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
