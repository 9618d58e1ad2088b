"""Nested state, the structure record, fastckpt.restore / read_meta."""

import json
import os

import ml_dtypes
import numpy as np
import pytest

import fastckpt
from fastckpt.structure.record import STRUCTURE_KEY
from tests.helpers.roundtrip import assert_bit_equal

NESTED = {
    "layer": [{"kernel": np.arange(6.0).reshape(2, 3), "bias": np.zeros(3, np.float32)},
              {"kernel": np.ones((3, 1), ml_dtypes.bfloat16), "bias": np.zeros(1, np.float32)}],
    "opt": ({"m": np.full(4, 0.5)}, np.int64(3)),
    "step": 42, "lr": 0.125, "frozen": True,
    "vocab": np.array([b"a", b"bc"], dtype=object),
}


def assert_same_tree(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tree(x, y)
    elif isinstance(a, np.ndarray):
        assert_bit_equal(a, b)
    else:
        assert a == b


def test_nested_roundtrip_names_and_meta(tmp_path):
    prefix = fastckpt.save(NESTED, str(tmp_path / "c"), metadata={"epoch": 2, "note": "é"})
    names = [n for n, _ in fastckpt.list_variables(prefix)]
    assert "layer/0/kernel" in names and "opt/1" in names and "vocab" in names
    assert "step" not in names and "lr" not in names  # Python scalars live in the record
    back = fastckpt.restore(prefix)
    assert_same_tree(back, NESTED)
    assert type(back["opt"][1]) is np.int64 and type(back["step"]) is int and type(back["frozen"]) is bool
    meta = fastckpt.read_meta(prefix)
    assert meta["metadata"] == {"epoch": 2, "note": "é"}
    assert meta["leaves"]["layer/1/kernel"] == {"dtype": "bfloat16", "shape": [3, 1]}


def test_read_meta_reads_no_other_tensor(tmp_path):
    prefix = fastckpt.save({"a": {"b": np.zeros(10)}}, str(tmp_path / "c"))
    with fastckpt.load_checkpoint(prefix) as r:
        entry = r._entry("a/b")[1]
    with open(prefix + ".data-00000-of-00001", "r+b") as f:  # damage a/b only
        f.seek(entry[3])
        f.write(b"\xff")
    assert fastckpt.read_meta(prefix)["leaves"] == {"a/b": {"dtype": "float64", "shape": [10]}}
    with pytest.raises(fastckpt.DataLossError, match="a/b"):
        fastckpt.restore(prefix)


def test_restore_into_fills_nested_arrays_in_place(tmp_path):
    prefix = fastckpt.save(NESTED, str(tmp_path / "c"))
    into = {"layer": [{"kernel": np.empty((2, 3)), "bias": np.empty(3, np.float32)},
                      {"kernel": np.empty((3, 1), ml_dtypes.bfloat16), "bias": np.empty(1, np.float32)}]}
    k = into["layer"][0]["kernel"]
    back = fastckpt.restore(prefix, into=into)
    assert into["layer"][0]["kernel"] is k and back["layer"][0]["kernel"] is k
    assert_bit_equal(k, NESTED["layer"][0]["kernel"])
    assert_same_tree(back, NESTED)  # what into lacks comes from the checkpoint


def test_tensorflow_checkpoints_restore_flat(data_dir):
    got = fastckpt.restore(os.path.join(data_dir, "tf1_saver", "my-model-3000"))
    assert isinstance(got, dict) and "dense/kernel" in got
    with pytest.raises(fastckpt.NotFoundError, match="meta"):
        fastckpt.read_meta(os.path.join(data_dir, "tf1_saver", "my-model-3000"))


def test_flat_dict_of_arrays_has_no_structure_record(tmp_path):
    p = fastckpt.save({"x": {"y": np.zeros(1)}}, str(tmp_path / "c"))
    assert STRUCTURE_KEY in dict(fastckpt.list_variables(p))
    fastckpt.save({"x": np.zeros(1)}, p)
    assert STRUCTURE_KEY not in dict(fastckpt.list_variables(p))
    assert list(fastckpt.restore(p)) == ["x"]
    assert not os.path.exists(p + ".meta")


def test_structure_record_name_is_reserved(tmp_path):
    with pytest.raises(fastckpt.InvalidArgumentError, match="reserved"):
        fastckpt.save({STRUCTURE_KEY: np.zeros(1)}, str(tmp_path / "c"))
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("bad,match", [
    ({(1, 2): np.zeros(1)}, "keys must be str, int"),
    ({"a": {float("nan"): np.zeros(1)}}, "finite"),
    ({"a": {1: np.zeros(1), "1": np.zeros(1)}}, "same name"),
    ({"a": {1, 2}}, "cannot save builtins.set at a"),
    ({"a": object()}, "cannot save builtins.object"),
    ({"a/b": np.zeros(1), "a": {"b": np.zeros(1)}}, "same name"),
    (np.zeros(3), "dict, list or tuple"),
    ({"": np.zeros(1)}, "empty"),
    ({"a": {"": np.zeros(1)}}, "empty dict key"),
])
def test_bad_structures(tmp_path, bad, match):
    with pytest.raises(fastckpt.InvalidArgumentError, match=match):
        fastckpt.save(bad, str(tmp_path / "c"))
    assert not os.listdir(tmp_path)


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(fastckpt.InvalidArgumentError, match="JSON"):
        fastckpt.save({"a": np.zeros(1)}, str(tmp_path / "c"), metadata={"x": object()})


def test_metadata_takes_numpy_torch_and_jax_scalars_and_gives_back_python_values(tmp_path):
    """A step or a loss taken straight from numpy or PyTorch (with grad
    too) is stored as the Python value it holds (JAX scalars:
    tests/api/test_jax_targets.py); an array, a complex or a NaN is still
    refused, naming JSON."""
    import ml_dtypes
    meta = {"step": np.int64(12), "lr": np.float32(0.5), "done": np.bool_(True), "zero_d": np.array(3),
            "bf16": np.array(1.5, ml_dtypes.bfloat16)[()], "nested": [np.uint8(7), {"k": np.float64(0.25)}]}
    want = {"step": 12, "lr": 0.5, "done": True, "zero_d": 3, "bf16": 1.5, "nested": [7, {"k": 0.25}]}
    torch = None
    try:
        import torch
    except ImportError:
        pass
    if torch is not None:
        meta["loss"] = torch.tensor(2.5, requires_grad=True) * 1
        meta["epoch"] = torch.tensor(4)
        want.update(loss=2.5, epoch=4)
    p = fastckpt.save({"a": np.zeros(1)}, str(tmp_path / "c"), metadata=meta)
    got = fastckpt.read_meta(p)["metadata"]
    assert got == want and type(got["step"]) is int and type(got["done"]) is bool
    for bad in (np.zeros(2), np.complex64(1j), np.float32("nan")):
        with pytest.raises(fastckpt.InvalidArgumentError, match="JSON"):
            fastckpt.save({"a": np.zeros(1)}, str(tmp_path / "d"), metadata={"x": bad})
    assert not os.path.exists(tmp_path / "d.index")


def _with_record(tmp_path, record, **tensors):
    """A bundle whose structure record is ``record`` (valid checksums)."""
    raw = record if isinstance(record, bytes) else json.dumps(record).encode()
    tensors[STRUCTURE_KEY] = np.frombuffer(raw, np.uint8)
    return fastckpt.write_bundle(str(tmp_path / "c"), tensors)


@pytest.mark.parametrize("record,match", [
    (b"{not json", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "corrupt"),
    ({"format": "fastckpt.structure", "version": 1, "structure": {"leaf": "zz"}, "leaves": {"zz": {}}}, "zz"),
    ({"format": "fastckpt.structure", "version": 1, "structure": {"leaf": "a"},
      "leaves": {"a": {"dtype": "float32", "shape": [2]}}}, "float64"),
    ({"format": "fastckpt.structure", "version": 1, "structure": {"leaf": "a"},
      "leaves": {"a": {"dtype": "float64", "shape": [3]}}}, "shape"),
    ({"format": "fastckpt.structure", "version": 1,
      "structure": {"list": [{"leaf": "a"}, {"leaf": "a"}]}, "leaves": {"a": {"dtype": "float64", "shape": [2]}}},
     "same tensor"),
    ({"format": "fastckpt.structure", "version": 1, "structure": {"dict": [["k"]]}, "leaves": {}}, "pairs"),
    ({"format": "fastckpt.structure", "version": "1", "structure": {"dict": []}, "leaves": {}}, "version"),
    ({"format": "fastckpt.structure", "version": 1, "structure": {"leaf": 3}, "leaves": {}}, "leaf"),
    ({"format": "other"}, "not a fastckpt"),
    (json.loads("[" * 300 + "]" * 300), "not a fastckpt"),
])
def test_corrupt_structure_record_is_data_loss(tmp_path, record, match):
    p = _with_record(tmp_path, record, a=np.zeros(2))
    with pytest.raises(fastckpt.DataLossError, match=match):
        fastckpt.restore(p)
    assert not fastckpt.verify_checkpoint(p).ok


def test_deep_structure_record_is_data_loss_not_recursion(tmp_path):
    for depth, match in ((300, "deeper"), (200_000, "not JSON")):
        node = '{"list": [' * depth + '{"leaf": "a"}' + "]}" * depth
        raw = ('{"format": "fastckpt.structure", "version": 1, "structure": ' + node +
               ', "leaves": {"a": {"dtype": "float64", "shape": [2]}}}').encode()
        p = _with_record(tmp_path, raw, a=np.zeros(2))
        with pytest.raises(fastckpt.DataLossError, match=match):
            fastckpt.restore(p)


def test_newer_structure_record_is_unsupported(tmp_path):
    p = _with_record(tmp_path, {"format": "fastckpt.structure", "version": 99, "structure": {"dict": []},
                                "leaves": {}})
    with pytest.raises(fastckpt.UnsupportedError, match="newer"):
        fastckpt.restore(p)


def test_a_tf1_meta_graph_beside_the_checkpoint_is_ignored(tmp_path):
    p = fastckpt.save({"a": {"b": np.ones(2)}}, str(tmp_path / "c"))
    with open(p + ".meta", "wb") as f:  # what tf.compat.v1.train.Saver writes: a binary MetaGraphDef
        f.write(b"\n\x0f\n\x0b\x08\x01\x12\x07\x08\x01\x12\x03\x08\x01\x10\x01")
    assert fastckpt.restore(p)["a"]["b"].tolist() == [1.0, 1.0]


def test_saver_accepts_nested_state_and_deletes_meta_with_retention(tmp_path):
    saver = fastckpt.Saver(max_to_keep=1)
    saver.save({"a": [np.zeros(2)]}, str(tmp_path / "m"), global_step=1)
    saver.save({"a": [np.ones(2)]}, str(tmp_path / "m"), global_step=2)
    assert not os.path.exists(str(tmp_path / "m-1.meta"))
    assert fastckpt.restore(str(tmp_path / "m-2"))["a"][0].tolist() == [1.0, 1.0]
