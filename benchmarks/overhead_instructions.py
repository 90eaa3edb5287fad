"""Per-step overhead as instruction counts: a steadier view than time of what the range test adds.

Wall-clock ratios on a shared VM move by up to 1.7x between two runs of the same loop, which
hides a 3% difference. Instructions move much less (the garbage collector and BLAS threads vary them a little): this runs the 100-step range test
(``benchmarks.overhead.ours``: snapshot and restore included) and the bare loop
(``benchmarks.overhead.bare_loop``) under valgrind's callgrind, each in a process that runs it
``0`` and ``--runs`` times after two warm-up runs, and reports the instructions per run (the
difference of the two processes' totals, so the import and the warm-up cancel) and their ratio.
Instructions are not time (a cache miss costs more than an add), but a Python-level cost shows
in both.

Usage:
    .venv/bin/python -m benchmarks.overhead_instructions [--runs 5] [--widths 16] [--batch 16]
        [--optimizer sgd]

Needs ``valgrind`` on the PATH; each of the four processes takes a few minutes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(which: str, runs: int, width: int, batch: int, optimizer: str) -> None:
    """The measured process: two warm-up runs, then ``runs`` more."""
    import torch

    from benchmarks.overhead import bare_loop, make, ours

    torch.set_num_threads(1)
    model, opt, loader = make(width, batch, optimizer=optimizer)
    fn = ours if which == "ours" else bare_loop
    for _ in range(2 + runs):
        fn(model, opt, loader)


def instructions(which: str, runs: int, args: argparse.Namespace, workdir: Path) -> int:
    """Total instructions callgrind counts for one child process."""
    out = workdir / f"cg.{which}.{runs}"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "benchmarks.overhead_instructions",
        "--child",
        which,
        "--runs",
        str(runs),
        "--widths",
        str(args.widths),
        "--batch",
        str(args.batch),
        "--optimizer",
        args.optimizer,
    ]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
    assert match is not None, f"no summary line in {out}"
    return int(match.group(1))


def main() -> None:
    """Count both contenders' instructions per 100-step run and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--widths", type=int, default=16, help="the MLP's hidden width")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--child", choices=("ours", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.runs, args.widths, args.batch, args.optimizer)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on the PATH; install it (e.g. apt install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        per_run = {}
        for which in ("bare", "ours"):
            base = instructions(which, 0, args, Path(tmp))
            more = instructions(which, args.runs, args, Path(tmp))
            per_run[which] = (more - base) / args.runs
    bare, ours = per_run["bare"], per_run["ours"]
    print(f"MLP 64-{args.widths}-{args.widths}-10, {args.optimizer}, batch {args.batch}")
    print(f"bare loop, 100 steps: {bare / 1e6:.1f} M instructions ({bare / 100 / 1e3:.1f} k/step)")
    print(f"ours (find_lr), 100 steps: {ours / 1e6:.1f} M instructions")
    print(f"ours / bare: {ours / bare:.4f}; ours adds {(ours - bare) / 100 / 1e3:.1f} k/step")


if __name__ == "__main__":
    main()
