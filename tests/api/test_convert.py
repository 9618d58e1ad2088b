"""fastckpt.convert between TensorFlow bundles (plain, sharded, compressed),
safetensors (single, sharded), PyTorch files and npz: every direction, bit
for bit, checked with each format's own library; options; refusals."""

import json
import os
import pickle
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import fastckpt
from fastckpt.formats.convert import convert
from tests.helpers.roundtrip import assert_bit_equal

safetensors_numpy = pytest.importorskip("safetensors.numpy")

# dtypes all four formats hold (npz: numpy's own; bfloat16 is checked where it fits)
COMMON = {
    "emb/weight": np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32),
    "head.bias": np.linspace(-1, 1, 7, dtype=np.float64),
    "h": np.array([0.5, -0.0, np.inf, np.nan], np.float16),
    "count": np.array(7, np.int64),
    "mask": np.array([True, False, True]),
    "i8": np.arange(-5, 5, dtype=np.int8),
    "u8": np.arange(250, 256, dtype=np.uint8),
    "i32": np.arange(12, dtype=np.int32).reshape(3, 4),
    "empty": np.zeros((0, 5), np.float32),
}
BF16 = {"w_bf16": np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16)}

FORMATS = {
    "tf": lambda d: str(d / "ck"),
    "tf-sharded": lambda d: str(d / "sharded"),
    "tf-zstd": lambda d: str(d / "zstd"),
    "safetensors": lambda d: str(d / "m.safetensors"),
    "safetensors-sharded": lambda d: str(d / "shards" / "model.safetensors"),
    "torch": lambda d: str(d / "m.pt"),
    "npz": lambda d: str(d / "m.npz"),
}
OPTIONS = {"tf-sharded": {"num_shards": 3}, "tf-zstd": {"compression": "zstd"},
           "safetensors-sharded": {"num_shards": 2}}


def _read_with_its_library(kind, path):
    """The tensors as the format's own library reads them."""
    if kind.startswith("tf"):
        return fastckpt.read_bundle(path)
    if kind == "safetensors":
        return safetensors_numpy.load_file(path)
    if kind == "safetensors-sharded":
        index = json.load(open(path[:-len(".safetensors")] + ".safetensors.index.json"))
        out = {}
        for f in sorted(set(index["weight_map"].values())):
            out.update(safetensors_numpy.load_file(os.path.join(os.path.dirname(path), f)))
        return out
    if kind == "torch":
        torch = pytest.importorskip("torch")
        from fastckpt.bundle.frameworks import to_numpy
        return {k: to_numpy(v) for k, v in torch.load(path, weights_only=True).items()}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _write_with_its_library(kind, path, tensors):
    if kind.startswith("tf"):
        fastckpt.write_bundle(path, tensors, **OPTIONS.get(kind, {}))
    elif kind == "safetensors":
        safetensors_numpy.save_file(tensors, path)
    elif kind == "torch":
        torch = pytest.importorskip("torch")
        from fastckpt.bundle.frameworks import from_numpy
        torch.save({k: from_numpy(v.copy(), "torch") for k, v in tensors.items()}, path)
    elif kind == "npz":
        np.savez(path, **tensors)
    else:
        raise AssertionError(kind)


def _assert_same(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert_bit_equal(np.asarray(got[k]), want[k])


@pytest.mark.parametrize("dst", list(FORMATS))
@pytest.mark.parametrize("src", list(FORMATS))
def test_every_direction_is_bit_exact(tmp_path, src, dst):
    if "torch" in (src, dst):
        pytest.importorskip("torch")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    src_path, dst_path = FORMATS[src](a), FORMATS[dst](b)
    tensors = dict(COMMON)
    if src.startswith("tf"):
        fastckpt.write_bundle(src_path, tensors, **OPTIONS.get(src, {}))
    elif src == "safetensors-sharded":  # our writer makes the shards (the library writes single files)
        fastckpt.write_bundle(str(a / "staging"), tensors)
        convert(str(a / "staging"), src_path, num_shards=2)
    else:
        _write_with_its_library(src, src_path, tensors)
    assert convert(src_path, dst_path, **OPTIONS.get(dst, {})) == dst_path
    _assert_same(_read_with_its_library(dst, dst_path), tensors)
    assert not [n for n in os.listdir(os.path.dirname(dst_path)) if n.startswith(".fc")]


@pytest.mark.parametrize("dst", ["safetensors", "torch", "tf"])
def test_bfloat16_and_float8_where_the_format_has_them(tmp_path, dst):
    if dst == "torch":
        pytest.importorskip("torch")
    tensors = dict(BF16, f8=np.arange(8, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn),
                   f8b=np.arange(8, dtype=np.float32).astype(ml_dtypes.float8_e5m2))
    fastckpt.write_bundle(str(tmp_path / "src"), tensors)
    out = FORMATS[dst](tmp_path)
    convert(str(tmp_path / "src"), out)
    if dst == "safetensors":  # the library's numpy loader has no bfloat16/float8: its torch loader has
        torch = pytest.importorskip("torch")
        from safetensors.torch import load_file
        from fastckpt.bundle.frameworks import to_numpy
        _assert_same({k: to_numpy(v) for k, v in load_file(out).items()}, tensors)
        assert load_file(out)["f8"].dtype == torch.float8_e4m3fn
    else:
        _assert_same(_read_with_its_library(dst, out), tensors)
    convert(out, str(tmp_path / "back"))
    _assert_same(fastckpt.read_bundle(str(tmp_path / "back")), tensors)


def test_safetensors_written_by_the_library_with_bfloat16_and_metadata(tmp_path):
    tensors = dict(COMMON, **BF16)
    safetensors_numpy.save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"format": "pt", "note": "x"})
    convert(str(tmp_path / "m.safetensors"), str(tmp_path / "ck"))
    _assert_same(fastckpt.restore(str(tmp_path / "ck")), tensors)  # the metadata is in its structure record
    assert fastckpt.read_meta(str(tmp_path / "ck"))["metadata"] == {
        "converted_from": "safetensors", "metadata": {"format": "pt", "note": "x"}}
    convert(str(tmp_path / "ck"), str(tmp_path / "again.safetensors"))
    from safetensors import safe_open
    with safe_open(str(tmp_path / "again.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "pt", "note": "x"}


def test_npz_refuses_what_it_would_read_back_as_raw_bytes(tmp_path):
    fastckpt.write_bundle(str(tmp_path / "ck"), BF16)
    with pytest.raises(fastckpt.InvalidArgumentError, match="npz cannot record dtype bfloat16"):
        convert(str(tmp_path / "ck"), str(tmp_path / "m.npz"))
    assert not os.path.exists(tmp_path / "m.npz")


def test_compressed_npz_and_fortran_order_members(tmp_path):
    f = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    np.savez_compressed(tmp_path / "c.npz", a=COMMON["emb/weight"], f=f)
    np.savez(tmp_path / "s.npz", f=f)
    for name in ("c.npz", "s.npz"):
        out = str(tmp_path / (name + "-ck"))
        convert(str(tmp_path / name), out)
        got = fastckpt.read_bundle(out)
        np.testing.assert_array_equal(got["f"], f)
    assert fastckpt.diff(str(tmp_path / "c.npz"), str(tmp_path / "c.npz-ck")).equal


def test_nested_torch_state_keeps_its_structure_through_a_bundle(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}
    torch.save(state, tmp_path / "full.pt")
    convert(str(tmp_path / "full.pt"), str(tmp_path / "ck"))
    back = fastckpt.restore(str(tmp_path / "ck"))
    assert back["epoch"] == 3 and back["optimizer"]["param_groups"][0]["lr"] == 0.001
    assert torch.equal(back["model"]["weight"], model.weight.detach())
    convert(str(tmp_path / "ck"), str(tmp_path / "again.pt"))
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert again["epoch"] == 3
    assert torch.equal(again["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(fastckpt.InvalidArgumentError, match="holds only tensors.*param_groups"):
        convert(str(tmp_path / "full.pt"), str(tmp_path / "x.safetensors"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    import torch
    torch.save({"w": torch.ones(2), "x": _Evil()}, tmp_path / "evil.pt")
    with open(tmp_path / "legacy.bin", "wb") as fh:
        pickle.dump({"x": _Evil()}, fh)
    for name in ("evil.pt", "legacy.bin"):
        with pytest.raises(fastckpt.DataLossError, match="weights_only=True"):
            convert(str(tmp_path / name), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "EVIL_RAN")


def test_options_reshard_compress_decompress_and_cast(tmp_path):
    src = str(tmp_path / "src")
    fastckpt.write_bundle(src, COMMON)
    convert(src, str(tmp_path / "z"), compression="zstd", num_shards=2)
    assert os.path.exists(str(tmp_path / "z") + ".data-00001-of-00002")
    convert(str(tmp_path / "z"), str(tmp_path / "plain"))
    _assert_same(fastckpt.read_bundle(str(tmp_path / "plain")), COMMON)
    convert(src, str(tmp_path / "half.safetensors"), dtype="bfloat16")
    got = safetensors_numpy.load_file(str(tmp_path / "half.safetensors"))
    assert got["emb/weight"].dtype == ml_dtypes.bfloat16 and got["count"].dtype == np.int64
    np.testing.assert_array_equal(got["emb/weight"], COMMON["emb/weight"].astype(ml_dtypes.bfloat16))
    with pytest.raises(fastckpt.InvalidArgumentError, match="not a floating-point"):
        convert(src, str(tmp_path / "x"), dtype="int8")


def test_refusals(tmp_path):
    src = str(tmp_path / "src")
    fastckpt.write_bundle(src, dict(COMMON, names=np.array([b"a", b"b"], dtype=object)))
    with pytest.raises(fastckpt.InvalidArgumentError, match="no string tensors: names"):
        convert(src, str(tmp_path / "x.safetensors"))
    with pytest.raises(fastckpt.InvalidArgumentError, match="being converted"):
        convert(src, src)
    with pytest.raises(fastckpt.InvalidArgumentError, match="compression is a TensorFlow"):
        convert(src, str(tmp_path / "x.npz"), compression="zstd")
    with pytest.raises(fastckpt.InvalidArgumentError, match="unknown checkpoint format"):
        convert(src, str(tmp_path / "x"), dst_format="onnx")
    with pytest.raises(fastckpt.NotFoundError):
        convert(str(tmp_path / "missing.safetensors"), str(tmp_path / "y"))
    with pytest.raises(fastckpt.InvalidArgumentError, match="complex128"):
        fastckpt.write_bundle(str(tmp_path / "c"), {"c": np.ones(2, np.complex128)})
        convert(str(tmp_path / "c"), str(tmp_path / "c.safetensors"))
    assert sorted(os.listdir(tmp_path)) == ["c.data-00000-of-00001", "c.index", "src.data-00000-of-00001",
                                            "src.index"]


def _safetensors_file(path, header, data=b""):
    text = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize("header,data,match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "beyond the end"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "4 bytes for a F32"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "overlap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "gap"),
    ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown or missing"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "bad header entry"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 12, "after the last tensor"),
    ({"__metadata__": {"k": 1}}, b"", "__metadata__ must map strings"),
])
def test_hostile_safetensors_headers(tmp_path, header, data, match):
    path = str(tmp_path / "bad.safetensors")
    _safetensors_file(path, header, data)
    with pytest.raises(fastckpt.DataLossError, match=match):
        convert(path, str(tmp_path / "out"))
    assert not os.path.exists(str(tmp_path / "out.index"))


def test_hostile_safetensors_sizes_and_index(tmp_path):
    path = str(tmp_path / "bad.safetensors")
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(fastckpt.DataLossError, match="header of"):
        convert(path, str(tmp_path / "out"))
    with open(tmp_path / "m.safetensors.index.json", "w") as fh:
        json.dump({"weight_map": {"a": "../etc/passwd"}}, fh)
    with pytest.raises(fastckpt.DataLossError, match="not a file beside the index"):
        convert(str(tmp_path / "m.safetensors.index.json"), str(tmp_path / "out"))


def test_npz_with_an_object_array_is_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "o.npz", o=np.array([_Evil()], dtype=object))
    with pytest.raises(fastckpt.InvalidArgumentError, match="object array"):
        convert(str(tmp_path / "o.npz"), str(tmp_path / "out"))
    with open(tmp_path / "junk.npz", "wb") as fh:
        fh.write(b"PK not really")
    with pytest.raises(fastckpt.DataLossError, match="not an npz"):
        convert(str(tmp_path / "junk.npz"), str(tmp_path / "out"))


@pytest.mark.parametrize("name", ["x.safetensors", "shards.safetensors", "x.npz", "x.pt", "x"])
def test_a_full_disk_leaves_no_file(tmp_path, small_tmpfs, name):
    """A real 1 MiB file system: every destination fails with ENOSPC as
    CheckpointIOError, and nothing of it is left."""
    if name.endswith(".pt"):
        pytest.importorskip("torch")
    src = str(tmp_path / "src")
    fastckpt.write_bundle(src, {f"t{i}": np.full(100_000, i, np.float32) for i in range(5)})  # 2 MB
    with pytest.raises(fastckpt.CheckpointIOError) as e:
        convert(src, str(small_tmpfs / name), num_shards=2 if name.startswith("shards") else 1)
    assert e.value.errno == 28 and "No space" in str(e.value)
    assert os.listdir(small_tmpfs) == []


def test_cli_convert_with_from_and_to(tmp_path):
    fastckpt.write_bundle(str(tmp_path / "src"), COMMON)
    run = [sys.executable, "-m", "fastckpt", "convert"]
    r = subprocess.run(run + [str(tmp_path / "src"), str(tmp_path / "weights.data"), "--to", "safetensors"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "ends with .safetensors" in r.stderr, r.stderr
    r = subprocess.run(run + [str(tmp_path / "src"), str(tmp_path / "w.bin"), "--to", "npz"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "ends with .npz" in r.stderr
    r = subprocess.run(run + [str(tmp_path / "src"), str(tmp_path / "w.safetensors"), "--num-shards", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(tmp_path / "w.safetensors.index.json")
    r = subprocess.run(run + [str(tmp_path / "w.safetensors.index.json"), str(tmp_path / "back"), "--durable"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _assert_same(fastckpt.read_bundle(str(tmp_path / "back")), COMMON)


@pytest.mark.parametrize("call", [
    lambda d: convert(None, str(d / "b")),
    lambda d: convert(str(d / "src"), 3),
    lambda d: convert(str(d / "src"), str(d / "b.safetensors"), num_shards=-1),
    lambda d: convert(str(d / "src"), str(d / "b"), num_shards="2"),
    lambda d: convert(str(d / "src"), str(d / "b.npz"), dtype="nonsense"),
    lambda d: convert(str(d / "src"), str(d / "b"), src_format="onnx"),
    lambda d: fastckpt.diff(str(d / "src"), str(d / "src"), atol="x"),
    lambda d: fastckpt.diff(str(d / "src"), str(d / "src"), rtol=float("nan")),
    lambda d: fastckpt.inspect_checkpoint(3),
    lambda d: fastckpt.inspect_checkpoint(str(d / "src"), largest=-1),
])
def test_bad_arguments_are_invalid_argument_errors(tmp_path, call):
    fastckpt.write_bundle(str(tmp_path / "src"), {"x": np.ones(3)})
    with pytest.raises(fastckpt.InvalidArgumentError):
        call(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["src.data-00000-of-00001", "src.index"]


def test_safetensors_shards_are_balanced_and_never_empty(tmp_path):
    from fastckpt.formats.safetensors import split_shards
    from fastckpt.bundle.lazy import LazyTensor

    def lazy(n):
        return LazyTensor(np.dtype(np.uint8), (n,), lambda: np.zeros(n, np.uint8))
    for sizes, n in (([16, 64], 2), ([1000, 1, 1, 1], 3), ([1, 1, 1, 1000], 3), ([5] * 10, 4), ([7], 1)):
        groups = split_shards({f"t{i}": lazy(s) for i, s in enumerate(sizes)}, n)
        assert len(groups) == n and all(groups), (sizes, groups)
        assert [k for g in groups for k in g] == [f"t{i}" for i in range(len(sizes))]
    assert [len(g) for g in split_shards({f"t{i}": lazy(5) for i in range(10)}, 4)] in ([3, 2, 3, 2], [2, 3, 2, 3],
                                                                                   [3, 3, 2, 2], [2, 3, 3, 2])
    fastckpt.write_bundle(str(tmp_path / "two"), {"a": np.ones(2), "b": np.ones(2)})
    with pytest.raises(fastckpt.InvalidArgumentError, match="cannot cut 2 tensor"):
        convert(str(tmp_path / "two"), str(tmp_path / "x.safetensors"), num_shards=3)


KILLED_CONVERSION = """
import os, signal, sys
import fastckpt
import importlib
convert_mod = importlib.import_module("fastckpt.formats.convert")
from fastckpt.formats import files as files_mod
src, dst, where = sys.argv[1:4]
if where == "scratch":  # killed while the temporary plain bundle is being read back
    convert_mod.SCRATCH_ABOVE = 0
    real_open = convert_mod.open_source
    def open_source(path, fmt=None, **kw):
        if ".fcsave-" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_open(path, fmt, **kw)
    convert_mod.open_source = open_source
else:  # killed halfway through writing a safetensors shard
    real_write = files_mod.write_at
    def write_at(fd, start, tensors, *a, **kw):
        real_write(fd, start, tensors[:1], *a, **kw)
        os.kill(os.getpid(), signal.SIGKILL)
    files_mod.write_at = write_at
    import fastckpt.formats.safetensors as st_mod
    st_mod.write_at = write_at
fastckpt.convert(src, dst, **({"compression": "zstd"} if where == "scratch" else {"num_shards": 2}))
"""


@pytest.mark.parametrize("where", ["scratch", "safetensors"])
def test_a_killed_conversion_leaves_only_what_gc_removes(tmp_path, where):
    src = str(tmp_path / "src")
    fastckpt.write_bundle(src, COMMON, compression="zstd")
    out = tmp_path / "out"
    out.mkdir()
    dst = str(out / ("z" if where == "scratch" else "m.safetensors"))
    r = subprocess.run([sys.executable, "-c", KILLED_CONVERSION, src, dst, where], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert r.returncode == -9, r.stderr
    left = os.listdir(out)
    assert left and all(n.startswith((".fcsave-", ".fclink-")) for n in left), left
    report = fastckpt.collect_garbage(str(out))
    assert os.listdir(out) == ["checkpoint.lock"] and len(report.removed) == len(left)  # (gc's own lock file)


def test_ambiguous_safetensors_directories_and_damaged_npz_headers(tmp_path):
    d = tmp_path / "two"
    d.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        safetensors_numpy.save_file({"x": np.ones(2)}, str(d / name))
    with pytest.raises(fastckpt.InvalidArgumentError, match="name the one to read"):
        convert(str(d), str(tmp_path / "out"), src_format="safetensors")
    np.savez(tmp_path / "m.npz", x=np.arange(4.0))
    raw = bytearray(open(tmp_path / "m.npz", "rb").read())
    raw[0:4] = b"PK\x09\x09"  # the first member's local header, damaged (the central directory still names it)
    open(tmp_path / "bad.npz", "wb").write(bytes(raw))
    with pytest.raises(fastckpt.DataLossError):
        convert(str(tmp_path / "bad.npz"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out.index")


def test_a_damaged_deflated_npz_member_is_data_loss(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal(10_000))
    raw = bytearray(open(tmp_path / "c.npz", "rb").read())
    raw[len(raw) // 2] ^= 0xFF  # inside the deflate stream
    open(tmp_path / "bad.npz", "wb").write(bytes(raw))
    with pytest.raises(fastckpt.DataLossError, match="damaged"):
        convert(str(tmp_path / "bad.npz"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out.index")
