"""100,000 tensors of 1 KiB restored into new arrays: fastckpt (copy-on-write
maps, and copied) against TensorFlow's reader (``tf.train.load_checkpoint``
+ ``get_tensor`` for every name), interleaved rounds, min and median, the
ratios from the minima. Also what fastckpt's restore spends on creating the
100,000 array objects alone.

    python3 benchmarks/many_small_tensors.py [rounds] [tensors]
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

import fastckpt
from fastckpt.bench.peers import quiet
from fastckpt.bench.run import table, uniform_state
from fastckpt.bench.settle import settle


def main(rounds: int = 5, count: int = 100_000) -> dict:
    state = uniform_state(count * 1024, count)
    work = tempfile.mkdtemp(prefix="fastckpt-small-")
    try:
        fc = os.path.join(work, "fc", "ckpt")
        fastckpt.write_bundle(fc, state)
        cases = {
            "fastckpt restore (copy-on-write maps)": lambda: fastckpt.read_bundle(fc),
            "fastckpt restore (copied)": lambda: fastckpt.read_bundle(fc, copy_on_write=False),
            "numpy: create the arrays alone (views)": lambda: _views(state),
        }
        try:
            with quiet():
                import tensorflow as tf
            tfp = os.path.join(work, "tf", "ckpt")
            names = list(state)
            with quiet():
                tf.raw_ops.SaveV2(prefix=tfp, tensor_names=names, shape_and_slices=[""] * len(names),
                                  tensors=[state[n] for n in names])

            def tf_read() -> list:
                with quiet():
                    r = tf.train.load_checkpoint(tfp)
                    return [r.get_tensor(n) for n in names]
            cases["TensorFlow load_checkpoint"] = tf_read
        except ImportError:
            pass
        times = {k: [] for k in cases}
        for fn in cases.values():  # warm-up
            fn()
        for r in range(rounds):
            order = list(cases)[r % len(cases):] + list(cases)[:r % len(cases)]
            for k in order:
                settle(sync=False)
                t0 = time.perf_counter()
                kept = cases[k]()
                times[k].append(time.perf_counter() - t0)
                del kept
        mine = times["fastckpt restore (copy-on-write maps)"]
        rows = []
        for k, v in times.items():
            rows.append((k, {"min_s": min(v), "median_s": statistics.median(v), "max_s": max(v),
                             "gb_per_s": count * 1024 / min(v) / 1e9, "vs_raw": None,
                             "fastckpt_speedup": min(v) / min(mine)}))
        print(f"{count:,} tensors of 1 KiB, {rounds} interleaved rounds")
        table(rows, print)
        out = {k: {"min_s": min(v), "median_s": statistics.median(v)} for k, v in times.items()}
        if "TensorFlow load_checkpoint" in times:
            tf_t = times["TensorFlow load_checkpoint"]
            print(f"fastckpt vs TensorFlow's reader: {min(tf_t) / min(mine):.1f}x (min), "
                  f"{statistics.median(tf_t) / statistics.median(mine):.1f}x (median)")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _views(state: dict) -> list:
    """As many arrays as the state has tensors, each a view of one buffer."""
    n = len(state)
    buf = np.empty(n * 256, np.float32)
    return [buf[i * 256:(i + 1) * 256] for i in range(n)]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, int(sys.argv[2]) if len(sys.argv) > 2 else 100_000)
