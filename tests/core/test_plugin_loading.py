"""Entry-point plugins: loaded one by one, skipped when broken, blocked by name, listed."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lrfinder_plugins import PluginError, PluginLoadWarning, get_plugin_manager
from lrfinder_plugins._manager import plugin_distribution, reset_plugin_manager
from lrfinder_plugins.cli import main

from .curves import result_from_losses, sigmoid_curve

InstallFn = Callable[..., None]

GOOD_PLUGIN = """
    from lrfinder_plugins import hookimpl
    from lrfinder_plugins.suggest import make_suggestion

    @hookimpl
    def lrfinder_register_suggesters():
        return {"{method}": lambda result: make_suggestion(result, "{method}", result.lrs[1])}
"""


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InstallFn]:
    """Install a one-module distribution with an ``lrfinder_plugins`` entry point (on sys.path).

    The distribution is a ``.dist-info`` folder beside the module, as pip leaves it, so
    ``importlib.metadata`` finds it exactly as it finds a real install.
    """
    modules: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def _install(
        dist: str, entry_point: str, module: str, source: str, version: str = "1.0"
    ) -> None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[lrfinder_plugins]\n{entry_point} = {module}\n")
        modules.append(module)
        reset_plugin_manager()

    yield _install
    for module in modules:
        sys.modules.pop(module, None)


def good_plugin(method: str) -> str:
    return GOOD_PLUGIN.replace("{method}", method)


def test_entry_point_plugin_is_registered_under_its_name(install: InstallFn) -> None:
    """An installed entry point becomes a plugin named after the entry point, its method usable."""
    install("demo-dist", "demo", "lrf_demo_plugin", good_plugin("second_point"))
    result = result_from_losses(sigmoid_curve())
    assert get_plugin_manager().get_plugin("demo") is not None
    assert result.suggestion(method="second_point").lr == result.lrs[1]


def test_entry_point_plugin_records_its_distribution(install: InstallFn) -> None:
    """The plugin's distribution and version are known (and pluggy's own record has it)."""
    install("demo-dist", "demo", "lrf_demo_plugin", good_plugin("second_point"), version="2.5")
    pm = get_plugin_manager()
    plugin = pm.get_plugin("demo")
    assert plugin_distribution(pm, plugin) == "demo-dist 2.5"
    assert any(p is plugin for p, _ in pm.list_plugin_distinfo())


def test_builtin_adapters_are_entry_points_of_this_distribution() -> None:
    """lrfinder.torch and lrfinder.tensorboard come from the public group, like a third party's."""
    pm = get_plugin_manager()
    for name in ("lrfinder.torch", "lrfinder.tensorboard"):
        origin = plugin_distribution(pm, pm.get_plugin(name))
        assert origin is not None and origin.startswith("lrfinder-plugins ")


def test_plugin_importing_a_missing_framework_is_skipped_with_a_warning(
    install: InstallFn,
) -> None:
    """An entry point whose import fails warns with its name and distribution; others still load."""
    install("broken-dist", "broken", "lrf_broken_plugin", "import no_such_framework_xyz\n")
    install("demo-dist", "demo", "lrf_demo_plugin", good_plugin("second_point"))
    with pytest.warns(PluginLoadWarning) as caught:
        pm = get_plugin_manager()
    message = str(caught[0].message)
    assert "'broken'" in message and "broken-dist 1.0" in message
    assert "no_such_framework_xyz" in message and "LRFINDER_DISABLE_PLUGINS=broken" in message
    assert pm.get_plugin("broken") is None and pm.get_plugin("demo") is not None
    assert pm.get_plugin("lrfinder.torch") is not None


def test_plugin_with_an_unknown_hook_is_skipped_with_a_warning(install: InstallFn) -> None:
    """A misspelt lrfinder_* hook fails validation: that plugin is skipped, not the manager."""
    source = """
        from lrfinder_plugins import hookimpl

        @hookimpl
        def lrfinder_step_recordd(point):
            pass
    """
    install("typo-dist", "typo", "lrf_typo_plugin", source)
    with pytest.warns(PluginLoadWarning, match=r"'typo'.*lrfinder_step_recordd"):
        pm = get_plugin_manager()
    assert pm.get_plugin("typo") is None and pm.get_plugin("lrfinder.suggest") is not None


def test_blocked_entry_point_is_not_even_imported(
    install: InstallFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LRFINDER_DISABLE_PLUGINS blocks an entry-point plugin by name before its import."""
    install("broken-dist", "broken", "lrf_broken_plugin", "import no_such_framework_xyz\n")
    monkeypatch.setenv("LRFINDER_DISABLE_PLUGINS", "broken")
    pm = get_plugin_manager()  # no warning: filterwarnings=error would fail the test
    assert pm.is_blocked("broken") and "lrf_broken_plugin" not in sys.modules


def test_blocking_an_entry_point_plugin_removes_its_method(
    install: InstallFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blocked plugin's suggestion method is not registered."""
    install("demo-dist", "demo", "lrf_demo_plugin", good_plugin("second_point"))
    monkeypatch.setenv("LRFINDER_DISABLE_PLUGINS", "other, demo")
    with pytest.raises(ValueError, match="second_point"):
        result_from_losses(sigmoid_curve()).suggestion(method="second_point")


def test_blocking_the_torch_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in adapters are blocked by name like any other plugin."""
    monkeypatch.setenv("LRFINDER_DISABLE_PLUGINS", "lrfinder.torch,lrfinder.tensorboard")
    reset_plugin_manager()
    pm = get_plugin_manager()
    assert pm.get_plugin("lrfinder.torch") is None and pm.get_plugin("lrfinder.tensorboard") is None
    assert not [
        i for i in pm.hook.lrfinder_make_step.get_hookimpls() if i.plugin_name == "lrfinder.torch"
    ]


def test_cli_lists_plugins_with_distribution_version_and_hooks(
    install: InstallFn, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lrfinder plugins`: each plugin, where it comes from, and the hooks it implements."""
    install("demo-dist", "demo", "lrf_demo_plugin", good_plugin("second_point"), version="3.1")
    assert main(["plugins"]) == 0
    printed = capsys.readouterr().out
    assert "demo  (demo-dist 3.1)\n    lrfinder_register_suggesters\n" in printed
    assert "lrfinder.suggest  (lrfinder-plugins " in printed and "built in)" in printed
    assert "lrfinder.torch  (lrfinder-plugins " in printed
    assert "    lrfinder_make_step\n" in printed


def test_cli_shows_blocked_plugins(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A blocked plugin is not listed as registered; the blocked names are printed."""
    monkeypatch.setenv("LRFINDER_DISABLE_PLUGINS", "lrfinder.progress")
    reset_plugin_manager()
    assert main(["plugins"]) == 0
    printed = capsys.readouterr().out
    assert "lrfinder.progress  (" not in printed
    assert "blocked by LRFINDER_DISABLE_PLUGINS: lrfinder.progress" in printed


# -- a failing suggestion method ----------------------------------------------------------------------
def test_plugin_suggester_raising_when_asked_by_name_names_the_plugin(install: InstallFn) -> None:
    """A plugin's method that raises: PluginError naming the plugin, the error as its cause."""
    source = """
        from lrfinder_plugins import hookimpl

        def broken(result):
            raise ZeroDivisionError("suggester bug")

        @hookimpl
        def lrfinder_register_suggesters():
            return {"broken": broken}
    """
    install("broken-dist", "brokensuggester", "lrf_broken_suggester", source)
    with pytest.raises(PluginError, match=r"'broken' of plugin 'brokensuggester'") as caught:
        result_from_losses(sigmoid_curve()).suggestion(method="broken")
    assert caught.value.plugin == "brokensuggester"
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_builtin_method_errors_are_raised_as_they_are() -> None:
    """A built-in method's own error (a bad option) is not wrapped."""
    with pytest.raises(TypeError, match="no_such_option"):
        result_from_losses(sigmoid_curve()).suggestion(method="valley", no_such_option=1)


def test_a_plugin_calling_back_while_loading_fails_clearly() -> None:
    """get_plugin_manager() re-entered while plugins load raises instead of deadlocking."""
    import pytest as _pytest

    from lrfinder_plugins import _manager

    _manager.reset_plugin_manager()
    _manager._building = True
    try:
        with _pytest.raises(RuntimeError, match="while the plugins were being loaded"):
            _manager.get_plugin_manager()
    finally:
        _manager._building = False
        _manager.reset_plugin_manager()
