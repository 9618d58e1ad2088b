"""Delta saves: tensors unchanged since the previous checkpoint are not
written again (the new checkpoint shares its data file by a hard link), and
every checkpoint stays a complete, standard bundle."""

import errno
import itertools
import os
import random

import numpy as np
import pytest

import fastckpt
from fastckpt import _core
from fastckpt.bundle import delta as delta_module
from tests.helpers.roundtrip import assert_bit_equal


def lora_state(seed=0, frozen=8, n=50_000):
    rng = np.random.default_rng(seed)
    state = {f"base/layer{i}/kernel": rng.standard_normal(n).astype(np.float32) for i in range(frozen)}
    state["adapter/a"] = rng.standard_normal(500).astype(np.float32)
    state["adapter/b"] = np.zeros(500, np.float32)
    return state


def wchar():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def data_files(prefix):
    d, base = os.path.dirname(prefix), os.path.basename(prefix)
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.startswith(base + ".data-"))


def inodes(prefix):
    return {os.stat(f).st_ino for f in data_files(prefix)}


def assert_restores(prefix, state):
    got = fastckpt.restore(prefix)
    assert set(got) == set(state)
    for k, v in state.items():
        assert_bit_equal(np.asarray(got[k]), np.asarray(v))
    assert fastckpt.verify_checkpoint(prefix).ok


def test_unchanged_tensors_are_not_written_again(tmp_path):
    state = lora_state()
    saver = fastckpt.Saver(max_to_keep=3, delta=True)
    first = saver.save(state, str(tmp_path / "m"), global_step=1)
    kept = {k: v.copy() for k, v in state.items()}
    state["adapter/a"] += 1
    state["adapter/b"] += 1
    before = wchar()
    second = saver.save(state, str(tmp_path / "m"), global_step=2)
    written = wchar() - before
    frozen_bytes = sum(v.nbytes for k, v in state.items() if k.startswith("base/"))
    assert written < 64 * 1024 < frozen_bytes // 10, written  # the adapters, the record, the index, the state file
    assert inodes(first) & inodes(second), "the frozen tensors' file is shared, not copied"
    assert_restores(second, state)
    assert_restores(first, kept)


def test_a_delta_chain_with_random_changes_and_retention_restores_every_step(tmp_path):
    rng = random.Random(5)
    state = lora_state(n=20_000)
    names = sorted(state)
    saver = fastckpt.Saver(max_to_keep=3, delta=True)
    saved = {}
    for step in range(20):
        for name in rng.sample(names, rng.choice([0, 1, 2, 3, len(names)])):
            state[name] = state[name] + np.float32(rng.random())
        prefix = saver.save(state, str(tmp_path / "m"), global_step=step)
        saved[prefix] = {k: v.copy() for k, v in state.items()}
        assert_restores(prefix, state)
        for listed in saver.last_checkpoints:  # every checkpoint retention kept is intact
            assert_restores(listed, saved[listed])
    assert len(saver.last_checkpoints) == 3
    assert any(len(data_files(p)) > 1 for p in saver.last_checkpoints)  # (files were shared)
    assert len(os.listdir(tmp_path)) <= 3 * (1 + 1 + delta_module.MAX_LINKED) + 2


@pytest.mark.parametrize("doomed", [(0,), (1, 2), (0, 2, 4), (3, 4, 5), (0, 1, 2, 3, 4)])
def test_deleting_any_checkpoints_never_breaks_the_others(tmp_path, doomed):
    state = lora_state(n=20_000)
    saver = fastckpt.Saver(max_to_keep=None, delta=True)
    saved = []
    for step in range(6):
        state[f"base/layer{step % 8}/kernel"] = state[f"base/layer{step % 8}/kernel"] * 2
        state["adapter/a"] = state["adapter/a"] + 1
        saved.append((saver.save(state, str(tmp_path / "m"), global_step=step), {k: v.copy() for k, v in state.items()}))
    assert all(inodes(saved[i][0]) & inodes(saved[i - 1][0]) for i in range(1, 6))  # each shares with the one before
    for i in doomed:  # as `rm` or any tool would: the files go
        for f in data_files(saved[i][0]) + [saved[i][0] + ".index"]:
            os.unlink(f)
    for i, (prefix, want) in enumerate(saved):
        if i not in doomed:
            assert_restores(prefix, want)


def test_only_the_changed_part_is_written_when_a_frozen_tensor_starts_changing(tmp_path):
    """A tensor that changed is written again next time without being
    checksummed first; once it settles it is found unchanged and shared."""
    state = lora_state(n=20_000)
    saver = fastckpt.Saver(max_to_keep=None, delta=True)
    p = [saver.save(state, str(tmp_path / "m"), global_step=0)]
    state["base/layer3/kernel"] = state["base/layer3/kernel"] + 1  # changes once, then stays
    for step in range(1, 5):
        p.append(saver.save(state, str(tmp_path / "m"), global_step=step))
        assert_restores(p[-1], state)
    biggest = max(data_files(p[-1]), key=os.path.getsize)
    assert os.path.getsize(biggest) >= 7 * 20_000 * 4
    assert os.stat(biggest).st_ino in inodes(p[0])  # still the first save's file
    assert len(data_files(p[-1])) <= 3


def test_everything_changing_gives_one_new_file(tmp_path):
    state = lora_state(n=10_000)
    saver = fastckpt.Saver(max_to_keep=2, delta=True)
    first = saver.save(state, str(tmp_path / "m"), global_step=0)
    state = {k: v + 1 for k, v in state.items()}
    second = saver.save(state, str(tmp_path / "m"), global_step=1)
    assert len(data_files(second)) == 1 and not inodes(first) & inodes(second)
    assert_restores(second, state)


def test_frozen_names_are_reused_without_reading_them(tmp_path):
    """``frozen=`` is the caller's word: the tensor is not even read -- so a
    value changed against that word is not saved (this shows it is not read)."""
    state = lora_state(n=20_000)
    saver = fastckpt.Saver(max_to_keep=None, delta=True, frozen=["base"])
    saver.save(state, str(tmp_path / "m"), global_step=0)
    honest = {k: v.copy() for k, v in state.items()}
    state["adapter/a"] = state["adapter/a"] + 1
    honest["adapter/a"] = state["adapter/a"]
    state["base/layer0/kernel"][:] = 42  # breaks the promise
    second = saver.save(state, str(tmp_path / "m"), global_step=1)
    assert_restores(second, honest)
    # a frozen tensor whose last write had no digest (it had just changed) is reused all the same
    state["base/layer1/kernel"] = state["base/layer1/kernel"] + 1
    honest["base/layer1/kernel"] = state["base/layer1/kernel"]
    fastckpt.Saver(max_to_keep=None, delta=True).save(state, str(tmp_path / "m"), global_step=2)
    third = fastckpt.Saver(max_to_keep=None, delta=True, frozen=["base/layer1"]).save(state, str(tmp_path / "m"),
                                                                                      global_step=3)
    assert inodes(third) & inodes(str(tmp_path / "m-2"))
    assert_restores(third, {**honest, "base/layer0/kernel": state["base/layer0/kernel"]})
    assert delta_module.is_frozen("base/layer0/kernel", frozenset(["base"]))
    assert not delta_module.is_frozen("basement/x", frozenset(["base"]))


def test_nested_torch_training_state_with_tied_weights(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(3000, 64), torch.nn.Linear(64, 64),
                                torch.nn.Linear(64, 3000, bias=False))
    model[2].weight = model[0].weight
    for p in model[0].parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    mgr = fastckpt.CheckpointManager(str(tmp_path), max_to_keep=2, delta=True)
    for step in range(3):
        model(torch.tensor([[1, 2, 3]])).sum().backward()
        opt.step()
        mgr.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, step, metadata={"lr": 0.1})
    back = fastckpt.restore(mgr.latest_checkpoint)
    assert back["step"] == 2 and fastckpt.read_meta(mgr.latest_checkpoint)["metadata"] == {"lr": 0.1}
    assert back["model"]["0.weight"] is back["model"]["2.weight"]
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v)
    prefix = mgr.latest_checkpoint
    shared = inodes(prefix) & inodes(mgr.checkpoints[0])
    assert shared  # the frozen embedding (tied to the head) is shared, written once
    assert sum(os.path.getsize(f) for f in data_files(prefix) if os.stat(f).st_ino not in shared) < 64 * 64 * 4 * 3


def test_plain_save_uses_the_directory_state_file(tmp_path):
    state = lora_state(n=20_000)
    fastckpt.Saver(delta=True).save(state, str(tmp_path / "m"), global_step=0)
    state["adapter/a"] = state["adapter/a"] - 1
    p = fastckpt.save(state, str(tmp_path / "m-1"), delta=True)
    assert inodes(p) & inodes(str(tmp_path / "m-0"))
    assert_restores(p, state)
    alone = fastckpt.save(state, str(tmp_path / "other" / "x"), delta=True)  # no state file there: a full save
    assert_restores(alone, state)


def test_other_kinds_of_tensors_and_changed_shapes(tmp_path):
    state = {"s": np.array([b"a", b"bc"], dtype=object), "e": np.zeros((0, 4), np.float32),
             "t": np.arange(12, dtype=np.int64).reshape(3, 4), "f": np.asfortranarray(np.ones((30, 30))),
             "scalar": np.float64(3.5), "big": np.arange(300_000, dtype=np.float32)}
    saver = fastckpt.Saver(max_to_keep=None, delta=True)
    saver.save(state, str(tmp_path / "m"), global_step=0)
    state["t"] = state["t"].reshape(4, 3)  # same bytes, another shape: written
    state["big"] = state["big"].astype(np.float64)[:200_000].astype(np.float32)  # another size
    p = saver.save(state, str(tmp_path / "m"), global_step=1)
    got = fastckpt.restore(p)
    assert got["t"].shape == (4, 3) and got["big"].shape == (200_000,)
    for k, v in state.items():
        assert_bit_equal(np.asarray(got[k]), np.asarray(v))


def damage(kind, prefix):
    data = data_files(prefix)[0]
    if kind == "truncated data":
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
    elif kind == "flipped byte":
        with open(data, "r+b") as f:
            f.seek(100)
            b = f.read(1)
            f.seek(100)
            f.write(bytes([b[0] ^ 0x40]))
    elif kind == "corrupt index":
        with open(prefix + ".index", "r+b") as f:
            f.seek(10)
            f.write(b"\xff\xff\xff")
    elif kind == "missing data":
        os.unlink(data)
    elif kind == "no delta record":
        fastckpt.Saver(max_to_keep=None).save(lora_state(), prefix[:prefix.rindex("-")], global_step=0)


@pytest.mark.parametrize("kind", ["truncated data", "flipped byte", "corrupt index", "missing data",
                                  "no delta record"])
def test_a_damaged_previous_checkpoint_gives_a_full_correct_save(tmp_path, kind):
    state = lora_state()
    saver = fastckpt.Saver(max_to_keep=None, delta=True)
    first = saver.save(state, str(tmp_path / "m"), global_step=0)
    damage(kind, first)
    state["adapter/a"] = state["adapter/a"] + 1
    second = saver.save(state, str(tmp_path / "m"), global_step=1)
    assert_restores(second, state)
    assert len(data_files(second)) == 1 and os.stat(data_files(second)[0]).st_nlink == 1  # nothing shared


def test_hard_links_refused_by_the_file_system_give_full_saves(tmp_path, monkeypatch):
    state = lora_state()
    saver = fastckpt.Saver(max_to_keep=2, delta=True)
    saver.save(state, str(tmp_path / "m"), global_step=0)
    real_link = os.link

    def refuse(src, dst, *a, **k):
        if os.path.basename(str(dst)).startswith(".fcsave-"):
            raise OSError(errno.EPERM, "Operation not permitted (a file system without hard links)", src)
        return real_link(src, dst, *a, **k)
    monkeypatch.setattr(os, "link", refuse)
    for step in (1, 2):
        state["adapter/a"] = state["adapter/a"] + 1
        p = saver.save(state, str(tmp_path / "m"), global_step=step)
        assert len(data_files(p)) == 1 and os.stat(data_files(p)[0]).st_nlink == 1
        assert_restores(p, state)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_the_base_deleted_or_replaced_while_a_delta_save_runs(tmp_path, monkeypatch, how):
    """Retention (or any process) deletes -- or re-saves -- the previous
    checkpoint after its index was read, before its file is linked: the save
    notices (the name no longer holds the file it read) and writes in full."""
    state = lora_state()
    saver = fastckpt.Saver(max_to_keep=None, delta=True)
    first = saver.save(state, str(tmp_path / "m"), global_step=0)
    real = delta_module.link_locked
    other = {k: v + 5 for k, v in state.items()}

    def meanwhile(fd, path, make_name):
        monkeypatch.setattr(delta_module, "link_locked", real)
        if how == "deleted":
            for f in data_files(first) + [first + ".index"]:
                os.unlink(f)
        else:
            fastckpt.Saver(max_to_keep=None).save(other, first)
        return real(fd, path, make_name)
    monkeypatch.setattr(delta_module, "link_locked", meanwhile)
    state["adapter/a"] = state["adapter/a"] + 1
    second = saver.save(state, str(tmp_path / "m"), global_step=1)
    assert_restores(second, state)
    assert len(data_files(second)) == 1
    if how == "replaced":
        assert_restores(first, other)


def test_tensorflow_layout_of_a_delta_checkpoint(tmp_path):
    """Shard names, header and entries are plain TensorFlow: the index
    names N data files, the shared ones first, the record a string scalar."""
    state = lora_state(n=20_000)
    saver = fastckpt.Saver(max_to_keep=None, delta=True)
    saver.save(state, str(tmp_path / "m"), global_step=0)
    state["adapter/b"] = state["adapter/b"] + 1
    p = saver.save(state, str(tmp_path / "m"), global_step=1)
    files = data_files(p)
    assert [os.path.basename(f) for f in files] == ["m-1.data-00000-of-00002", "m-1.data-00001-of-00002"]
    with fastckpt.CheckpointReader(p) as r:
        assert r.num_shards == 2
        entry = r.index.entry(r.index.find(b"adapter/b"))
        assert entry.shard == 1
        assert r.index.entry(r.index.find(b"base/layer0/kernel")).shard == 0
        assert r.get_tensor(delta_module.DELTA_KEY).shape == ()


def test_delta_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(fastckpt.InvalidArgumentError, match="recycle"):
        fastckpt.Saver(delta=True, recycle=True)
    with pytest.raises(fastckpt.InvalidArgumentError, match="compression"):
        fastckpt.CheckpointManager(str(tmp_path), delta=True, compression="zstd")
    with pytest.raises(fastckpt.InvalidArgumentError, match="num_shards"):
        fastckpt.Saver(delta=True, num_shards=2)
    with pytest.raises(fastckpt.InvalidArgumentError, match="delta=True"):
        fastckpt.SaveOptions(frozen=["x"])
    with pytest.raises(fastckpt.InvalidArgumentError, match="frozen"):
        fastckpt.SaveOptions(delta=True, frozen="base")
    with pytest.raises(fastckpt.InvalidArgumentError, match="delta"):
        fastckpt.SaveOptions(delta="yes")
    with pytest.raises(fastckpt.UnsupportedError, match="local"):
        fastckpt.save({"a": np.ones(3)}, "s3://bucket/x/m", delta=True)
    from tests.helpers.thread_comm import run_ranks
    out = run_ranks(2, lambda c: fastckpt.save({"a": np.ones(3)}, str(tmp_path / "mp"), comm=c, delta=True))
    assert all(isinstance(e, fastckpt.UnsupportedError) for e in out), out
    assert not os.path.exists(tmp_path / "mp.index")


def test_digests_are_xxh64_of_one_mib_pieces():
    xxhash = pytest.importorskip("xxhash")
    import struct
    rng = np.random.default_rng(3)
    sizes = (0, 1, 7, 31, 32, 1000, (1 << 20), (1 << 20) + 1, (3 << 20) + 77)
    buffers = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    for b, digest in zip(buffers, _core.digests(buffers, 2)):
        n = b.nbytes
        if n <= 1 << 20:
            assert digest == xxhash.xxh64_intdigest(b.tobytes())
        else:
            pieces = [xxhash.xxh64_intdigest(b[i:i + (1 << 20)].tobytes()) for i in range(0, n, 1 << 20)]
            assert digest == xxhash.xxh64_intdigest(b"".join(struct.pack("<Q", h) for h in pieces), seed=n)
    assert _core.digests(buffers, 1) == _core.digests(buffers, 2)  # the same whatever the threads
    for n, seed in itertools.product((0, 3, 8, 33, 100), (0, 1, 2**64 - 1)):
        b = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert _core.xxh64(b, seed) == xxhash.xxh64_intdigest(b, seed=seed)


def test_a_tensor_whose_crc_changed_is_written_without_a_digest(tmp_path):
    """Everything changing costs no hashing after the first delta save: the
    record holds no digest for tensors whose write CRC differed."""
    import json
    state = lora_state(n=20_000)
    saver = fastckpt.Saver(max_to_keep=None, delta=True)
    for step in range(3):
        state = {k: v + 1 for k, v in state.items()}
        p = saver.save(state, str(tmp_path / "m"), global_step=step)
    with fastckpt.CheckpointReader(p) as r:
        record = json.loads(bytes(r.get_tensor(delta_module.DELTA_KEY)[()]))
    assert len(record["tensors"]) == 8 and all(v == [None, False] for v in record["tensors"].values()), record


def test_small_tensors_are_always_written(tmp_path):
    """Under MIN_TENSOR bytes a tensor costs less to write than to track: a
    state of many small tensors saves as a full save does."""
    import json
    state = {f"t{i}": np.full(256, i, np.float32) for i in range(2000)}
    state["big"] = np.ones(1 << 20, np.float32)  # 4 MiB: most of the file, which is shared
    saver = fastckpt.Saver(max_to_keep=None, delta=True)
    first = saver.save(state, str(tmp_path / "m"), global_step=0)
    state["t5"] = state["t5"] + 1
    second = saver.save(state, str(tmp_path / "m"), global_step=1)
    assert_restores(second, state)
    with fastckpt.CheckpointReader(second) as r:
        record = json.loads(bytes(r.get_tensor(delta_module.DELTA_KEY)[()]))
        assert list(record["tensors"]) == ["big"]
        assert r.index.entry(r.index.find(b"t0")).shard == 1  # written again, in the new file
    assert inodes(first) & inodes(second)  # only "big" is shared, and it is half the old file
