"""Retention deletes only files directly inside the directory it manages,
only of checkpoints the state file listed, and never one still listed --
whatever a (hostile or hand-edited) state file says."""

import os

import numpy as np
import pytest

import fastckpt

STATE = {"w": np.arange(4, dtype=np.float32)}


def make_victim(d):
    d.mkdir(parents=True, exist_ok=True)
    fastckpt.write_bundle(str(d / "x"), STATE)
    (d / "x.meta").write_bytes(b"not ours")
    return sorted(os.listdir(d))


def write_state(d, entries):
    d.mkdir(parents=True, exist_ok=True)
    lines = [f'model_checkpoint_path: "{entries[-1]}"'] + [f'all_model_checkpoint_paths: "{e}"' for e in entries]
    (d / "checkpoint").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("how", ["absolute", "dotdot", "dotdot-inside", "symlinked-dir"])
@pytest.mark.parametrize("api", ["saver", "manager"])
def test_entries_outside_the_directory_are_never_deleted(tmp_path, how, api):
    victim = tmp_path / "victim"
    before = make_victim(victim)
    d = tmp_path / "run"
    d.mkdir()
    if how == "absolute":
        entry = str(victim / "x")
    elif how == "dotdot":
        entry = "../victim/x"
    elif how == "dotdot-inside":
        entry = "sub/../../victim/x"
    else:
        os.symlink(victim, d / "link")
        entry = "link/x"
    write_state(d, [entry])
    if api == "saver":
        saver = fastckpt.Saver(max_to_keep=1)
        for step in range(3):
            saver.save(STATE, str(d / "ckpt"), global_step=step)
    else:
        mgr = fastckpt.CheckpointManager(d, max_to_keep=1)
        for step in range(3):
            mgr.save(STATE, step, force=True)
    assert sorted(os.listdir(victim)) == before, "retention deleted files outside its directory"
    st = fastckpt.get_checkpoint_state(str(d))
    assert [os.path.basename(p) for p in st.all_model_checkpoint_paths] == ["ckpt-2"]
    assert sorted(os.listdir(d)) == sorted(n for n in os.listdir(d) if n.startswith(("ckpt-2.", "checkpoint", "link")))


def test_duplicate_entries_are_one_checkpoint(tmp_path):
    d = tmp_path / "run"
    saver = fastckpt.Saver(max_to_keep=2)
    saver.save(STATE, str(d / "ckpt"), global_step=1)
    saver.save(STATE, str(d / "ckpt"), global_step=2)
    write_state(d, ["ckpt-1", "./ckpt-2", "ckpt-2", "sub/../ckpt-2", str(d / "ckpt-2")])
    saver.save(STATE, str(d / "ckpt"), global_step=3)
    listed = [os.path.basename(p) for p in fastckpt.get_checkpoint_state(str(d)).all_model_checkpoint_paths]
    assert listed == ["ckpt-2", "ckpt-3"]
    assert fastckpt.verify_checkpoint(str(d / "ckpt-2")).ok
    assert not os.path.exists(d / "ckpt-1.index")


def test_a_listed_checkpoint_is_never_deleted(tmp_path):
    """The newest duplicate decides the position: a checkpoint listed both
    old and new stays."""
    d = tmp_path / "run"
    saver = fastckpt.Saver(max_to_keep=2)
    for step in (1, 2):
        saver.save(STATE, str(d / "ckpt"), global_step=step)
    write_state(d, ["ckpt-1", "ckpt-2", "./ckpt-1"])
    saver.save(STATE, str(d / "ckpt"), global_step=3)
    listed = [os.path.basename(p) for p in fastckpt.get_checkpoint_state(str(d)).all_model_checkpoint_paths]
    assert listed == ["ckpt-1", "ckpt-3"]
    assert fastckpt.verify_checkpoint(str(d / "ckpt-1")).ok


def test_only_the_checkpoints_own_files_are_deleted(tmp_path):
    d = tmp_path / "run"
    saver = fastckpt.Saver(max_to_keep=1)
    saver.save(STATE, str(d / "ckpt"), global_step=1)
    keep = ["ckpt-1.index.bak", "ckpt-1.data-00000-of-00001.orig", "ckpt-10.index", "ckpt-1x.meta", "ckpt-1"]
    for n in keep:
        (d / n).write_bytes(b"user file")
    saver.save(STATE, str(d / "ckpt"), global_step=2)
    assert all((d / n).exists() for n in keep)
    assert not (d / "ckpt-1.index").exists() and not (d / "ckpt-1.data-00000-of-00001").exists()


def test_a_reader_racing_retention_keeps_reading_what_it_opened(tmp_path):
    """What the README promises: a reader that opened a checkpoint before
    retention deleted it reads it whole (its data files were opened with the
    index); opening it after the delete is a NotFoundError naming it; a
    directory's reader follows the latest checkpoint."""
    mgr = fastckpt.CheckpointManager(tmp_path, max_to_keep=1)
    mgr.save({"w": np.full(1000, 1.0), "b": np.arange(3)}, 1)
    reader = fastckpt.load_checkpoint(tmp_path)
    view = reader["w"]
    mgr.save({"w": np.full(1000, 2.0), "b": np.arange(3)}, 2)  # retention deletes ckpt-1
    assert not os.path.exists(str(tmp_path / "ckpt-1.index"))
    assert reader.get_tensor("w").tolist() == [1.0] * 1000 and view.tolist() == [1.0] * 1000
    assert reader.read()["b"].tolist() == [0, 1, 2]
    reader.close()
    with pytest.raises(fastckpt.NotFoundError, match="ckpt-1"):
        fastckpt.load_checkpoint(str(tmp_path / "ckpt-1"))
    assert fastckpt.restore(tmp_path)["w"][0] == 2.0
