"""The `checkpoint` state file: parsing, formatting, TF's path rules,
latest_checkpoint, and atomic updates."""

import os

import pytest
from hypothesis import given, strategies as st

import fastckpt
from fastckpt.directory.state import (CheckpointState, format_checkpoint_state, parse_checkpoint_state,
                            update_checkpoint_state)

MANAGER_TEXT = """model_checkpoint_path: "ckpt-4"
all_model_checkpoint_paths: "ckpt-3"
all_model_checkpoint_paths: "ckpt-4"
all_model_checkpoint_timestamps: 1795479072.029999
all_model_checkpoint_timestamps: 1795479072.0427692
last_preserved_timestamp: 1795479070.8370311
"""


def test_format_matches_tf_manager_text():
    st_ = parse_checkpoint_state(MANAGER_TEXT)
    assert st_.all_model_checkpoint_paths == ["ckpt-3", "ckpt-4"]
    assert st_.all_model_checkpoint_timestamps == [1795479072.029999, 1795479072.0427692]
    assert format_checkpoint_state(st_) == MANAGER_TEXT


def test_format_omits_defaults_and_prints_shortest_doubles():
    text = format_checkpoint_state(CheckpointState("a", ["a"], [1e20], 0.0))
    assert text == 'model_checkpoint_path: "a"\nall_model_checkpoint_paths: "a"\nall_model_checkpoint_timestamps: 1e+20\n'


def test_parse_is_lenient_about_layout_and_escapes():
    text = '# comment\nmodel_checkpoint_path:"a\\"b\\\\c\\303\\251" all_model_checkpoint_paths: \'x\' "y"\n'
    st_ = parse_checkpoint_state(text)
    assert st_.model_checkpoint_path == 'a"b\\cé'
    assert st_.all_model_checkpoint_paths == ["xy"]


@pytest.mark.parametrize("bad", ["this: 1", "model_checkpoint_path 'x'", 'model_checkpoint_path: 3',
                                 'model_checkpoint_path: "unterminated', "garbage!!"])
def test_parse_rejects_garbage(bad):
    with pytest.raises(ValueError):
        parse_checkpoint_state(bad)


text_st = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(text_st, st.lists(text_st, max_size=4),
       st.floats(allow_nan=False, allow_infinity=False, min_value=0))
def test_format_parse_roundtrip(model, paths, preserved):
    s = CheckpointState(model, paths, [1.5] * len(paths), preserved)
    back = parse_checkpoint_state(format_checkpoint_state(s))
    assert back.all_model_checkpoint_paths == paths and back.model_checkpoint_path == model
    assert back.last_preserved_timestamp == preserved


def test_missing_state_file_is_none(tmp_path):
    assert fastckpt.get_checkpoint_state(tmp_path) is None
    assert fastckpt.latest_checkpoint(tmp_path) is None


def test_relative_paths_are_joined_absolute_kept(tmp_path):
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "m-2"\nall_model_checkpoint_paths: "/abs/m-1"\nall_model_checkpoint_paths: "m-2"\n')
    st_ = fastckpt.get_checkpoint_state(str(tmp_path))
    assert st_.model_checkpoint_path == os.path.join(str(tmp_path), "m-2")
    assert st_.all_model_checkpoint_paths == ["/abs/m-1", os.path.join(str(tmp_path), "m-2")]


@pytest.mark.parametrize("content", ["", 'all_model_checkpoint_paths: "x"\n'])
def test_state_naming_no_checkpoint_is_an_error_naming_the_file(tmp_path, content):
    (tmp_path / "checkpoint").write_text(content)
    with pytest.raises(fastckpt.DataLossError, match="checkpoint") as e:
        fastckpt.get_checkpoint_state(tmp_path)
    assert isinstance(e.value, ValueError)
    assert str(tmp_path) in str(e.value)


def test_garbage_state_file_is_an_error_not_none(tmp_path):
    (tmp_path / "checkpoint").write_text("this: is not a state file\n")
    with pytest.raises(fastckpt.DataLossError, match=str(tmp_path / "checkpoint")):
        fastckpt.get_checkpoint_state(tmp_path)


def test_state_file_that_is_a_directory(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    with pytest.raises(fastckpt.DataLossError, match="directory"):
        fastckpt.get_checkpoint_state(tmp_path)


def test_latest_filename_must_be_plain(tmp_path):
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.get_checkpoint_state(tmp_path, latest_filename="sub/checkpoint")


def test_latest_checkpoint_checks_index_literally_even_with_brackets(tmp_path):
    d = tmp_path / "run[1]*?"
    prefix = fastckpt.Saver().save({"x": [1.0]}, str(d / "model"), global_step=3)
    assert fastckpt.latest_checkpoint(str(d)) == prefix
    os.unlink(prefix + ".index")
    assert fastckpt.latest_checkpoint(str(d)) is None


def test_update_writes_relative_paths_and_appends_model(tmp_path):
    update_checkpoint_state(str(tmp_path), str(tmp_path / "m-2"), [str(tmp_path / "m-1")],
                            durable=False)
    text = (tmp_path / "checkpoint").read_text()
    assert text == 'model_checkpoint_path: "m-2"\nall_model_checkpoint_paths: "m-1"\nall_model_checkpoint_paths: "m-2"\n'
    assert not [n for n in os.listdir(tmp_path) if n.startswith("checkpoint.tmp")]


def test_update_keeps_paths_outside_the_directory_absolute(tmp_path):
    other = tmp_path / "elsewhere" / "m-1"
    (tmp_path / "d").mkdir()
    update_checkpoint_state(str(tmp_path / "d"), str(other), durable=False)
    st_ = fastckpt.get_checkpoint_state(tmp_path / "d")
    assert st_.model_checkpoint_path == str(other)


def test_update_rejects_bad_arguments(tmp_path):
    with pytest.raises(fastckpt.InvalidArgumentError):
        update_checkpoint_state(str(tmp_path), "")
    with pytest.raises(fastckpt.InvalidArgumentError, match="conflicts"):
        update_checkpoint_state(str(tmp_path), str(tmp_path / "checkpoint"))
    with pytest.raises(fastckpt.InvalidArgumentError, match="timestamps"):
        update_checkpoint_state(str(tmp_path), "a", ["a"], all_model_checkpoint_timestamps=[1.0, 2.0])


def test_update_failure_leaves_old_state_and_no_temp(tmp_path):
    update_checkpoint_state(str(tmp_path), "m-1", durable=False)
    before = (tmp_path / "checkpoint").read_text()
    with pytest.raises(fastckpt.CheckpointIOError):
        update_checkpoint_state(str(tmp_path / "missing-dir"), "m-2", durable=False)
    assert (tmp_path / "checkpoint").read_text() == before
