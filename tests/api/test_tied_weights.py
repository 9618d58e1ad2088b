"""Tied weights -- one tensor under two names -- are written once: both names
get index entries naming the same bytes, a restore gives one shared tensor
back, and every format keeps the tie its own way."""

import os

import numpy as np
import pytest

import fastckpt
from fastckpt.formats.bundle import open_bundle
from tests.helpers.roundtrip import assert_bit_equal


def _data_bytes(prefix):
    d = os.path.dirname(prefix)
    base = os.path.basename(prefix)
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.startswith(base + ".data-"))


def _tied_model(torch, vocab=2000, dim=64, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Embedding(vocab, dim), torch.nn.Linear(dim, dim),
                            torch.nn.Linear(dim, vocab, bias=False))
    m[2].weight = m[0].weight
    return m


def test_tied_torch_model_takes_no_more_disk_than_torch_save(tmp_path):
    torch = pytest.importorskip("torch")
    m = _tied_model(torch)
    sd = m.state_dict()
    prefix = fastckpt.save(sd, str(tmp_path / "m"))
    torch.save(sd, str(tmp_path / "m.pt"))
    ours = _data_bytes(prefix) + os.path.getsize(prefix + ".index")
    assert ours <= os.path.getsize(tmp_path / "m.pt")
    untied = fastckpt.save({k: v.clone() for k, v in sd.items()}, str(tmp_path / "u"))
    assert abs(_data_bytes(untied) - _data_bytes(prefix) - sd["0.weight"].numel() * 4) < 256  # (+ record bytes)


def test_restore_gives_tied_names_one_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    m = _tied_model(torch)
    prefix = fastckpt.save({"model": m.state_dict(), "step": 3}, str(tmp_path / "m"))
    back = fastckpt.restore(prefix)
    a, b = back["model"]["0.weight"], back["model"]["2.weight"]
    assert isinstance(a, torch.Tensor) and a is b
    assert torch.equal(a, m[0].weight.detach())
    assert back["step"] == 3
    flat = fastckpt.read_bundle(prefix)
    assert flat["model/0.weight"] is flat["model/2.weight"]


def test_restore_into_a_tied_model_keeps_the_tie(tmp_path):
    torch = pytest.importorskip("torch")
    src = _tied_model(torch, seed=1)
    prefix = fastckpt.save(src.state_dict(), str(tmp_path / "m"))
    dst = _tied_model(torch, seed=2)
    fastckpt.restore(prefix, into=dst.state_dict())
    assert dst[2].weight is dst[0].weight
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    with torch.no_grad():  # still one parameter: a change through one name shows through the other
        dst[0].weight[0, 0] = 123.0
    assert dst[2].weight[0, 0].item() == 123.0


def test_numpy_arrays_of_one_buffer_are_written_once(tmp_path):
    a = np.arange(4096, dtype=np.float32).reshape(64, 64)
    prefix = fastckpt.write_bundle(str(tmp_path / "b"), {"x": a, "y": a, "z": a})
    assert _data_bytes(prefix) == a.nbytes
    with fastckpt.CheckpointReader(prefix) as r:
        assert r.tied_names() == {"y": "x", "z": "x"}
        for n in "xyz":
            assert_bit_equal(r.get_tensor(n), a)
            assert r.get_tensor(n) is not r.get_tensor(n)  # get_tensor: a fresh array per call
        got = r.read(["y", "z"])  # neither is read through the other's name: both come back, one array
        assert got["y"] is got["z"]
        assert_bit_equal(r.read(["z"])["z"], a)


def test_partial_overlaps_are_saved_as_independent_copies(tmp_path):
    """A slice, a reshape and a re-typed view of one buffer are not the same
    tensor: each is written as its own copy and comes back on its own."""
    a = np.arange(4096, dtype=np.float32).reshape(64, 64)
    state = {"a": a, "rows": a[8:16], "flat": a.reshape(-1), "bits": a.view(np.int32), "col": a[:, 3]}
    prefix = fastckpt.write_bundle(str(tmp_path / "b"), state)
    assert _data_bytes(prefix) == sum(np.asarray(v).nbytes for v in state.values())
    back = fastckpt.read_bundle(prefix)
    for k, v in state.items():
        assert_bit_equal(back[k], np.ascontiguousarray(v))
    back["a"][0, 0] = -1
    assert back["flat"][0] == 0 and back["bits"][0, 0] == 0
    with fastckpt.CheckpointReader(prefix) as r:
        assert r.tied_names() == {}


def test_tied_weights_with_compression(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 256)).astype(np.float32)
    tied = fastckpt.save({"emb": a, "head": a, "b": np.ones(3)}, str(tmp_path / "t"), compression="zstd")
    untied = fastckpt.save({"emb": a, "head": a.copy(), "b": np.ones(3)}, str(tmp_path / "u"), compression="zstd")
    assert _data_bytes(untied) - _data_bytes(tied) > a.nbytes // 2
    back = fastckpt.restore(tied)
    assert back["emb"] is back["head"]
    assert_bit_equal(back["head"], a)


def test_tied_weights_across_many_processes(tmp_path):
    from tests.helpers.thread_comm import run_ranks
    b = np.arange(1000, dtype=np.float64)

    def save(comm, tie, prefix):
        r = comm.rank
        loc = np.arange(500, dtype=np.float32) + 1000 * r
        head = loc if tie else loc.copy()
        return fastckpt.save({"emb": fastckpt.Shard(loc, (1000,), (500 * r,)),
                              "head": fastckpt.Shard(head, (1000,), (500 * r,)),
                              "b": b, "b2": b if tie else b.copy()}, prefix, comm=comm)
    untied, tied = str(tmp_path / "untied"), str(tmp_path / "tied")
    assert run_ranks(2, lambda c: save(c, False, untied)) == [untied] * 2
    assert run_ranks(2, lambda c: save(c, True, tied)) == [tied] * 2
    assert _data_bytes(untied) - _data_bytes(tied) == 2 * 500 * 4 + b.nbytes
    back = fastckpt.restore(tied)
    assert_bit_equal(back["emb"], np.concatenate([np.arange(500, dtype=np.float32),
                                                  np.arange(500, dtype=np.float32) + 1000]))
    assert_bit_equal(back["head"], back["emb"])
    assert back["b"] is back["b2"]


def test_conversion_keeps_the_tie_in_each_format(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    from safetensors import safe_open
    m = _tied_model(torch)
    prefix = fastckpt.save(m.state_dict(), str(tmp_path / "m"))
    # safetensors: one copy, the other name in the metadata (the convention of save_model/load_model)
    fastckpt.convert(prefix, str(tmp_path / "m.safetensors"))
    with safe_open(str(tmp_path / "m.safetensors"), "np") as f:
        assert sorted(f.keys()) == ["0.weight", "1.bias", "1.weight"]
        assert f.metadata()["2.weight"] == "0.weight"
    other = _tied_model(torch, seed=5)
    missing, unexpected = st.load_model(other, str(tmp_path / "m.safetensors"))
    assert not missing and not unexpected
    assert torch.equal(other[2].weight, m[0].weight) and other[2].weight is other[0].weight
    # ... and back: the bundle has the tie again
    fastckpt.convert(str(tmp_path / "m.safetensors"), str(tmp_path / "back"))
    with fastckpt.CheckpointReader(str(tmp_path / "back")) as r:
        assert r.tied_names() == {"2.weight": "0.weight"}
    # the library's own save_model file converts the same way
    st.save_model(m, str(tmp_path / "hf.safetensors"))
    fastckpt.convert(str(tmp_path / "hf.safetensors"), str(tmp_path / "hf"))
    with fastckpt.CheckpointReader(str(tmp_path / "hf")) as r:
        assert set(r.tied_names().items()) | {(b, a) for a, b in r.tied_names().items()} >= {("2.weight", "0.weight")}
    # torch: one storage (torch.save keeps shared storages once), and back
    fastckpt.convert(prefix, str(tmp_path / "m.pt"))
    loaded = torch.load(str(tmp_path / "m.pt"))
    assert loaded["0.weight"].data_ptr() == loaded["2.weight"].data_ptr()
    fastckpt.convert(str(tmp_path / "m.pt"), str(tmp_path / "frompt"))
    with fastckpt.CheckpointReader(str(tmp_path / "frompt")) as r:
        assert r.tied_names() == {"2.weight": "0.weight"}
    # a cast keeps the tie too
    fastckpt.convert(prefix, str(tmp_path / "half"), dtype="float16")
    with open_bundle(str(tmp_path / "half")) as src:
        assert src.tied == {"2.weight": "0.weight"}
        assert src.tensors["2.weight"].dtype == np.float16


def test_tied_weights_on_an_object_store(s3_dir):
    a = np.arange(65536, dtype=np.float32)
    prefix = fastckpt.save({"emb": a, "head": a}, s3_dir + "/m")
    with fastckpt.CheckpointReader(prefix) as r:
        assert r.tied_names() == {"head": "emb"}
    back = fastckpt.restore(prefix)
    assert back["emb"] is back["head"]
    assert_bit_equal(back["head"], a)


def test_inspect_names_the_tied_tensors(tmp_path):
    a = np.zeros(100, np.float32)
    prefix = fastckpt.write_bundle(str(tmp_path / "b"), {"emb": a, "head": a})
    s = fastckpt.inspect_checkpoint(prefix)
    assert s["tied"] == {"head": "emb"}
    assert "1 tied name(s), stored once: head = emb" in "\n".join(fastckpt.formats.inspect.summary_lines(s))
