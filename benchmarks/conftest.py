"""pytest-benchmark comparisons (run: python3 -m pytest benchmarks/).

Sizes come from the environment so CI-sized and full-sized runs share code:
FASTCKPT_BENCH_SIZE (default 256MiB), FASTCKPT_BENCH_HUGE (default 1GiB).
Compare rows of one group side by side (pytest-benchmark prints them
together); ratios, not absolute times, are what carry between machines.
"""

import os
import shutil

import numpy as np
import pytest

from fastckpt.bench.run import gpt_like_state, parse_size, uniform_state

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def gpt_state():
    return gpt_like_state(parse_size(os.environ.get("FASTCKPT_BENCH_SIZE", "256MiB")), 250)


@pytest.fixture(scope="session")
def small_state():
    """100,000 tensors of 1 KiB."""
    return uniform_state(100_000 * 1024, 100_000)


@pytest.fixture(scope="session")
def huge_state():
    n = parse_size(os.environ.get("FASTCKPT_BENCH_HUGE", "1GiB")) // 4
    return {"huge": np.arange(n, dtype=np.float32)}


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def fresh(workdir, name):
    """A new path for every round, the old one removed outside the timing."""
    counter = [0]

    def setup():
        counter[0] += 1
        d = workdir / f"{name}{counter[0]}"
        shutil.rmtree(workdir / f"{name}{counter[0] - 1}", ignore_errors=True)
        d.mkdir()
        return (str(d / "ckpt"),), {}
    return setup
