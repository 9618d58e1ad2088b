"""fastckpt convert beside the way users convert today (load everything
with the format's library, write everything) and beside a raw file copy,
measured side by side in one run, rounds interleaved, medians quoted.

    python benchmarks/convert_throughput.py [--size 1GiB] [--rounds 5]

Each case runs in a fresh subprocess; its peak anonymous memory (RssAnon,
sampled every 2 ms: heap and private pages, not the page cache behind
mapped files) is reported beside its time."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

CASE = r"""
import json, os, shutil, sys, threading, time
import numpy as np
kind, src, dst = sys.argv[1:4]
peak = [0]
def sample():  # the process's own memory (RssAnon: heap and private pages, not the page cache)
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon"):
                peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
time.sleep(0.01)
import fastckpt
from fastckpt.formats.convert import convert
import safetensors.numpy as stn
t = time.perf_counter()
if kind == "fastckpt tf->safetensors" or kind == "fastckpt safetensors->tf" or kind == "fastckpt tf->npz":
    convert(src, dst)
elif kind == "library tf->safetensors":       # what a script does today: load all, save all
    stn.save_file(fastckpt.read_bundle(src), dst)
elif kind == "library safetensors->tf":
    fastckpt.write_bundle(dst, stn.load_file(src))
elif kind == "library tf->npz":
    np.savez(dst, **fastckpt.read_bundle(src))
elif kind == "raw copy":
    shutil.copyfile(src + ".data-00000-of-00001", dst)
seconds = time.perf_counter() - t
time.sleep(0.01)
print(json.dumps({"seconds": seconds, "anon_mib": peak[0] // 1024}))
"""

CASES = [("raw copy", "tf", "copy.bin"),
         ("fastckpt tf->safetensors", "tf", "a.safetensors"), ("library tf->safetensors", "tf", "b.safetensors"),
         ("fastckpt safetensors->tf", "st", "c"), ("library safetensors->tf", "st", "d"),
         ("fastckpt tf->npz", "tf", "e.npz"), ("library tf->npz", "tf", "f.npz")]


def main() -> None:
    from fastckpt.bench.run import gpt_like_state, parse_size
    import fastckpt

    p = argparse.ArgumentParser()
    p.add_argument("--size", default="1GiB")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir", default=None)
    args = p.parse_args()
    size = parse_size(args.size)
    work = tempfile.mkdtemp(dir=args.dir, prefix="fcconvbench-")
    try:
        state = gpt_like_state(size, 250)
        fastckpt.write_bundle(os.path.join(work, "src"), state)
        fastckpt.convert(os.path.join(work, "src"), os.path.join(work, "src.safetensors"))
        del state
        sources = {"tf": os.path.join(work, "src"), "st": os.path.join(work, "src.safetensors")}
        times = {name: [] for name, _, _ in CASES}
        peaks = {name: [] for name, _, _ in CASES}
        for r in range(args.rounds):
            for name, src, dst in CASES[r % len(CASES):] + CASES[:r % len(CASES)]:
                out = os.path.join(work, dst)
                got = subprocess.run([sys.executable, "-c", CASE, name, sources[src], out], capture_output=True,
                                     text=True, check=True)
                doc = json.loads(got.stdout.strip().splitlines()[-1])
                times[name].append(doc["seconds"])
                peaks[name].append(doc["anon_mib"])
                for f in os.listdir(work):
                    if f.startswith(dst):
                        os.unlink(os.path.join(work, f))
        raw = statistics.median(times["raw copy"])
        print(f"{size / 2**30:.2f} GiB GPT-like float32 state, 250 tensors, {args.rounds} rounds (medians), "
              f"page cache warm")
        print(f"{'case':<28} {'GB/s':>6} {'x raw copy':>10} {'peak anon MiB':>13}")
        for name, _, _ in CASES:
            m = statistics.median(times[name])
            print(f"{name:<28} {size / m / 1e9:6.2f} {raw / m:10.2f} {max(peaks[name]):13d}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
