"""Shards, the collective save and the resharded restore in one process
(ranks as threads, tests.helpers.thread_comm), and region reads
(get_slice, read_region) with and without checksums."""

import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastckpt
from fastckpt import Shard
from fastckpt.collective import merge_trees, plan_layout
from tests.helpers.thread_comm import run_ranks


def cuts(n, parts):
    """``parts`` (start, length) pieces of ``n``, as even as possible."""
    base, extra = divmod(n, parts)
    out, at = [], 0
    for i in range(parts):
        size = base + (i < extra)
        out.append((at, size))
        at += size
    return out


def part_of(g, rank, size, dim):
    """Rank's Shard of ``g`` cut along ``dim`` (0, 1, or 2 for a 2-D grid)."""
    if dim == 2:
        a = 2 if size % 2 == 0 else 1
        i, j = divmod(rank, size // a)
        (r0, rn), (c0, cn) = cuts(g.shape[0], a)[i], cuts(g.shape[1], size // a)[j]
    elif dim == 0:
        (r0, rn), (c0, cn) = cuts(g.shape[0], size)[rank], (0, g.shape[1])
    else:
        (r0, rn), (c0, cn) = (0, g.shape[0]), cuts(g.shape[1], size)[rank]
    return Shard(g[r0:r0 + rn, c0:c0 + cn].copy(), g.shape, (r0, c0))


def test_shard_is_checked():
    with pytest.raises(fastckpt.InvalidArgumentError, match="exceeds"):
        Shard(np.zeros((3, 2)), (4, 2), (2, 0))
    with pytest.raises(fastckpt.InvalidArgumentError, match="same rank"):
        Shard(np.zeros((3, 2)), (4, 2), (0,))
    with pytest.raises(fastckpt.InvalidArgumentError, match="non-negative"):
        Shard(np.zeros(3), (4,), (-1,))
    assert Shard(np.zeros((4, 2)), (8, 2), (4, 0)).extents() == [(4, 4), (0, -1)]


def test_one_process_saving_a_part_that_does_not_tile_is_refused(tmp_path):
    g = np.arange(12.0).reshape(4, 3)
    with pytest.raises(fastckpt.InvalidArgumentError, match="tile it exactly"):
        fastckpt.save({"w": Shard(g[:2], (4, 3), (0, 0))}, str(tmp_path / "c"))
    assert not os.listdir(tmp_path)
    p = fastckpt.save({"w": Shard(g, (4, 3), (0, 0)), "n": 3}, str(tmp_path / "c"))  # the whole tensor: one part
    back = fastckpt.restore(p)
    assert back["w"].tolist() == g.tolist() and back["n"] == 3


@pytest.mark.parametrize("descs,match", [
    ([{"a": ("whole", "float32", (2,), 8)}, {"a": ("whole", "float64", (2,), 16)}], "replica 'a' differs"),
    ([{"a": ("whole", "float32", (2,), 8)}, {"a": ("part", "float32", (4,), (2,), (2,))}], "whole array on some"),
    ([{"a": ("part", "float32", (4,), (0,), (3,))}, {"a": ("part", "float32", (4,), (2,), (2,))}], "overlap"),
    ([{"a": ("part", "float32", (4,), (0,), (1,))}, {"a": ("part", "float32", (4,), (2,), (2,))}], "cover 3 of its 4"),
    ([{"a": ("part", "float32", (4,), (0,), (2,))}, {"a": ("part", "int32", (4,), (2,), (2,))}], "global shape"),
])
def test_layout_refuses_disagreeing_processes(descs, match):
    with pytest.raises(fastckpt.InvalidArgumentError, match=match):
        plan_layout(descs)


def test_layout_spreads_replicas_over_their_holders():
    descs = [{f"r{i}": ("whole", "float32", (100,), 400) for i in range(8)} for _ in range(4)]
    owners = plan_layout(descs).owners
    assert sorted(owners.values()) == [0, 0, 1, 1, 2, 2, 3, 3]
    only_two = [{"x": ("whole", "int8", (1,), 1)}, {}, {"x": ("whole", "int8", (1,), 1)}]
    assert plan_layout(only_two).owners == {"x": 0}


def test_trees_of_different_processes_are_united():
    a = {"dict": [["model", {"dict": [["l0", {"leaf": "model/l0"}]]}], ["step", {"value": 3}]]}
    b = {"dict": [["model", {"dict": [["l1", {"leaf": "model/l1"}]]}], ["step", {"value": 3}]]}
    assert merge_trees([a, b]) == {"dict": [["model", {"dict": [["l0", {"leaf": "model/l0"}], ["l1", {"leaf": "model/l1"}]]}],
                                            ["step", {"value": 3}]]}


def test_pipeline_stages_hold_different_tensors(tmp_path):
    """Each rank holds other layers (pipeline parallelism): one checkpoint with all of them."""
    prefix = str(tmp_path / "c")
    out = run_ranks(3, lambda comm: fastckpt.save({"layers": {f"l{comm.rank}": np.full(4, comm.rank)}, "step": 5},
                                                  prefix, comm=comm))
    assert out == [prefix] * 3
    back = fastckpt.restore(prefix)
    assert {k: v.tolist() for k, v in back["layers"].items()} == {"l0": [0] * 4, "l1": [1] * 4, "l2": [2] * 4}
    assert back["step"] == 5


@settings(deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 7), n=st.integers(1, 4), m=st.integers(1, 4),
       saved=st.sampled_from([0, 1, 2]), wanted=st.sampled_from([0, 1, 2]),
       dtype=st.sampled_from(["float32", "bfloat16", "int64", "bool"]))
def test_property_any_slicing_restores_onto_any_other(tmp_path_factory, rows, cols, n, m, saved, wanted, dtype):
    d = tmp_path_factory.mktemp("r")
    g = (np.arange(rows * cols) % 7).reshape(rows, cols).astype(getattr(ml_dtypes, dtype, dtype))
    prefix = str(d / "c")
    saves = run_ranks(n, lambda comm: fastckpt.save({"g": part_of(g, comm.rank, n, saved), "rep": np.ones(3)},
                                                    prefix, comm=comm))
    assert saves == [prefix] * n, saves
    assert fastckpt.restore(prefix)["g"].tobytes() == g.tobytes()

    def restore(comm):
        want = part_of(g, comm.rank, m, wanted)
        into = {"g": Shard(np.zeros_like(want.local), g.shape, want.offset), "rep": np.zeros(3)}
        back = fastckpt.restore(prefix, into=into, comm=comm)
        assert back["g"] is into["g"] and into["rep"].tolist() == [1, 1, 1]
        return into["g"].local.tobytes() == want.local.tobytes()
    assert run_ranks(m, restore) == [True] * m


def test_a_failure_on_one_rank_raises_on_all_and_writes_nothing(tmp_path):
    prefix = str(tmp_path / "c")

    def save(comm):
        state = {"w": part_of(np.zeros((4, 4)), comm.rank, 2, 0)}
        if comm.rank == 1:
            state["bad"] = {1, 2}
        return fastckpt.save(state, prefix, comm=comm)
    errors = run_ranks(2, save)
    assert isinstance(errors[1], fastckpt.InvalidArgumentError) and "set" in str(errors[1])
    assert isinstance(errors[0], fastckpt.CheckpointError) and "rank 1" in str(errors[0])
    assert os.listdir(tmp_path) == []


def test_manager_and_saver_with_a_communicator(tmp_path):
    g = np.arange(20.0).reshape(4, 5)

    def job(comm):
        mgr = fastckpt.CheckpointManager(tmp_path / "m", max_to_keep=2, comm=comm)
        for step in (1, 2, 3):
            mgr.save({"w": part_of(g + step, comm.rank, 2, 1)}, step)
        saver = fastckpt.Saver(comm=comm)
        saver.save({"w": part_of(g, comm.rank, 2, 0)}, str(tmp_path / "s" / "model"), global_step=9)
        into = {"w": Shard(np.zeros((2, 5)), (4, 5), (2 * comm.rank, 0))}  # rows now, columns when saved
        mgr.restore_or_initialize(into)
        return mgr.checkpoints, into["w"].local.tolist()
    out = run_ranks(2, job)
    for rank, got in enumerate(out):
        assert not isinstance(got, BaseException), got
        ckpts, local = got
        assert [os.path.basename(p) for p in ckpts] == ["ckpt-2", "ckpt-3"]
        assert local == (g + 3)[2 * rank:2 * rank + 2].tolist()
    assert fastckpt.latest_checkpoint(tmp_path / "s").endswith("model-9")


# ---- region reads ------------------------------------------------------------------------------

def test_get_slice_and_read_region_on_whole_and_partitioned_tensors(tmp_path):
    g = np.arange(60, dtype=np.float32).reshape(6, 10)
    whole = fastckpt.save({"g": g}, str(tmp_path / "whole"))
    parted = str(tmp_path / "parted")
    run_ranks(3, lambda comm: fastckpt.save({"g": part_of(g, comm.rank, 3, 1)}, parted, comm=comm))
    for prefix in (whole, parted):
        with fastckpt.load_checkpoint(prefix) as r:
            s = r.get_slice("g")
            assert s.shape == (6, 10) and s.dtype == np.float32
            assert s[2:4, 3:9].tolist() == g[2:4, 3:9].tolist()
            assert s[-1].tolist() == g[-1].tolist() and s[1, 2].tolist() == g[1, 2]
            assert s[:, 9].tolist() == g[:, 9].tolist() and s[5:2].shape == (0, 10)
            for verify in (True, False):
                assert r.read_region("g", (1, 4), (3, 5), verify=verify).tolist() == g[1:4, 4:9].tolist()
            with pytest.raises(fastckpt.InvalidArgumentError, match="outside"):
                r.read_region("g", (5, 0), (2, 1))
            with pytest.raises(fastckpt.InvalidArgumentError, match="step"):
                s[::2]
            with pytest.raises(fastckpt.TensorNotFoundError):
                r.get_slice("nope")


def test_region_reads_check_what_they_read_whole_and_read_only_the_runs_without(tmp_path):
    """Damage outside the region: checked reads refuse the entry (its CRC
    covers it whole), unchecked ones read only the region's bytes and succeed;
    restore's default is the checked one."""
    g = np.arange(1000, dtype=np.float64).reshape(100, 10)
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"g": g})
    with open(p + ".data-00000-of-00001", "r+b") as f:
        f.seek(99 * 80)  # the last row
        f.write(b"\xff" * 8)
    with fastckpt.load_checkpoint(p) as r:
        assert r.read_region("g", (0, 0), (10, 10), verify=False).tolist() == g[:10].tolist()
        with pytest.raises(fastckpt.DataLossError, match="checksum"):
            r.read_region("g", (0, 0), (10, 10))
    with pytest.raises(fastckpt.DataLossError):
        fastckpt.restore(p, into={"g": Shard(np.zeros((10, 10)), (100, 10), (0, 0))})


def test_restore_fills_a_torch_shard_in_place(tmp_path):
    torch = pytest.importorskip("torch")
    g = torch.arange(24, dtype=torch.bfloat16).reshape(4, 6)
    p = fastckpt.save({"w": g}, str(tmp_path / "c"))
    local = torch.zeros(4, 3, dtype=torch.bfloat16)
    ptr = local.data_ptr()
    fastckpt.restore(p, into={"w": Shard(local, (4, 6), (0, 3))})
    assert local.data_ptr() == ptr and torch.equal(local, g[:, 3:])


def test_a_failed_write_on_one_rank_raises_on_all_and_leaves_no_file(tmp_path):
    prefix = str(tmp_path / "c")
    fastckpt.save({"w": np.zeros(2)}, str(tmp_path / "before"))

    def save(comm):
        state = {"w": part_of(np.ones((4, 4)), comm.rank, 3, 0)}
        if comm.rank == 2:  # passes the description, fails in the write: strings that are not strings
            state["s"] = np.array([1, 2], dtype=object)
        return fastckpt.save(state, prefix, comm=comm)
    out = run_ranks(3, save)
    assert isinstance(out[2], fastckpt.InvalidArgumentError), out
    assert all(isinstance(e, fastckpt.CheckpointError) and "rank 2" in str(e) for e in out[:2]), out
    assert sorted(os.listdir(tmp_path)) == ["before.data-00000-of-00001", "before.index"]


def test_the_sharding_it_was_saved_with_reads_each_part_once_checked(tmp_path):
    """Restored with the sharding it was saved with, each rank reads exactly
    its stored part (one batch), into contiguous and non-contiguous locals;
    a damaged part fails its rank and, through the agreement, every rank."""
    g = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    prefix = str(tmp_path / "c")
    run_ranks(2, lambda comm: fastckpt.save({"w": part_of(g, comm.rank, 2, 0), "v": part_of(g, comm.rank, 2, 1)},
                                            prefix, comm=comm))

    def restore(comm):
        w = np.zeros((4, 6), np.float32)
        v = np.zeros((3, 8), np.float32).T  # a non-contiguous local: filled through a copy
        into = {"w": Shard(w, g.shape, (4 * comm.rank, 0)), "v": Shard(v, g.shape, (0, 3 * comm.rank))}
        fastckpt.restore(prefix, into=into, comm=comm)
        return w.tolist() == g[4 * comm.rank:4 * comm.rank + 4].tolist() and \
            v.tolist() == g[:, 3 * comm.rank:3 * comm.rank + 3].tolist()
    assert run_ranks(2, restore) == [True, True]
    reader = fastckpt.load_checkpoint(prefix)
    rank1 = [e for k, e in reader.entries() if k.startswith(b"\x00w") or (k[:1] == b"\x00" and b"w" in k)]
    assert rank1  # the slice entries of w
    entry = max(rank1, key=lambda e: e.offset)
    data = reader.files.path(entry.shard)
    reader.close()
    with open(data, "r+b") as f:  # damage the later slice of w
        f.seek(entry.offset + 4)
        b = f.read(1)
        f.seek(entry.offset + 4)
        f.write(bytes([b[0] ^ 1]))
    errors = run_ranks(2, restore)
    assert all(isinstance(e, fastckpt.CheckpointError) for e in errors), errors
    assert any(isinstance(e, fastckpt.DataLossError) for e in errors), errors
