"""Systematic kill test: a process running a sequence of saves (a new step
with a retention delete, a re-saved step, a background save, a re-save
through the manager) is SIGKILL-ed at *every* mutating system call in turn
-- each write, truncate, create, rename, link, unlink and fsync, counted by
an LD_PRELOAD shim (tests/helpers/killshim.c). After each kill:

- the latest checkpoint restores bit-exactly to the contents of a save of
  its step (the old or the new contents of a re-saved step), never older
  than the last save that returned;
- every checkpoint the state file lists is intact;
- the next save (here: ``fastckpt.collect_garbage``) leaves no leftover
  file and no unlisted checkpoint behind.
"""

import os
import shutil
import subprocess
import sys

import pytest

import fastckpt
from fastckpt.storage.locking import is_leftover
from tests.helpers.kill_scenario import contents
from tests.helpers.roundtrip import assert_bit_equal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIM = os.path.join(ROOT, "tests", "helpers", "killshim.c")

pytestmark = pytest.mark.no_sanitizer  # runs its own processes and preloads; slow under ASan


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the kill shim")
    out = str(tmp_path_factory.mktemp("shim") / "killshim.so")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", out, SHIM, "-ldl"],
                   check=True)
    return out


def test_the_shim_counts_every_write_entry_point(shim, tmp_path):
    """pwrite (the compressed writer's call), pwrite64, write, writev and
    the pwritev family each count as a kill point."""
    src = tmp_path / "calls.c"
    src.write_text('''
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/uio.h>
#include <unistd.h>
void killshim_arm(long); long killshim_count(void);
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR | O_CREAT, 0644);
    struct iovec v = {"x", 1};
    killshim_arm(0);
    pwrite(fd, "x", 1, 0); pwrite64(fd, "x", 1, 0); write(fd, "x", 1); writev(fd, &v, 1);
    pwritev(fd, &v, 1, 0); pwritev2(fd, &v, 1, 0, 0);
    printf("%ld\\n", killshim_count());
    return 0;
}
''')
    exe = str(tmp_path / "calls")
    subprocess.run([shutil.which("cc") or "gcc", "-O0", "-o", exe, str(src), shim, "-ldl"], check=True)
    r = subprocess.run([exe, str(tmp_path / "f")], capture_output=True, text=True, check=True,
                       env=dict(os.environ, LD_LIBRARY_PATH=os.path.dirname(shim)))
    assert r.stdout.split() == ["6"], r.stdout


def setup_directory(d, durable, delta=False):
    saver = fastckpt.Saver(max_to_keep=2, durable=durable, delta=delta)
    for step in (1, 2):
        saver.save(contents(step, False), str(d / "model"), global_step=step)


def run_child(shim, d, target, log, durable, recycle=False, zstd=False, delta=False):
    env = dict(os.environ, LD_PRELOAD=shim)
    return subprocess.run([sys.executable, "-m", "tests.helpers.kill_scenario", str(d), str(target), str(log),
                           "durable" if durable else "fast"] + (["recycle"] if recycle else [])
                          + (["zstd"] if zstd else []) + (["delta"] if delta else []), env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def committed(log):
    if not os.path.exists(log):
        return None
    lines = open(log).read().split()
    return (int(lines[-2]), bool(int(lines[-1]))) if lines else None


def step_and_contents(d, latest):
    """(step, resaved) of the latest checkpoint, from its data."""
    got = fastckpt.restore(latest)
    for step in (1, 2, 3, 4):
        for resaved in (False, True):
            want = contents(step, resaved)
            if all(got[k].shape == want[k].shape and (got[k] == want[k]).all() for k in want):
                for k in want:
                    assert_bit_equal(got[k], want[k])
                return step, resaved
    raise AssertionError(f"{latest} restores to contents no save wrote")


def check_after_kill(d, log):
    latest = fastckpt.latest_checkpoint(str(d))
    assert latest is not None, "the latest checkpoint was lost"
    got = step_and_contents(d, latest)
    last = committed(log)
    if last is not None:
        assert got >= last, f"latest restores {got}, older than the committed save {last}"
    st = fastckpt.get_checkpoint_state(str(d))
    for p in st.all_model_checkpoint_paths:
        assert fastckpt.verify_checkpoint(p).ok, p
    report = fastckpt.collect_garbage(str(d))  # what the next save does first
    names = os.listdir(d)
    assert not [n for n in names if is_leftover(n)], names
    assert not report.unlisted, f"orphan checkpoints: {report.unlisted}"
    assert step_and_contents(d, fastckpt.latest_checkpoint(str(d))) == got
    return report


VARIANTS = {"durable": (True, False, False, False), "fast": (False, False, False, False),
            "durable-recycling": (True, True, False, False), "fast-recycling": (False, True, False, False),
            "fast-compressed": (False, False, True, False), "durable-delta": (True, False, False, True),
            "fast-delta": (False, False, False, True)}
CHUNK = 12  # kill points per deep-tier test: progress every few seconds
MAX_POINTS = 156  # more than any sequence has (asserted)


@pytest.fixture(scope="module")
def counted(tmp_path_factory, shim):
    """Per variant, made once: the directory the sequence starts from and
    how many mutating calls the sequence makes (run once without a kill)."""
    made = {}

    def get(variant):
        if variant not in made:
            durable, recycle, zstd, delta = VARIANTS[variant]
            root = tmp_path_factory.mktemp(variant)
            base = root / "base"
            base.mkdir()
            setup_directory(base, durable, delta)
            clean = root / "count"
            copy_directory(base, clean)
            r = run_child(shim, clean, 0, root / "count.log", durable, recycle, zstd, delta)
            assert r.returncode == 0, r.stderr
            total = int(r.stdout.split()[-1])
            assert 40 < total <= MAX_POINTS, total
            # both retiring saves rewrote their victims' files (or, without recycling, neither)
            assert r.stdout.split()[-3:-1] == ["recycled", "2" if recycle else "0"], r.stdout
            assert step_and_contents(clean, fastckpt.latest_checkpoint(str(clean))) == (4, True)
            if delta:  # the frozen tensor was never written again: the latest shares the setup's file
                linked = [n for n in os.listdir(clean) if n.startswith("model-4.data-00000-of-")]
                assert linked and os.stat(clean / linked[0]).st_nlink >= 2, sorted(os.listdir(clean))
            made[variant] = (base, total)
        return made[variant]
    return get


def kill_at(points, variant, counted, shim, tmp_path, counts):
    """Kill the sequence at each of ``points`` in turn and check the directory after each."""
    durable, recycle, zstd, delta = VARIANTS[variant]
    base, total = counted(variant)
    killed = finished = pending = 0
    for n in points:
        d = tmp_path / f"k{n}"
        copy_directory(base, d)
        log = tmp_path / f"k{n}.log"
        r = run_child(shim, d, n, log, durable, recycle, zstd, delta)
        if r.returncode == 0:
            finished += 1  # threads made the count differ by a call or two
        else:
            assert r.returncode == -9, (n, r.returncode, r.stderr[-2000:])
            killed += 1
        pending += bool(fastckpt.get_checkpoint_state(str(d)).pending)
        check_after_kill(d, log)
        shutil.rmtree(d)
    assert killed >= len(points) - 3
    for key, value in ((f"kill points in the {variant} save sequence", total),
                       (f"kills survived ({variant})", killed),
                       (f"kills that left a commit pending, finished by recovery ({variant})", pending)):
        counts[key] = value if key.startswith("kill points") else counts.get(key, 0) + value


@pytest.mark.deep
@pytest.mark.parametrize("chunk", range((MAX_POINTS + CHUNK - 1) // CHUNK))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kill_at_every_mutating_syscall(tmp_path, shim, counted, counts, variant, chunk):
    """Every kill point of the sequence, CHUNK at a time."""
    _, total = counted(variant)
    points = range(1 + chunk * CHUNK, min(total, (chunk + 1) * CHUNK) + 1)
    if not points:
        pytest.skip(f"the {variant} sequence has {total} kill points")
    kill_at(points, variant, counted, shim, tmp_path, counts)


def copy_directory(src, dst):
    """A copy of a checkpoint directory that keeps its hard links (a delta
    checkpoint shares files with the one before)."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


@pytest.mark.parametrize("variant", ["durable", "fast-compressed", "durable-delta"])
def test_kill_at_sampled_syscalls(tmp_path, shim, counted, counts, variant):
    """The default tier: every 13th kill point of two sequences, every 29th of the delta one (the deep tier
    kills at all of them)."""
    _, total = counted(variant)
    step = 29 if "delta" in variant else 13
    kill_at(range(1 + len(variant) % step, total + 1, step), variant, counted, shim, tmp_path, counts)
