"""Conversions against live TensorFlow: what fastckpt convert writes from
safetensors, PyTorch and npz (plain, sharded) TensorFlow reads bit for bit,
and checkpoints TensorFlow wrote convert to every other format."""

import os

import ml_dtypes
import numpy as np
import pytest

import fastckpt
from fastckpt.formats.convert import convert

tf = pytest.importorskip("tensorflow")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TENSORS = {"emb/weight": np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32),
           "bias": np.arange(8, dtype=np.float64), "steps": np.array(3, np.int64),
           "flags": np.array([True, False]), "half": np.array([1.5, -2.0], np.float16)}


@pytest.mark.parametrize("src", ["m.safetensors", "m.npz", "m.pt"])
@pytest.mark.parametrize("shards", [1, 3])
def test_tensorflow_reads_what_convert_writes(tmp_path, src, shards):
    path = str(tmp_path / src)
    if src.endswith(".safetensors"):
        safetensors_numpy.save_file(dict(TENSORS, bf=np.ones(3, ml_dtypes.bfloat16)), path)
    elif src.endswith(".npz"):
        np.savez(path, **TENSORS)
    else:
        torch = pytest.importorskip("torch")
        torch.save({k: torch.from_numpy(v.copy()) for k, v in TENSORS.items()}, path)
    convert(path, str(tmp_path / "ck"), num_shards=shards)
    reader = tf.train.load_checkpoint(str(tmp_path / "ck"))
    for name, want in TENSORS.items():
        got = reader.get_tensor(name)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name
    if src.endswith(".safetensors"):
        assert reader.get_tensor("bf").dtype == ml_dtypes.bfloat16


def test_tensorflow_checkpoints_convert_to_every_format(tmp_path):
    v = tf.Variable(TENSORS["emb/weight"])
    b = tf.Variable(TENSORS["bias"])
    saver_dir = str(tmp_path / "tf")
    prefix = tf.train.Checkpoint(v=v, b=b).save(os.path.join(saver_dir, "ckpt"))
    for dst in ("x.safetensors", "x.npz", "x.pt"):
        if dst.endswith(".pt"):
            pytest.importorskip("torch")
        convert(saver_dir, str(tmp_path / dst))  # a directory: its latest checkpoint
        assert fastckpt.diff(prefix, str(tmp_path / dst)).only_in_a == ["_CHECKPOINTABLE_OBJECT_GRAPH"]
    got = safetensors_numpy.load_file(str(tmp_path / "x.safetensors"))
    np.testing.assert_array_equal(got["v/.ATTRIBUTES/VARIABLE_VALUE"], TENSORS["emb/weight"])
    # and back: the TensorFlow 2 keys survive, so TF1-style name-based restore finds them
    convert(str(tmp_path / "x.safetensors"), str(tmp_path / "back"))
    assert tf.train.load_checkpoint(str(tmp_path / "back")).get_tensor("b/.ATTRIBUTES/VARIABLE_VALUE").tolist() == \
        TENSORS["bias"].tolist()
