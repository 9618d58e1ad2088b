"""Memory and CPU stay bounded by what the input really holds: a string
tensor claiming more elements than its bytes can hold is rejected before
anything is sized from the claim, and the state file parser is linear."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastckpt
from fastckpt.directory.state import parse_checkpoint_state


@pytest.mark.deep  # 8 s of measured memory
def test_string_count_claim_costs_no_memory(tmp_path):
    """A 256 MiB sparse data file whose string tensor claims size - 4
    elements: rejected with DataLossError, peak memory far below the
    gigabytes a per-element allocation would take."""
    script = textwrap.dedent(f"""
        import os, resource, numpy as np, fastckpt
        from fastckpt import _core
        prefix = {str(tmp_path / "s")!r}
        size = 256 << 20
        with open(prefix + ".data-00000-of-00001", "wb") as f:
            f.truncate(size)
        entry = _core.encode_entry(7, (size - 4,), 0, 0, size, 0)
        with open(prefix + ".index", "wb") as f:
            f.write(_core.build_table([(b"", _core.encode_header()), (b"x", entry)]))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for call in (lambda: fastckpt.read_bundle(prefix), lambda: fastckpt.CheckpointReader(prefix).get_tensor("x")):
            try:
                call()
                raise SystemExit("accepted")
            except fastckpt.DataLossError as e:
                assert "checksum" in str(e), e
        assert not fastckpt.verify_checkpoint(prefix).ok
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    grew_mib = int(r.stdout.split()[-1])
    # One file-sized buffer at a time: a failed read frees its buffer at once
    # (no reference cycle keeps it until a garbage collection).
    assert grew_mib < 450, f"peak memory grew by {grew_mib} MiB reading a 256 MiB file three times"


def _state_text(n):
    return ('model_checkpoint_path: "ckpt-0"\n' + "".join(f'all_model_checkpoint_paths: "ckpt-{i}"\n'
                                                           for i in range(n))
            + "".join(f"all_model_checkpoint_timestamps: {1.7e9 + i}\n" for i in range(n)))


def _parse_seconds(text):
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        parse_checkpoint_state(text)
        best = min(best, time.perf_counter() - t)
    return best


def test_state_file_parser_is_linear():
    small, large = _state_text(1600), _state_text(16_000)
    ratio = _parse_seconds(large) / _parse_seconds(small)
    assert ratio < 30, f"10x the entries took {ratio:.0f}x the time (quadratic?)"
    assert len(parse_checkpoint_state(large).all_model_checkpoint_paths) == 16_000


def test_state_file_of_16000_entries_in_a_save(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "checkpoint").write_text(_state_text(16_000))
    t = time.perf_counter()
    fastckpt.Saver(max_to_keep=2).save({"w": np.zeros(4)}, str(d / "ckpt"), global_step=1)
    assert time.perf_counter() - t < 10  # generous: a quadratic parse took minutes at this size
    assert [os.path.basename(p) for p in fastckpt.get_checkpoint_state(str(d)).all_model_checkpoint_paths] == \
        ["ckpt-1"]  # none of the listed ones exist: dropped
