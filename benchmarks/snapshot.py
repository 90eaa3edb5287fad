"""Saving and restoring the training state: ours (memory, disk) against torch-lr-finder and Lightning.

A search must put the model and optimizer back exactly. This measures, on a model of about 100M
parameters with its AdamW state (1.2 GB of float32: weights and two moments; gradients set to
``None`` first, as none of the peers saves them), what each way of doing it costs:

- ``ours, memory``: ``lrfinder_adapters.state.capture(model, optimizer)`` (a CPU copy of every
  tensor) and ``restore`` (copied back into the live tensors in place).
- ``ours, disk``: the same with ``where="disk"``: each tensor's bytes streamed to one file from
  its own memory, and read back into the live tensors in place.
- ``torch-lr-finder, memory`` / ``disk``: its ``StateCacher`` as ``LRFinder`` uses it: store
  ``model.state_dict()`` and ``optimizer.state_dict()`` (a ``deepcopy``, or ``torch.save`` to a
  file), then ``load_state_dict`` of what ``retrieve`` gives back (``torch.load`` for disk).
- ``Lightning``: what ``Tuner.lr_find`` does around its sweep: ``TorchCheckpointIO`` (the
  Trainer's default checkpoint IO) ``save_checkpoint`` of ``{"state_dict": ...,
  "optimizer_states": [...]}`` to a file, then ``load_checkpoint`` and the two
  ``load_state_dict`` calls (``_checkpoint_connector.restore``'s work, without a Trainer).

Each contender runs in a fresh process (so one's memory cannot lower another's peak), which
builds the model, takes one AdamW step, keeps a copy of the weights, imports every contender's
module (imports are not timed), then times ``save`` and
``restore`` separately with ``time.perf_counter()`` and reads the kernel's peak resident size
around each (``VmHWM``, reset through ``/proc/self/clear_refs`` just before: the extra memory
each one needs above what the process already held). The restore is checked bitwise against
the checksum (the weights are overwritten between save and restore). Files go to ``--dir`` (a
real disk here; page cache is not counted as the process's memory). Contenders alternate, the
first one rotating each repeat; the table shows medians.

Usage (Linux):
    .venv/bin/python -m benchmarks.snapshot --repeat 3 --dir /var/tmp --json /tmp/snapshot.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONTENDERS = (
    "ours, memory",
    "ours, disk",
    "torch-lr-finder, memory",
    "torch-lr-finder, disk",
    "Lightning",
)


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def run_one(name: str, width: int, layers: int, directory: str) -> dict[str, Any]:
    """One contender in this (fresh) process: its save and restore seconds and peak extra bytes."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, width)).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    params = sum(p.numel() for p in model.parameters())
    tensors = [*model.parameters()] + [
        v for s in optimizer.state.values() for v in s.values() if v.dim()
    ]
    state_bytes = sum(t.numel() * t.element_size() for t in tensors)
    expected = [t.detach().clone() for t in tensors[: layers * 2]]  # the weights and biases

    work = tempfile.mkdtemp(dir=directory, prefix="lrfinder-bench-")
    # Imported before the clock starts: what is timed is the save and the restore alone.
    import lightning.fabric.plugins.io.torch_io  # noqa: F401
    import torch_lr_finder.lr_finder  # noqa: F401

    import lrfinder_adapters.state  # noqa: F401

    base = _reset_peak()
    start = time.perf_counter()
    saved = save(name, model, optimizer, work)
    save_s = time.perf_counter() - start
    save_extra = _status("VmHWM") - base
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # what a search's steps would have done
    base = _reset_peak()
    start = time.perf_counter()
    restore(name, saved, model, optimizer)
    restore_s = time.perf_counter() - start
    restore_extra = _status("VmHWM") - base
    exact = all(torch.equal(a, b) for a, b in zip(expected, model.parameters()))
    files = sum(f.stat().st_size for f in Path(work).rglob("*") if f.is_file())
    cleanup(name, saved)
    for f in sorted(Path(work).rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    Path(work).rmdir()
    return {
        "contender": name,
        "params": params,
        "state_bytes": state_bytes,
        "save_s": save_s,
        "restore_s": restore_s,
        "save_extra_bytes": save_extra,
        "restore_extra_bytes": restore_extra,
        "file_bytes": files,
        "exact": exact,
    }


def save(name: str, model: Any, optimizer: Any, work: str) -> Any:
    if name.startswith("ours"):
        from lrfinder_adapters.state import capture

        if name == "ours, disk":
            os.environ["TMPDIR"] = work  # the snapshot's temp directory goes on --dir
            tempfile.tempdir = None
        return capture(model, optimizer, where="disk" if name.endswith("disk") else "cpu")
    if name.startswith("torch-lr-finder"):
        from torch_lr_finder.lr_finder import StateCacher

        cacher = StateCacher(in_memory=name.endswith("memory"), cache_dir=work)
        cacher.store("model", model.state_dict())
        cacher.store("optimizer", optimizer.state_dict())
        return cacher
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    path = Path(work) / "lr_find.ckpt"
    checkpoint = {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    TorchCheckpointIO().save_checkpoint(checkpoint, path)
    return path


def restore(name: str, saved: Any, model: Any, optimizer: Any) -> None:
    if name.startswith("ours"):
        from lrfinder_adapters.state import restore as ours_restore

        ours_restore(saved, model, optimizer)
    elif name.startswith("torch-lr-finder"):
        model.load_state_dict(saved.retrieve("model"))
        optimizer.load_state_dict(saved.retrieve("optimizer"))
    else:
        from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

        checkpoint = TorchCheckpointIO().load_checkpoint(saved)
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer_states"][0])


def cleanup(name: str, saved: Any) -> None:
    if name.startswith("ours"):
        saved.close()
    elif name == "torch-lr-finder, disk":
        for fn in saved.cached.values():
            os.remove(fn)
        saved.cached.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=6, help="6 x 4096^2: 100.7M parameters")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where files are written")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.width, args.layers, args.dir)))
        return
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    for repeat in range(args.repeat):
        shift = repeat % len(CONTENDERS)
        for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
            child = [sys.executable, "-m", "benchmarks.snapshot", "--one", name]
            child += ["--width", str(args.width), "--layers", str(args.layers), "--dir", args.dir]
            done = subprocess.run(child, capture_output=True, text=True, check=True, timeout=900)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    first = runs[CONTENDERS[0]][0]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; model: {args.layers} x Linear({args.width}, "
        f"{args.width}), {first['params'] / 1e6:.1f}M parameters + AdamW state = "
        f"{first['state_bytes'] / 2**30:.2f} GiB; files in {args.dir}; {args.repeat} repeats, "
        "medians; each contender in a fresh process"
    )
    head = ["contender", "save s", "restore s", "save peak extra", "restore peak extra", "file"]
    print(" | ".join(head) + " | exact")

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    gib = 2**30
    for name in CONTENDERS:
        state = first["state_bytes"]
        print(
            f"{name} | {med(name, 'save_s'):.2f} | {med(name, 'restore_s'):.2f} | "
            f"{med(name, 'save_extra_bytes') / gib:.3f} GiB "
            f"({med(name, 'save_extra_bytes') / state:.2f}x) | "
            f"{med(name, 'restore_extra_bytes') / gib:.3f} GiB "
            f"({med(name, 'restore_extra_bytes') / state:.2f}x) | "
            f"{med(name, 'file_bytes') / gib:.2f} GiB | {all(r['exact'] for r in runs[name])}"
        )
    for peer in ("Lightning", "torch-lr-finder, disk"):
        print(
            f"ours, disk restore vs {peer}'s: "
            f"{med(peer, 'restore_s') / med('ours, disk', 'restore_s'):.2f}x faster"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
