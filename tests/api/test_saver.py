"""Saver: global-step naming, the state file, retention, restore."""

import os

import numpy as np
import pytest

import fastckpt
from fastckpt.bundle.naming import checkpoint_files

STATE = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3)}


def files(d):
    return sorted(os.listdir(d))


def test_seed_flow(tmp_path):
    saver = fastckpt.Saver(max_to_keep=5)
    prefix = saver.save(STATE, str(tmp_path / "my_model" / "my-model"), global_step=1000)
    assert prefix == str(tmp_path / "my_model" / "my-model-1000")
    ckpt = fastckpt.get_checkpoint_state(str(tmp_path / "my_model"))
    assert ckpt.model_checkpoint_path == prefix
    state = saver.restore(ckpt.model_checkpoint_path)
    assert np.array_equal(state["w"], STATE["w"]) and np.array_equal(state["b"], STATE["b"])


@pytest.mark.parametrize("step,suffix", [(0, "0"), (1000, "1000"), (np.int64(7), "7"), (np.array(12), "12"),
                                         (-3, "-3")])
def test_global_step_kinds(tmp_path, step, suffix):
    p = fastckpt.Saver().save(STATE, str(tmp_path / "m"), global_step=step)
    assert p.endswith("m-" + suffix)


@pytest.mark.parametrize("step", [1.5, "12", True, np.array([1, 2])])
def test_bad_global_step(tmp_path, step):
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.Saver().save(STATE, str(tmp_path / "m"), global_step=step)
    assert not os.listdir(tmp_path)


def test_no_step_uses_path_as_is(tmp_path):
    p = fastckpt.Saver().save(STATE, str(tmp_path / "model.ckpt"))
    assert p == str(tmp_path / "model.ckpt")
    assert fastckpt.latest_checkpoint(str(tmp_path)) == p


def test_save_path_colliding_with_state_file(tmp_path):
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.Saver().save(STATE, str(tmp_path / "checkpoint"))


def test_max_to_keep_deletes_oldest_after_state_update(tmp_path):
    saver = fastckpt.Saver(max_to_keep=2)
    for step in range(1, 5):
        saver.save(STATE, str(tmp_path / "m"), global_step=step)
    assert files(tmp_path) == ["checkpoint", "checkpoint.lock", "m-3.data-00000-of-00001", "m-3.index",
                               "m-4.data-00000-of-00001", "m-4.index"]
    st = fastckpt.get_checkpoint_state(tmp_path)
    assert [os.path.basename(p) for p in st.all_model_checkpoint_paths] == ["m-3", "m-4"]
    assert len(st.all_model_checkpoint_timestamps) == 2
    assert saver.last_checkpoints == [str(tmp_path / "m-3"), str(tmp_path / "m-4")]


def test_max_to_keep_none_keeps_all(tmp_path):
    saver = fastckpt.Saver(max_to_keep=None)
    for step in range(6):
        saver.save(STATE, str(tmp_path / "m"), global_step=step)
    assert len(fastckpt.get_checkpoint_state(tmp_path).all_model_checkpoint_paths) == 6
    assert len([f for f in files(tmp_path) if f.endswith(".index")]) == 6


def test_retention_survives_a_restart(tmp_path):
    for step in range(3):
        fastckpt.Saver(max_to_keep=3).save(STATE, str(tmp_path / "m"), global_step=step)
    # a new process (a new Saver) adopts the listed checkpoints
    saver = fastckpt.Saver(max_to_keep=3)
    saver.save(STATE, str(tmp_path / "m"), global_step=3)
    assert [f for f in files(tmp_path) if f.endswith(".index")] == ["m-1.index", "m-2.index", "m-3.index"]


def test_only_managed_files_are_deleted(tmp_path):
    (tmp_path / "m-0.index.txt").write_text("user file")
    (tmp_path / "m-0.notes").write_text("user file")
    saver = fastckpt.Saver(max_to_keep=1)
    saver.save(STATE, str(tmp_path / "m"), global_step=0)
    saver.save(STATE, str(tmp_path / "m"), global_step=1)
    assert "m-0.index.txt" in files(tmp_path) and "m-0.notes" in files(tmp_path)
    assert "m-0.index" not in files(tmp_path)


def test_keep_checkpoint_every_n_hours_preserves(tmp_path, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(fastckpt.directory.retention.time, "time", lambda: clock[0])
    saver = fastckpt.Saver(max_to_keep=1, keep_checkpoint_every_n_hours=1)
    for step in range(4):
        clock[0] += 1800  # half an hour per save
        saver.save(STATE, str(tmp_path / "m"), global_step=step)
    kept = sorted(f for f in files(tmp_path) if f.endswith(".index"))
    # m-1 is 1 h after the saver started: preserved; m-0 and m-2 deleted
    assert kept == ["m-1.index", "m-3.index"]
    st = fastckpt.get_checkpoint_state(tmp_path)
    assert [os.path.basename(p) for p in st.all_model_checkpoint_paths] == ["m-3"]


def test_resave_same_step_replaces(tmp_path):
    saver = fastckpt.Saver(max_to_keep=3)
    saver.save(STATE, str(tmp_path / "m"), global_step=1)
    saver.save({"w": np.zeros(2)}, str(tmp_path / "m"), global_step=1)
    st = fastckpt.get_checkpoint_state(tmp_path)
    assert [os.path.basename(p) for p in st.all_model_checkpoint_paths] == ["m-1"]
    assert list(saver.restore(str(tmp_path / "m-1"))) == ["w"]


def test_restore_errors(tmp_path):
    saver = fastckpt.Saver()
    with pytest.raises(fastckpt.InvalidArgumentError, match="None"):
        saver.restore(None)
    with pytest.raises(fastckpt.NotFoundError, match="no checkpoint at"):
        saver.restore(str(tmp_path / "nothing"))


def test_restore_accepts_index_and_data_file_paths(tmp_path):
    p = fastckpt.Saver().save(STATE, str(tmp_path / "m"), global_step=5)
    for path in (p + ".index", p + ".data-00000-of-00001"):
        assert sorted(fastckpt.Saver().restore(path)) == ["b", "w"]


def test_restore_into(tmp_path):
    p = fastckpt.Saver().save(STATE, str(tmp_path / "m"))
    into = {"w": np.empty((2, 3), np.float32)}
    assert fastckpt.Saver().restore(p, into=into) is into
    assert np.array_equal(into["w"], STATE["w"])


@pytest.mark.parametrize("kwargs", [dict(max_to_keep=-1), dict(max_to_keep=1.5), dict(keep_checkpoint_every_n_hours=0),
                                    dict(keep_checkpoint_every_n_hours="x")])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.Saver(**kwargs)


def test_checkpoint_files_matches_exactly(tmp_path):
    p = fastckpt.write_bundle(str(tmp_path / "m-1"), {"x": [1]}, num_shards=2)
    fastckpt.write_bundle(str(tmp_path / "m-10"), {"x": [1]})
    assert [os.path.basename(f) for f in checkpoint_files(p)] == [
        "m-1.data-00000-of-00002", "m-1.data-00001-of-00002", "m-1.index"]


def test_saver_options_pass_through(tmp_path):
    p = fastckpt.Saver(num_shards=3, durable=False).save(STATE, str(tmp_path / "m"))
    assert fastckpt.load_checkpoint(p).num_shards == 3
