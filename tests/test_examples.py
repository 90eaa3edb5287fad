"""The example distributions in examples/, pip-installed and used through discovery alone.

They are installed with pip (offline: ``--no-index --no-deps --no-build-isolation``, built by the
hatchling already installed) into a temporary ``--target`` directory, which the subprocesses put
first on ``PYTHONPATH``: an isolated install that sees this project (installed in the test
environment) and is gone after the run. Nothing is imported from the examples in this process:
every check runs a fresh interpreter, as a user's program would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT = 120


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding lrfinder-logbook and lrfinder-ignite, installed by pip."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(EXAMPLES / "lrfinder-logbook"),
            str(EXAMPLES / "lrfinder-ignite"),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    return target


def run(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run python with the installed examples visible, and extra environment variables."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LRFINDER_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(site), environ.get("PYTHONPATH", "")])
    environ.update(env)
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environ,
        cwd=site,
        check=False,
    )


def python(site: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = run(site, "-c", textwrap.dedent(code), **env)
    assert done.returncode == 0, done.stderr
    return done


PURE_STEP = """
    import json, math
    from lrfinder_plugins import range_test

    class Step:
        '''A training step without any framework: the loss dips, then blows up.'''
        def __init__(self):
            self.lr = 0.0
        def snapshot(self):
            return None
        def restore(self, snapshot):
            pass
        def set_lr(self, lr):
            self.lr = lr
        def run(self):
            return 1.0 + (math.log10(self.lr) + 2.0) ** 2 / 10
"""


def test_lrfinder_plugins_lists_both_examples(site: Path) -> None:
    """`lrfinder plugins` shows each example, its distribution, version and hooks."""
    out = run(site, "-m", "lrfinder_plugins.cli", "plugins").stdout
    assert "logbook  (lrfinder-logbook 0.1.0)\n    lrfinder_register_suggesters\n" in out
    assert "    lrfinder_step_recorded\n" in out
    assert (
        "ignite  (lrfinder-ignite 0.1.0)\n    lrfinder_make_probe\n    lrfinder_make_step\n" in out
    )


def test_disabled_examples_are_not_listed(site: Path) -> None:
    """LRFINDER_DISABLE_PLUGINS blocks installed plugins by their entry-point names."""
    done = run(
        site, "-m", "lrfinder_plugins.cli", "plugins", LRFINDER_DISABLE_PLUGINS="logbook,ignite"
    )
    assert "(lrfinder-logbook" not in done.stdout and "(lrfinder-ignite" not in done.stdout
    assert "blocked by LRFINDER_DISABLE_PLUGINS: ignite, logbook" in done.stdout


def test_installed_suggester_and_observer_work_through_discovery(
    site: Path, tmp_path: Path
) -> None:
    """suggestion(method="halfway") and the CSV/JSON logbook, with nothing imported from them."""
    code = (
        PURE_STEP
        + """
    result = range_test(Step(), start_lr=1e-4, end_lr=1.0, num_iter=40, progress=False)
    print(json.dumps({"halfway": result.suggestion(method="halfway").lr, "points": len(result)}))
    """
    )
    done = python(site, code, LRFINDER_LOGBOOK=str(tmp_path))
    answer = json.loads(done.stdout)
    assert 1e-4 < answer["halfway"] < 1e-2
    csv_file, json_file = sorted(tmp_path.iterdir())
    assert csv_file.suffix == ".csv" and json_file.suffix == ".json"
    assert len(csv_file.read_text().splitlines()) == answer["points"] + 1  # header + one per point
    summary = json.loads(json_file.read_text())
    assert summary["suggestions"]["halfway"] == pytest.approx(answer["halfway"])


def test_failing_installed_observer_costs_nothing(site: Path, tmp_path: Path) -> None:
    """The logbook failing (its directory is a file) is logged by name; the result is returned."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    code = (
        PURE_STEP
        + """
    result = range_test(Step(), start_lr=1e-4, end_lr=1.0, num_iter=10, progress=False)
    print(len(result))
    """
    )
    done = python(site, code, LRFINDER_LOGBOOK=str(blocker / "logs"))
    assert done.stdout.strip() == "10"
    assert "plugin 'logbook' failed in lrfinder_search_started" in done.stderr


def test_failing_installed_suggester_names_its_plugin(site: Path) -> None:
    """A plugin's method raising when asked for by name: PluginError naming the plugin."""
    code = (
        PURE_STEP
        + """
    from lrfinder_plugins import PluginError
    result = range_test(Step(), start_lr=1e-4, end_lr=1.0, num_iter=20, progress=False)
    try:
        result.suggestion(method="halfway", fraction=2.0)
    except PluginError as error:
        print(error.plugin, "|", error, "|", type(error.__cause__).__name__)
    """
    )
    out = python(site, code).stdout
    assert out.startswith("logbook |") and "'halfway'" in out and out.strip().endswith("ValueError")


def test_plugin_that_cannot_be_imported_is_skipped_by_name(site: Path) -> None:
    """An installed plugin whose import fails warns with its name; the other plugins work."""
    code = """
        import sys
        sys.modules["lrfinder_logbook"] = None  # its import now fails, as a missing dependency's
        from lrfinder_plugins import get_plugin_manager
        pm = get_plugin_manager()
        print(pm.get_plugin("logbook") is None, pm.get_plugin("ignite") is not None)
    """
    done = python(site, code)
    assert done.stdout.split() == ["True", "True"]
    assert (
        "PluginLoadWarning: lrfinder plugin 'logbook' (from lrfinder-logbook 0.1.0)" in done.stderr
    )


IGNITE_RUN = """
    import json, random
    import torch
    from ignite.engine import Events, create_supervised_trainer
    from lrfinder_plugins import batch_size_search, range_test

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(256, 4)
    y = x @ torch.randn(4, 1)
    loader = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    trainer = create_supervised_trainer(model, optimizer, torch.nn.functional.mse_loss)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: seen.append(1))
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()

    result = range_test(
        trainer, optimizer=optimizer, model=model, data=loader, num_iter=30, progress=False
    )

    def make_loader(size):
        if size > 40:  # what an accelerator would say
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [(x[:size], y[:size])]

    found = batch_size_search(
        trainer, optimizer=optimizer, model=model, make_loader=make_loader, progress=False
    )
    restored = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    trainer.run(loader, max_epochs=1)  # the trainer still trains normally afterwards
    print(json.dumps({
        "points": len(result),
        "stop": str(result.stop_reason),
        "suggestion": result.suggestion(method="halfway").lr,
        "user_handler_calls": len(seen),
        "batch_size": found.batch_size,
        "largest_tried": max(t.size for t in found.trials),
        "restored": restored,
        "rng_restored": torch.equal(rng, torch.get_rng_state()),
        "lr_after": optimizer.param_groups[0]["lr"],
        "trainer_iterations": trainer.state.iteration,
    }))
"""


def test_ignite_engine_range_test_and_batch_search_through_discovery(site: Path) -> None:
    """An ignite trainer: LR range test and batch-size search, found by entry point alone."""
    answer = json.loads(python(site, IGNITE_RUN).stdout.strip().splitlines()[-1])
    assert answer["points"] >= 10 and answer["stop"] in {"budget", "diverged"}
    assert answer["suggestion"] > 0
    assert answer["batch_size"] is not None and answer["batch_size"] <= 40
    assert answer["largest_tried"] > 40  # it did run out of memory, and recovered
    assert answer["restored"] and answer["rng_restored"] and answer["lr_after"] == 0.01
    assert answer["trainer_iterations"] == 8  # a fresh run of one epoch, not a resumed test
    # the trainer's own handlers ran on every range-test and batch-trial iteration, then 8 more
    assert answer["user_handler_calls"] > answer["points"] + 8
