"""A checkpoint larger than the memory limit round-trips through an object
store: the state is memory-mapped from a file (read-only maps are page
cache, outside RLIMIT_DATA), saved to the bucket, and restored ``into=``
writable file maps, in a process whose data segment (heap and private
memory: the upload's part buffers, the threads' stacks) may grow by less
than the checkpoint's size. What a save holds beyond the state is its
part pool: ``(parts_in_flight + 1) * part_bytes``."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.no_sanitizer  # ASan reserves terabytes of shadow memory: no RLIMIT_DATA under it

DEEP = os.environ.get("FASTCKPT_DEEP") == "1"

CHILD = textwrap.dedent("""
    import os, resource, sys
    import numpy as np
    import fastckpt
    from fastckpt.storage.s3 import default_s3
    d, url, n, size, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    fastckpt.configure_s3(part_bytes=8 << 20, parts_in_flight=4)
    default_s3().client  # the client and its connection pool made before the limit is measured
    def data_kb():
        return int([l for l in open("/proc/self/status") if l.startswith("VmData")][0].split()[1])
    resource.setrlimit(resource.RLIMIT_DATA, (data_kb() * 1024 + budget, data_kb() * 1024 + budget))
    state = {f"w{i}": np.memmap(os.path.join(d, f"src{i}"), np.uint8, "r", shape=(size,)) for i in range(n)}
    fastckpt.CheckpointManager(url, max_to_keep=1).save(state, 1)
    print("saved, VmData", data_kb(), "kB", flush=True)
    into = {f"w{i}": np.memmap(os.path.join(d, f"dst{i}"), np.uint8, "w+", shape=(size,)) for i in range(n)}
    fastckpt.read_bundle(url, into=into)  # every tensor's CRC32C checked on the way
    for i in range(n):
        assert np.array_equal(into[f"w{i}"][::4099], state[f"w{i}"][::4099]), i
    print("restored, VmData", data_kb(), "kB", flush=True)
""")


@pytest.mark.deep  # 7 s against the S3 server
def test_a_checkpoint_larger_than_the_memory_limit_round_trips(s3_server, s3_dir, tmp_path, progress):
    n, size = (6, 256 << 20) if DEEP else (3, 96 << 20)  # 1.5 GiB deep, 288 MiB by default
    budget = 160 << 20  # less than the checkpoint, by 10x deep; and a state held in memory would not fit
    rng = np.random.default_rng(0)
    for i in range(n):
        with open(tmp_path / f"src{i}", "wb") as f:
            for _ in range(size // (32 << 20)):
                f.write(rng.integers(0, 255, 32 << 20, dtype=np.uint8).tobytes())
    assert n * size > budget
    env = dict(os.environ, **s3_server.env)
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), s3_dir, str(n), str(size), str(budget)],
                       capture_output=True, text=True, env=env, timeout=900)
    progress(r.stdout.strip().replace("\n", "; "))
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "restored" in r.stdout


@pytest.mark.deep
def test_the_same_child_fails_when_the_state_is_held_in_memory(s3_server, s3_dir, tmp_path):
    """The limit is real: the same budget cannot even hold the state copied into memory."""
    code = CHILD.replace('np.memmap(os.path.join(d, f"src{i}"), np.uint8, "r", shape=(size,))',
                         'np.ones(size, np.uint8)')
    env = dict(os.environ, **s3_server.env)
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path), s3_dir, "3", str(96 << 20), str(160 << 20)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "MemoryError" in r.stderr, r.stdout + r.stderr[-2000:]
