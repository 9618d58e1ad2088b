"""The README's Python examples run as written (in order, in one namespace,
in a scratch directory), so the documentation cannot drift from the code."""

import os
import re
import types

import numpy as np
import pytest

from fastckpt.collective import LocalCommunicator

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

    ran = 0
    training = None
    for code in blocks:
        if "import tensorflow" in code:
            pytest.importorskip("tensorflow")
        if "from mpi4py import MPI" in code:  # run on one process, through fastckpt's own one-process communicator
            code = code.replace("from mpi4py import MPI", "pass")
            ns.update(MPI=types.SimpleNamespace(COMM_WORLD=LocalCommunicator()), emb_part=np.random.rand(1024, 64),
                      bias=np.zeros(64))
        elif "mgr = fastckpt.CheckpointManager" in code:
            torch = pytest.importorskip("torch")
            ns.update(torch_loop(torch))
        exec(compile(code, "README.md", "exec"), ns)
        if "mgr = fastckpt.CheckpointManager" in code and "comm=" not in code:
            training = ns["mgr"]
        ran += 1
    assert ran == len(blocks)
    assert os.path.exists(tmp_path / "my_model" / "my-model-1000.index")
    assert training.latest_checkpoint.endswith("ckpt-250")  # the final forced save
    assert [os.path.basename(p) for p in training.checkpoints] == ["ckpt-101", "ckpt-201", "ckpt-250"]
    sharded = ns["mgr"]
    assert sharded.restored_step == 100 and ns["restored"]["emb"] is ns["state"]["emb"]
    # run the loop's code again, as a restarted job would: it resumes from step 250
    loop = next(c for c in blocks if "mgr = fastckpt.CheckpointManager" in c)
    again = {k: v for k, v in ns.items() if k not in ("state", "step", "restored", "mgr")}
    again.update(torch_loop(torch))
    exec(compile(loop, "README.md", "exec"), again)
    assert again["restored"]["step"] == 250 and again["mgr"].restored_step == 250
    assert all(torch.equal(a, b) for a, b in zip(ns["model"].parameters(), again["model"].parameters()))


def torch_loop(torch):
    """The model, optimizer and train_step the training-loop snippet uses."""
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def train_step(model, opt):
        loss = model(torch.ones(2, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return {"model": model, "opt": opt, "train_step": train_step}
