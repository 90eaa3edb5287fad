"""The ``lrfinder`` command line and the README's promises about it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lrfinder_plugins import BatchSizeResult, RangeTestResult
from lrfinder_plugins.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Run the real console script once: the demo as a new user runs it."""
    out = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lrfinder_plugins.cli",
            "demo",
            "--output-dir",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout, out


def test_demo_prints_the_seed_lines(demo_output: tuple[str, Path]) -> None:
    """The demo prints the range, the stop reason, the suggestion and the seed's update line."""
    stdout, _ = demo_output
    assert "tested range: 1.00e-07 → 1.00e+01" in stdout
    assert re.search(r"stopped: (budget|diverged|non_finite)", stdout)
    suggested = re.search(r"Suggested learning rate: (\S+)", stdout)
    assert suggested is not None
    assert f"Updated optimizer LR: 1.00e-03 → {suggested.group(1)}" in stdout
    assert "OneCycleLR(optimizer, max_lr=" in stdout


def test_demo_finds_the_batch_size_first(demo_output: tuple[str, Path]) -> None:
    """The demo runs the batch-size search first, then the LR test at the size it found."""
    stdout, _ = demo_output
    found = re.search(r"Optimal batch size found: (\d+)", stdout)
    assert found is not None
    assert stdout.index("Optimal batch size found") < stdout.index("LR range test at batch size")
    assert f"LR range test at batch size {found.group(1)} " in stdout
    assert re.search(r"batch size \d+ after \d+ trials \(\d+ out of memory\)", stdout)


def test_demo_with_a_batch_size_skips_the_search(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--batch-size N runs the LR test at N without a batch-size search."""
    assert (
        main(
            [
                "demo",
                "--batch-size",
                "32",
                "--no-progress",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Optimal batch size" not in printed
    assert "LR range test at batch size 32 " in printed


def test_demo_writes_plot_and_json(demo_output: tuple[str, Path]) -> None:
    """The demo saves a PNG and a JSON result that loads back."""
    _, out = demo_output
    png = out / "lr_finder_plot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = RangeTestResult.load_json(out / "lr_finder.json")
    assert len(result) >= 10


def test_demo_reports_the_knee_noise_scale_and_recommendation(
    demo_output: tuple[str, Path],
) -> None:
    """The demo prints the throughput knee, B_simple and the recommendation, saves the
    batch-size result (with them) and the plot of throughput and B_simple against the size."""
    stdout, out = demo_output
    assert re.search(r"throughput \(samples/s\): .*; knee at \d+", stdout)
    assert re.search(r"noise scale: B_simple ≈ [0-9.e+]+ \(95% interval", stdout)
    assert re.search(r"recommended: \d+", stdout) and "LR: scale with the square root" in stdout
    saved = BatchSizeResult.load_json(out / "batch_size.json")
    assert saved.noise_scale is not None and saved.knee is not None
    data = json.loads((out / "batch_size.json").read_text())
    assert data["recommendation"]["batch_size"] == saved.recommendation.batch_size  # type: ignore[union-attr]
    assert (out / "batch_size_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_prints_every_method(
    demo_output: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`lrfinder show` lists each registered method's suggestion and can re-plot."""
    _, out = demo_output
    assert main(["show", str(out / "lr_finder.json"), "--plot", str(out / "again.png")]) == 0
    printed = capsys.readouterr().out
    for method in ("valley", "steepest", "minimum", "lightning", "torch_lr_finder"):
        assert method in printed
    assert (out / "again.png").stat().st_size > 0


def test_show_reads_csv(demo_output: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """`lrfinder show` reads a CSV written by save_csv too."""
    _, out = demo_output
    RangeTestResult.load_json(out / "lr_finder.json").save_csv(out / "r.csv")
    assert main(["show", str(out / "r.csv")]) == 0
    assert "points, stopped" in capsys.readouterr().out


def test_plugins_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    """`lrfinder plugins` lists the built-in plugins with their hooks."""
    assert main(["plugins"]) == 0
    printed = capsys.readouterr().out
    assert "lrfinder.progress" in printed
    assert "lrfinder_step_recorded" in printed


def test_demo_paths_are_overridable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--plot and --json choose where the demo writes."""
    plot, saved = tmp_path / "p" / "x.png", tmp_path / "j" / "x.json"
    code = main(
        ["demo", "--plot", str(plot), "--json", str(saved), "--num-iter", "20", "--no-progress"]
    )
    assert code == 0
    assert plot.exists()
    assert json.loads(saved.read_text())["options"]["num_iter"] == 20


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run calls exactly the test command the README shows."""
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command in (ROOT / "README.md").read_text()


def test_readme_starts_with_demo_and_test_commands() -> None:
    """The README's first two code blocks set up and run the demo, then the tests."""
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks[0].endswith("lrfinder demo")
    assert "pytest" in blocks[1]
    assert all(".venv" in block for block in blocks[:2])


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """``lrfinder --help`` reads as plain text: no reST markup from a docstring."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out and "learning rate" in out


@pytest.mark.filterwarnings("ignore::UserWarning")  # a 20-point curve: low confidence is fine
def test_the_demo_runs_on_its_thread_count_and_puts_the_callers_back(tmp_path: Path) -> None:
    import torch

    from lrfinder_plugins.demo import run_demo

    before = torch.get_num_threads()
    seen: list[int] = []
    original = torch.nn.Module.__call__

    def spy(self: torch.nn.Module, *args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    torch.nn.Module.__call__ = spy  # type: ignore[method-assign]
    try:
        run_demo(output_dir=tmp_path, num_iter=20, batch_size=8, progress=False, threads=1)
    finally:
        torch.nn.Module.__call__ = original  # type: ignore[method-assign]
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before
