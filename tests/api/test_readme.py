"""The README's Python examples run as written (in order, in one namespace,
in a scratch directory), so the documentation cannot drift from the code."""

import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def python_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    assert len(blocks) >= 4
    ns = {
        # what the snippets leave to the reader
        "tensors": {"w": np.ones(3, np.float32)},
        "total_steps": 250,  # saves at steps 1, 101 and 201 (interval 100)
        "loss": 0.5,
    }

    def train_step(state):
        for v in state.values():
            v += 1
    ns["train_step"] = train_step
    ran = 0
    for code in blocks:
        if "import tensorflow" in code:
            pytest.importorskip("tensorflow")
        if "mgr = fastckpt.CheckpointManager" in code:
            ns["state"] = {"w": np.zeros(4)}
        exec(compile(code, "README.md", "exec"), ns)
        ran += 1
    assert ran == len(blocks)
    assert os.path.exists(tmp_path / "my_model" / "my-model-1000.index")
    assert ns["mgr"].latest_checkpoint.endswith("ckpt-201")
    assert [os.path.basename(p) for p in ns["mgr"].checkpoints] == ["ckpt-1", "ckpt-101", "ckpt-201"]
