"""A training checkpoint's model weights exported for Hugging Face: a real
transformers GPT-2 (tied embedding and head) trained a step with AdamW,
saved through CheckpointManager with its optimizer, exported by the command
line (``convert --only model --strip-prefix model/``, one file and sharded
with the index file), and loaded by ``from_pretrained`` with identical
weights and logits. In a child process: transformers and its threads stay
out of the test process."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
    pytest.skip("transformers and torch are not installed", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = """
import json, os, subprocess, sys
import torch, fastckpt
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging
logging.set_verbosity_error()
logging.disable_progress_bar()
base = sys.argv[1]
torch.manual_seed(0)
config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=101, n_positions=16, bos_token_id=0, eos_token_id=0)
model = GPT2LMHeadModel(config)
assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(0, 101, (2, 16))
model(ids, labels=ids).loss.backward()
opt.step()
mgr = fastckpt.CheckpointManager(os.path.join(base, "run"), max_to_keep=2)
mgr.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "lr": 1e-3}, 1)
model.eval()
for shards in (1, 3):
    out = os.path.join(base, f"hf{shards}")
    os.makedirs(out)
    r = subprocess.run([sys.executable, "-m", "fastckpt", "convert", os.path.join(base, "run"),
                        os.path.join(out, "model.safetensors"), "--only", "model", "--strip-prefix", "model/",
                        "--num-shards", str(shards)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    written = sorted(os.listdir(out))
    config.save_pretrained(out)
    loaded = GPT2LMHeadModel.from_pretrained(out)
    loaded.eval()
    sd, ld = model.state_dict(), loaded.state_dict()
    assert sorted(sd) == sorted(ld), set(sd) ^ set(ld)
    assert all(torch.equal(sd[k], ld[k]) for k in sd)
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    print(shards, written)
"""


@pytest.mark.deep  # a transformers process: 8 s (the default tier keeps its 6-minute budget)
def test_a_training_checkpoints_model_loads_with_from_pretrained(tmp_path):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "1 ['model.safetensors']"
    assert lines[1] == ("3 ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', "
                        "'model-00003-of-00003.safetensors', 'model.safetensors.index.json']")


KILLED = """
import os, sys
import torch, fastckpt
from transformers import GPT2Config, GPT2LMHeadModel
base = sys.argv[1]
torch.manual_seed(0)
config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=101, n_positions=16, bos_token_id=0, eos_token_id=0)
config.save_pretrained(os.path.join(base, "config"))
model = GPT2LMHeadModel(config)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
mgr = fastckpt.CheckpointManager(os.path.join(base, "run"), max_to_keep=3)
ids = torch.randint(0, 101, (2, 16))
for step in (1, 2, 3):
    model(ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    torch.save(model.state_dict(), os.path.join(base, f"ref{step}.pt"))
    future = mgr.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, step, blocking=False)
    if step < 3:
        future.result()
os.kill(os.getpid(), 9)  # during step 3's background save
"""

EXPORT = """
import os, subprocess, sys
import torch, fastckpt
from transformers import GPT2LMHeadModel
from transformers.utils import logging
logging.set_verbosity_error()
logging.disable_progress_bar()
base = sys.argv[1]
latest = fastckpt.get_checkpoint_state(os.path.join(base, "run")).model_checkpoint_path
step = int(latest.rsplit("-", 1)[1])
out = os.path.join(base, "hf")
r = subprocess.run([sys.executable, "-m", "fastckpt", "convert", os.path.join(base, "run"),
                    os.path.join(out, "model.safetensors"), "--only", "model", "--strip-prefix", "model/"],
                   capture_output=True, text=True)
assert r.returncode == 0, r.stderr
for name in ("config.json",):
    os.replace(os.path.join(base, "config", name), os.path.join(out, name))
loaded = GPT2LMHeadModel.from_pretrained(out).state_dict()
ref = torch.load(os.path.join(base, f"ref{step}.pt"))
assert sorted(ref) == sorted(loaded)
assert all(torch.equal(ref[k], loaded[k]) for k in ref)
print("exported step", step)
"""


@pytest.mark.deep  # three processes importing transformers: ~20 s
def test_a_trainer_killed_during_a_save_exports_its_last_committed_step(tmp_path):
    """The trainer is SIGKILLed while its third save is written in the
    background; the export of the run directory is the latest committed
    step's model, exactly, as from_pretrained loads it."""
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED), str(tmp_path)], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert killed.returncode == -9, killed.stderr[-3000:]
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(EXPORT), str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    assert out.stdout.split()[-1] in ("2", "3"), out.stdout
