"""A conversion's memory is bounded by the largest tensor, not the
checkpoint: a 2 GiB checkpoint goes through every format, compressed and
plain, in a process whose data segment (RLIMIT_DATA: heap and private
memory, not the page cache behind read-only maps) is limited to 512 MiB,
a quarter of it. Without streaming, the first conversion already fails."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastckpt
from fastckpt.bundle.lazy import LazyTensor

pytestmark = [pytest.mark.no_sanitizer,  # ASan reserves terabytes of shadow memory: no RLIMIT_DATA under it
              pytest.mark.deep]  # 2 GiB through every format

TENSORS, ELEMENTS = 32, 16 << 20  # 32 x 64 MiB of float32
LIMIT = 512 << 20


def _pattern(i):
    x = np.arange(ELEMENTS, dtype=np.float32)
    x %= 4093
    x *= i % 8 + 1  # within float16's range, for the cast
    return x


def _big_checkpoint(prefix):
    """Written tensor by tensor (LazyTensor): the test's own process never holds it either."""
    lazy = {f"layer{i:02d}/w": LazyTensor(np.dtype(np.float32), (ELEMENTS,), (lambda i=i: _pattern(i)))
            for i in range(TENSORS)}
    fastckpt.write_bundle(prefix, lazy)


CHILD = textwrap.dedent("""
    import os, resource, sys
    resource.setrlimit(resource.RLIMIT_DATA, ({limit}, {limit}))
    import numpy as np
    import fastckpt
    from fastckpt.formats.convert import convert
    d, steps = sys.argv[1], sys.argv[2].split(";")
    src = os.path.join(d, "big")
    def check(b):
        r = fastckpt.diff(src, os.path.join(d, b))  # compared in pieces, under the same limit
        if b.startswith("half"):  # cast: every tensor float16, within float16's rounding
            assert all(t.status == "dtype" and t.max_rel <= 2 ** -11 for t in r.tensors.values()), b
        else:
            assert r.equal, (b, [(n, t.status) for n, t in r.tensors.items() if t.status != "identical"])
    def step(a, b, **kw):
        convert(os.path.join(d, a), os.path.join(d, b), **kw)
        data = [l for l in open("/proc/self/status") if l.startswith("VmData")]
        print("converted", a, "->", b, "VmData", data[0].split()[1], "kB", flush=True)
        check(b)
        if not any('"' + b + '"' in later.split(",")[0] for later in steps[steps.index(current) + 1:]):
            for f in os.listdir(d):  # disk space: only what later steps read is kept
                if f.startswith(b):
                    os.unlink(os.path.join(d, f))
    for current in steps:
        eval(current)
    print("ok", flush=True)
""")

STEPS = [
    'step("big", "m.safetensors")',                            # mapped -> streamed
    'step("m.safetensors", "sharded", num_shards=3)',          # mapped -> TF bundle, 3 data files
    'step("sharded", "m.npz")',                                 # mapped -> npz
    'step("m.npz", "zstd", compression="zstd")',                # mapped -> compressed (written whole)
    'step("zstd", "plain")',                                    # decoded one at a time
    'step("zstd", "z.safetensors")',                            # decoded one at a time
    'step("zstd", "half.safetensors", dtype="float16")',        # cast one at a time
]
TORCH_STEPS = [
    'step("big", "m.pt")',                                      # mapped -> torch.save of shared views
    'step("m.pt", "from_torch")',                               # torch.load(mmap) -> bundle
    'step("zstd", "z.pt")',                                     # decoded -> a temporary plain bundle -> torch
]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """One 2 GiB checkpoint for both tests, removed afterwards (disk space)."""
    import shutil
    d = tmp_path_factory.mktemp("bounded")
    _big_checkpoint(str(d / "big"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _run(tmp_path, steps, say=lambda line: None):
    """Run the steps in the limited child; its progress lines are passed to ``say`` as they come."""
    with open(os.path.join(str(tmp_path), "child.err"), "w+") as err:  # a file: a full pipe would block the child
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(limit=LIMIT), str(tmp_path), ";".join(steps)],
                                 stdout=subprocess.PIPE, stderr=err, text=True, cwd=os.getcwd())
        out = []
        assert child.stdout is not None
        for line in child.stdout:
            out.append(line)
            say(line.rstrip())
        child.wait(timeout=1800)
        err.seek(0)
        return subprocess.CompletedProcess(child.args, child.returncode, "".join(out), err.read())


def test_a_checkpoint_four_times_the_memory_limit_converts_through_every_format(big, progress):
    tmp_path = big
    assert os.path.getsize(tmp_path / "big.data-00000-of-00001") == TENSORS * ELEMENTS * 4 == 4 * LIMIT
    steps = list(STEPS)
    try:
        import torch  # noqa: F401
        steps += TORCH_STEPS
    except ImportError:
        pass
    r = _run(tmp_path, steps, progress)
    assert r.returncode == 0 and r.stdout.endswith("ok\n"), r.stdout + r.stderr
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".fc")]  # no temporaries left


def test_the_limit_is_real(big):
    """The same child, reading the checkpoint whole, fails: the bound is
    not an accident of a generous limit."""
    r = _run(big, ['fastckpt.read_bundle(src)'])
    assert r.returncode != 0 and "MemoryError" in r.stderr, r.stdout + r.stderr
