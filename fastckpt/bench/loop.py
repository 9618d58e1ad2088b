"""``fastckpt bench --loop K``: a training loop's saves -- K saves into one
directory with ``max_to_keep=3`` -- with and without recycling, beside the
raw limits of writing a new file and of overwriting a cached one of the
same size, durable and not, measured side by side in one run (the four
cases interleaved, their order rotating every round; medians quoted)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from fastckpt.bench.settle import settle
from fastckpt.bench.run import figures, fresh_memory_for_every_case, gpt_like_state, machine, nbytes, table
from fastckpt.errors import InvalidArgumentError
from fastckpt.manager import CheckpointManager

__all__ = ["run_loop_bench"]

KEEP = 3


def _write(fd: int, state: Dict[str, np.ndarray]) -> None:
    for v in state.values():
        view = memoryview(np.ascontiguousarray(v).reshape(-1).view(np.uint8).data)
        while view:
            view = view[os.write(fd, view):]


def _raw_loop(work: str, state: Dict[str, np.ndarray], saves: int, durable: bool, overwrite: bool) -> List[float]:
    """Per-write seconds of ``saves`` raw writes of the state, as a loop with
    retention would do them: new files (the one ``KEEP`` back deleted), or
    the one ``KEEP`` back overwritten in place (a cached file of that size)."""
    d = os.path.join(work, "raw-overwrite" if overwrite else "raw-new")
    os.makedirs(d)
    times = []
    for i in range(saves):
        old = os.path.join(d, f"f{i - KEEP}")
        path = os.path.join(d, f"f{i}")
        if overwrite and os.path.exists(old):
            os.rename(old, path)
        t = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            _write(fd, state)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if not overwrite and os.path.exists(old):
            os.unlink(old)
        times.append(time.perf_counter() - t)
    shutil.rmtree(d)
    return times


def _save_loop(work: str, state: Dict[str, np.ndarray], saves: int, durable: bool, recycle: bool) -> List[float]:
    """Per-save seconds of ``saves`` CheckpointManager saves (max_to_keep=3)."""
    d = os.path.join(work, "recycle" if recycle else "new")
    mgr = CheckpointManager(d, max_to_keep=KEEP, durable=durable, recycle=recycle)
    times = []
    for step in range(saves):
        t = time.perf_counter()
        mgr.save(state, step)
        times.append(time.perf_counter() - t)
    shutil.rmtree(d)
    return times


def run_loop_bench(saves: int = 8, size: int = 1 << 30, tensors: int = 250, dtype: str = "float32", rounds: int = 3,
                   directory: Optional[str] = None, out: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the loop benchmark and print the table; returns the medians."""
    if saves <= KEEP:
        raise InvalidArgumentError(f"--loop K needs K > {KEEP} saves (max_to_keep={KEEP}: the first {KEEP} retire "
                                   "nothing)")
    state = gpt_like_state(size, tensors, dtype)
    total = nbytes(state)
    note = fresh_memory_for_every_case()
    work = tempfile.mkdtemp(prefix="fastckpt-loop-", dir=directory)
    cases: Dict[str, Callable[[bool], List[float]]] = {
        "raw write, new file": lambda durable: _raw_loop(work, state, saves, durable, False),
        "raw overwrite, cached file": lambda durable: _raw_loop(work, state, saves, durable, True),
        "save, new files": lambda durable: _save_loop(work, state, saves, durable, False),
        "save, recycled (recycle=True)": lambda durable: _save_loop(work, state, saves, durable, True),
    }
    # steady state: the saves after the first KEEP, each of which retires (or overwrites) one
    results: Dict[str, Any] = {}
    try:
        for durable in (False, True):
            steady: Dict[str, List[float]] = {name: [] for name in cases}
            names = list(cases)
            for r in range(rounds + 1):  # round 0 warms up (imports, first touches, directory creation)
                for name in names[r % len(names):] + names[:r % len(names)]:
                    settle(sync=False)
                    times = cases[name](durable)
                    if r:
                        steady[name].extend(times[KEEP:])
            raw = steady["raw write, new file"]
            mine = steady["save, new files"]
            results["durable" if durable else "non-durable"] = {n: figures(t, total, raw, mine)
                                                                for n, t in steady.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _report(results, total, saves, rounds, note, out)
    return results


def _report(results: Dict[str, Dict[str, Dict[str, Any]]], total: int, saves: int, rounds: int,
            note: Optional[str], out: Callable[[str], None]) -> None:
    out(f"fastckpt bench --loop {saves}: {total / 2**30:.2f} GiB per save, max_to_keep={KEEP}, {saves} saves per "
        f"loop, {rounds} rounds; each save after the first {KEEP} (each retires one checkpoint) is one sample")
    out(f"machine: {machine()}")
    out("")
    rows: List[Tuple[str, Optional[Dict[str, Any]]]] = []
    for mode, group in results.items():
        rows.append((mode, None))
        rows += list(group.items())
    table(rows, out)
    out("")
    out("vs raw: the new-file raw write's time / the case's (minima); fastckpt ×: the new-files save against "
        "that row.")
    if note:
        out(f"  note: {note}")
