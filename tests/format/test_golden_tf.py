"""Checkpoints written by TensorFlow 2.21 (tests/data, see make_golden.py),
read without TensorFlow. These never skip."""

import os

import numpy as np
import pytest

import fastckpt
import tests.helpers.golden_values as gv
from tests.helpers.roundtrip import assert_bit_equal


def test_tf1_saver_relative_state_and_all_dtypes(data_dir):
    d = os.path.join(data_dir, "tf1_saver")
    st = fastckpt.get_checkpoint_state(d)
    assert st.model_checkpoint_path == os.path.join(d, "my-model-3000")
    assert st.all_model_checkpoint_paths == [os.path.join(d, "my-model-2000"), os.path.join(d, "my-model-3000")]
    assert st.all_model_checkpoint_timestamps == []
    got = fastckpt.Saver().restore(fastckpt.latest_checkpoint(d))
    want = gv.tf1_values()
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert_bit_equal(got[k], v)


def test_tf1_sharded_three_data_files(data_dir):
    d = os.path.join(data_dir, "tf1_sharded")
    # the state file TF wrote holds absolute paths of the machine that made it
    st = fastckpt.get_checkpoint_state(d)
    assert os.path.isabs(st.model_checkpoint_path) and st.model_checkpoint_path.endswith("tf1_sharded/model-7")
    prefix = os.path.join(d, "model-7")
    with fastckpt.load_checkpoint(prefix) as r:
        assert r.num_shards == 3
        got = r.read()
    for k, v in gv.sharded_values().items():
        assert_bit_equal(got[k], v)


def test_tf1_partitioned_variable_is_assembled(data_dir):
    prefix = os.path.join(data_dir, "tf1_partitioned", "model")
    assert fastckpt.list_variables(prefix) == [("part", [10, 4])]
    assert_bit_equal(fastckpt.read_bundle(prefix)["part"], gv.partitioned_value())
    into = {"part": np.zeros((10, 4), np.float32)}
    fastckpt.read_bundle(prefix, into=into)
    assert_bit_equal(into["part"], gv.partitioned_value())


def _tf2_expect(got):
    vals = gv.tf2_values()
    for k in ("kernel", "bias", "words"):
        assert_bit_equal(got[f"model/{k}/.ATTRIBUTES/VARIABLE_VALUE"], vals[k])
    graph = got["_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert graph.shape == () and isinstance(graph.item(), bytes) and b"VARIABLE_VALUE" in graph.item()


def test_tf2_checkpoint(data_dir):
    d = os.path.join(data_dir, "tf2_checkpoint")
    assert fastckpt.latest_checkpoint(d) == os.path.join(d, "ckpt-1")
    got = fastckpt.read_bundle(fastckpt.latest_checkpoint(d))
    _tf2_expect(got)
    assert got["save_counter/.ATTRIBUTES/VARIABLE_VALUE"] == 1


def test_tf2_manager_state_with_timestamps(data_dir):
    d = os.path.join(data_dir, "tf2_manager")
    st = fastckpt.get_checkpoint_state(d)
    assert [os.path.basename(p) for p in st.all_model_checkpoint_paths] == ["ckpt-2", "ckpt-3"]
    assert len(st.all_model_checkpoint_timestamps) == 2 and st.last_preserved_timestamp > 0
    got = fastckpt.read_bundle(fastckpt.latest_checkpoint(d))
    _tf2_expect(got)
    assert got["save_counter/.ATTRIBUTES/VARIABLE_VALUE"] == 3


def test_tf2_sharded_policy_slices_across_shards(data_dir):
    prefix = os.path.join(data_dir, "tf2_sharded_policy", "ckpt")
    with fastckpt.load_checkpoint(prefix) as r:
        assert r.num_shards == 3
        _tf2_expect(r.read())


@pytest.mark.parametrize("name", ["tf1_saver/my-model-3000", "tf1_sharded/model-7", "tf1_partitioned/model",
                                  "tf2_checkpoint/ckpt-1", "tf2_sharded_policy/ckpt"])
def test_goldens_reread_identically_after_rewrite(data_dir, tmp_path, name):
    """fastckpt re-saving what TF wrote gives the same tensors back."""
    got = fastckpt.read_bundle(os.path.join(data_dir, name))
    again = fastckpt.read_bundle(fastckpt.write_bundle(str(tmp_path / "re"), got))
    for k in got:
        assert_bit_equal(again[k], got[k])


def test_single_shard_rewrite_is_byte_identical(data_dir, tmp_path):
    """Same tensors in TF's order -> same .index bytes as TF wrote."""
    src = os.path.join(data_dir, "tf1_saver", "my-model-3000")
    got = fastckpt.read_bundle(src)
    out = fastckpt.write_bundle(str(tmp_path / "re"), got)
    assert open(out + ".index", "rb").read() == open(src + ".index", "rb").read()
