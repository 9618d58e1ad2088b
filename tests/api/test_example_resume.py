"""examples/resume_training.py (numpy) and examples/resume_torch.py (PyTorch,
Adam, a scheduler, dropout) are killed (SIGKILL) mid-run and restarted; the
loss curve and final parameters equal those of an uninterrupted run with the
same seed, bit for bit."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.no_sanitizer  # runs its own processes; slow under ASan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "resume_training.py")
TORCH_EXAMPLE = os.path.join(ROOT, "examples", "resume_torch.py")


STEPS = 3000


def run(d, log, steps=STEPS, every=50, example=EXAMPLE):
    return subprocess.Popen([sys.executable, example, "--dir", str(d), "--steps", str(steps),
                             "--every", str(every), "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def losses(log):
    out = {}
    for line in open(log):
        step, loss = line.split()
        out.setdefault(int(step), float(loss))  # first time each step ran
    return out


@pytest.mark.parametrize("example,steps,every,kill_points", [
    (EXAMPLE, STEPS, 50, (400, 1234, 2222)),
    pytest.param(TORCH_EXAMPLE, 600, 20, (150, 333, 481), marks=pytest.mark.deep),  # 21 s: deep tier
], ids=["numpy", "torch"])
def test_killed_and_restarted_run_matches_uninterrupted(tmp_path, example, steps, every, kill_points):
    if example == TORCH_EXAMPLE:
        pytest.importorskip("torch")
    ref = run(tmp_path / "ref", tmp_path / "ref.log", steps, every, example)
    ref_out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    reference = json.loads(ref_out.strip().splitlines()[-1])

    d, log = tmp_path / "run", tmp_path / "run.log"
    kills = 0
    for kill_after in kill_points:  # kill once the run has logged this many steps
        p = run(d, log, steps, every, example)
        while p.poll() is None and (not log.exists() or sum(1 for _ in open(log)) < kill_after):
            time.sleep(0.002)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate()
    p = run(d, log, steps, every, example)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    final = json.loads(out.strip().splitlines()[-1])
    assert final == reference, (final, reference)
    # same loss curve: every step's loss is the uninterrupted run's, bit for bit
    assert losses(log) == losses(tmp_path / "ref.log")
    assert kills >= 1
