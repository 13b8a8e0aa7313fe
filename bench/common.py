"""Helpers the benchmark scripts share: a cached random checkpoint, the output folder, tables, plots."""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"     # git-ignored


def checkpoint(folder: Path, preset: str) -> Path:
    """A random FP8 checkpoint of `preset` in `folder`, written once and reused by later runs
    (rebuilt when the preset has changed since)."""
    import json
    import shutil

    from deepseek.model.presets import preset_config

    config = folder / "config.json"
    if config.exists() and json.loads(config.read_text()) != json.loads(json.dumps(preset_config(preset))):
        shutil.rmtree(folder)
    if not config.exists():
        from deepseek.cli.init import init_checkpoint

        init_checkpoint(folder, preset, seed=0)
    return folder


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """`n` prompts of random ordinary token ids (the first ~20 ids are special tokens)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(20, vocab, (n, length), generator=g).tolist()


def _busy_jiffies() -> tuple[int, int]:
    """(all CPUs' non-idle jiffies, this process's user+system jiffies) from /proc."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]          # minus idle and iowait
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])           # utime, stime


@contextlib.contextmanager
def other_load():
    """Yields a dict whose "cores" becomes the mean number of cores OTHER processes kept busy.

    This 2-core machine is shared; above ~0.1 cores, 2-thread timings are unreliable (spec
    ecosystem §1: an OpenMP barrier waits a scheduler quantum for a descheduled thread).
    """
    import os

    hz, out = os.sysconf("SC_CLK_TCK"), {}
    busy0, own0, start = *_busy_jiffies(), time.perf_counter()
    try:
        yield out
    finally:
        busy1, own1 = _busy_jiffies()
        out["cores"] = round(((busy1 - busy0) - (own1 - own0)) / hz / (time.perf_counter() - start), 3)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call.

    With one torch thread the CPU time is the work done, whatever other jobs on the shared cores
    did to the wall time; it is the steadier figure when `other_load` is high.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def code_version() -> str:
    """Which `deepseek` was measured: its folder, and the git commit (+dirty) when it is a checkout."""
    import subprocess

    import deepseek

    src = Path(deepseek.__file__).resolve().parent
    git = ["git", "-C", str(src)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "."], capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(src)
    return f"{src} @ {commit}{' + uncommitted changes' if dirty else ''}"


def emit(name: str, result: dict, header: list[str], rows: list[list]) -> Path:
    """Print the JSON and a markdown table; save the JSON under bench/out/. Returns the JSON path."""
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"code": code_version(), **result}
    path = OUT / f"{name}.json"
    text = json.dumps(result, indent=2)
    path.write_text(text + "\n")
    print(text)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    return path


def save_plot(name: str, draw) -> Path:
    """Render `draw(ax)` with the Agg backend to bench/out/NAME.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    draw(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = OUT / f"{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@contextlib.contextmanager
def timed_parts(targets: list[tuple[object, str, str]]):
    """Wrap `owner.attr` for each (owner, attr, label) with a wall-clock timer for the duration.

    Yields a dict label -> accumulated ms. Instrumentation only: the wrapped functions behave as
    before, and the originals are restored on exit.
    """
    totals: dict[str, float] = defaultdict(float)
    targets = [t for t in targets if hasattr(t[0], t[1])]    # the code under test may have moved on
    saved = [(owner, attr, getattr(owner, attr), attr in vars(owner)) for owner, attr, _ in targets]

    def timer(fn, label):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[label] += 1000 * (time.perf_counter() - start)
        return wrapper

    for (owner, attr, fn, _), (_, _, label) in zip(saved, targets):
        setattr(owner, attr, timer(fn, label))
    try:
        yield totals
    finally:
        for owner, attr, fn, own in saved:
            if own:
                setattr(owner, attr, fn)
            else:
                delattr(owner, attr)      # e.g. a module instance's `forward`: back to the class's
