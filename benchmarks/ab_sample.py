"""One sample for ab_compare.py: the fastckpt on PYTHONPATH saves and
restores one workload three times and prints the best time of each case
as JSON. Usage: python benchmarks/ab_sample.py small|nested|big"""
import json, os, sys, time, tempfile, shutil
import numpy as np
import fastckpt
kind = sys.argv[1]
d = tempfile.mkdtemp(dir="/tmp")
if kind == "small":
    state = {f"t{i:06d}": np.full(256, i, np.float32) for i in range(100_000)}
elif kind == "big":
    state = {f"layer{i}/w": np.random.default_rng(i).standard_normal(1 << 20).astype(np.float32) for i in range(256)}
else:  # nested: 10,000 small tensors in a tree, plus a string and Python scalars
    state = {"layers": [{"w": np.full((16, 16), i, np.float32), "b": np.zeros(16, np.float32)} for i in range(5000)],
             "step": 7, "tag": np.array([b"run-1"], dtype=object)}
out = {}
into = {k: np.empty_like(v) for k, v in state.items()} if kind != "nested" else {}
durable = kind == "big"
saver = fastckpt.Saver(max_to_keep=2, durable=False)
mgr = fastckpt.CheckpointManager(os.path.join(d, "mgr"), max_to_keep=2, durable=False)
for r in range(3):
    t = time.perf_counter(); mgr.save(state, r); out.setdefault("manager save", []).append(time.perf_counter() - t)
    t = time.perf_counter(); p = saver.save(state, os.path.join(d, "m"), global_step=r); out.setdefault("save", []).append(time.perf_counter() - t)
    if durable:
        t = time.perf_counter(); fastckpt.Saver(max_to_keep=2, durable=True).save(state, os.path.join(d, "dur"), global_step=r); out.setdefault("durable save", []).append(time.perf_counter() - t)
    t = time.perf_counter(); fastckpt.restore(p); out.setdefault("restore", []).append(time.perf_counter() - t)
    if kind != "nested":
        t = time.perf_counter(); fastckpt.read_bundle(p, into=into); out.setdefault("restore into=", []).append(time.perf_counter() - t)
shutil.rmtree(d)
print(json.dumps({k: min(v) for k, v in out.items()}))
