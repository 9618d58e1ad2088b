"""Shared fixtures, tier markers and hypothesis profiles.

FASTCKPT_HYPOTHESIS=ci (default; bounded for CI), dev (fast), deep (long).
"""

import os
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # quiet TensorFlow

import pytest
from hypothesis import HealthCheck, settings


settings.register_profile("ci", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile("deep", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FASTCKPT_HYPOTHESIS", "ci"))

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TIERS = ("unit", "format", "api", "robustness", "compat")


def pytest_collection_modifyitems(config, items):
    """Every test is marked with its tier, the folder it lives in
    (``-m unit``, ``-m "format or robustness"``...)."""
    for item in items:
        parts = item.nodeid.split("/")
        if len(parts) > 2 and parts[1] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[1]))


@pytest.fixture
def data_dir():
    """Directory of the golden checkpoints TensorFlow wrote."""
    return DATA


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB tmpfs (needs root; skipped elsewhere) to fill up."""
    d = tmp_path / "tmpfs"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); needs root")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture(scope="session")
def ctx():
    """A forkserver context whose children have numpy, fastckpt and the
    child-process helpers loaded (kill and concurrency tests)."""
    import multiprocessing
    c = multiprocessing.get_context("forkserver")
    c.set_forkserver_preload(["numpy", "fastckpt", "tests.helpers.crash_child"])
    return c


_COUNTS = {}


@pytest.fixture
def counts():
    """Tests record how much they exercised (kills, flips, fuzz runs); the
    totals are printed at the end of the run."""
    return _COUNTS


def pytest_terminal_summary(terminalreporter):
    if _COUNTS:
        terminalreporter.section("fastckpt robustness counts")
        for k, v in sorted(_COUNTS.items()):
            terminalreporter.write_line(f"{k}: {v}")
