"""Every public function gives a clear fastckpt error for bad input, and
bad input never leaves files behind or damages an existing checkpoint."""

import errno
import os

import numpy as np
import pytest

import fastckpt


def test_error_hierarchy():
    assert issubclass(fastckpt.NotFoundError, FileNotFoundError)
    assert issubclass(fastckpt.TensorNotFoundError, KeyError)
    assert issubclass(fastckpt.DataLossError, ValueError)
    assert issubclass(fastckpt.InvalidArgumentError, ValueError)
    assert issubclass(fastckpt.CheckpointIOError, OSError)
    assert issubclass(fastckpt.UnsupportedError, NotImplementedError)
    for cls in (fastckpt.NotFoundError, fastckpt.DataLossError, fastckpt.InvalidArgumentError,
                fastckpt.CheckpointIOError, fastckpt.UnsupportedError, fastckpt.TensorNotFoundError):
        assert issubclass(cls, fastckpt.CheckpointError)


@pytest.mark.parametrize("tensors,match", [
    ({"": np.zeros(1)}, "empty tensor name"),
    ({"\x00x": np.zeros(1)}, "NUL"),
    ({3: np.zeros(1)}, "must be str"),
    ({"d": np.zeros(2, "datetime64[s]")}, "no TensorFlow equivalent"),
    ({"o": np.array([1, 2], dtype=object)}, "bytes or str"),
    ({"v": np.zeros(1, dtype=[("a", "i4")])}, "no TensorFlow equivalent"),
    ({"a": np.zeros(1), b"a": np.zeros(1)}, "duplicate"),
    ([("a", np.zeros(1))], "mapping"),
])
def test_bad_tensors(tmp_path, tensors, match):
    with pytest.raises(fastckpt.InvalidArgumentError, match=match):
        fastckpt.write_bundle(str(tmp_path / "c"), tensors)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs", [dict(num_shards=0), dict(num_shards=1.0), dict(alignment=0),
                                    dict(alignment=True), dict(threads=0)])
def test_bad_write_options(tmp_path, kwargs):
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.write_bundle(str(tmp_path / "c"), {"a": [1]}, **kwargs)


@pytest.mark.parametrize("prefix", ["", "dir/"])
def test_bad_prefix(tmp_path, prefix):
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.write_bundle(prefix, {"a": [1]})


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"a": np.arange(3)})
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.write_bundle(p, {"a": np.arange(3), "bad": np.array([object()], dtype=object)})
    assert np.array_equal(fastckpt.read_bundle(p)["a"], np.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["c.data-00000-of-00001", "c.index"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_permission_error_is_oserror_with_errno(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(fastckpt.CheckpointIOError) as e:
            fastckpt.write_bundle(str(d / "c"), {"a": [1]})
        assert e.value.errno == errno.EACCES
    finally:
        d.chmod(0o700)


def test_write_into_a_file_as_directory_is_oserror(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(fastckpt.CheckpointIOError) as e:
        fastckpt.write_bundle(str(tmp_path / "f" / "c"), {"a": [1]})
    assert e.value.errno in (errno.ENOTDIR, errno.EEXIST)


def test_read_bad_names(tmp_path):
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"a": [1]})
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.read_bundle(p, [3])
    with pytest.raises(fastckpt.TensorNotFoundError):
        fastckpt.read_bundle(p, ["\x00hidden"])


def test_index_is_a_directory(tmp_path):
    (tmp_path / "c.index").mkdir()
    with pytest.raises(fastckpt.NotFoundError):
        fastckpt.read_bundle(str(tmp_path / "c"))


# ---- the attack's class 9: errors of the wrong kind or place ---------------------------

def test_shape_no_array_can_have_is_data_loss_everywhere(tmp_path):
    from fastckpt import _core
    prefix = str(tmp_path / "s")
    open(prefix + ".data-00000-of-00001", "wb").close()
    with open(prefix + ".index", "wb") as f:
        f.write(_core.build_table([(b"", _core.encode_header()),
                                   (b"x", _core.encode_entry(1, (0, 2**40, 2**40), 0, 0, 0, 0))]))
    with pytest.raises(fastckpt.DataLossError, match="shape too large"):
        fastckpt.read_bundle(prefix)
    report = fastckpt.verify_checkpoint(prefix)
    assert not report.ok and "shape too large" in report.problems[0]


def _listing(d):
    return sorted(os.listdir(d))


def test_lock_file_that_is_a_directory(tmp_path):
    saver = fastckpt.Saver()
    saver.save({"a": np.zeros(2)}, str(tmp_path / "m"), global_step=1)
    os.unlink(tmp_path / "checkpoint.lock")
    os.mkdir(tmp_path / "checkpoint.lock")
    before = _listing(tmp_path)
    with pytest.raises(fastckpt.DataLossError, match="checkpoint.lock"):
        saver.save({"a": np.ones(2)}, str(tmp_path / "m"), global_step=2)
    assert _listing(tmp_path) == before


def test_dangling_lock_symlink_creates_nothing_elsewhere(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere / "target", d / "checkpoint.lock")
    with pytest.raises(fastckpt.DataLossError, match="checkpoint.lock"):
        fastckpt.Saver().save({"a": np.zeros(2)}, str(d / "m"), global_step=1)
    assert _listing(elsewhere) == []
    assert _listing(d) == ["checkpoint.lock"]


def test_new_subdirectory_on_a_read_only_file_system(tmp_path):
    import subprocess
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        for save in (lambda: fastckpt.Saver().save({"a": np.zeros(2)}, str(ro / "sub" / "m"), global_step=1),
                     lambda: fastckpt.CheckpointManager(ro / "sub").save({"a": np.zeros(2)}, 1),
                     lambda: fastckpt.save({"a": np.zeros(2)}, str(ro / "sub" / "m")),
                     lambda: fastckpt.write_bundle(str(ro / "sub" / "m"), {"a": np.zeros(2)})):
            with pytest.raises(fastckpt.CheckpointIOError, match="sub") as e:
                save()
            assert e.value.errno == errno.EROFS
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


@pytest.mark.parametrize("api", ["write_bundle", "save", "saver", "manager"])
def test_long_names_work_up_to_the_limit_and_fail_cleanly_past_it(tmp_path, api):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = limit - len(".data-00000-of-00001")
    state = {"a": np.arange(3.0)}

    def save(base):
        if api == "write_bundle":
            return fastckpt.write_bundle(str(tmp_path / base), state)
        if api == "save":
            return fastckpt.save(state, str(tmp_path / base))
        if api == "saver":
            return fastckpt.Saver().save(state, str(tmp_path / base[:-3]), global_step=10)
        return fastckpt.CheckpointManager(tmp_path, checkpoint_name=base[:-3]).save(state, 10)
    p = save("b" * longest)
    assert os.path.basename(p) == "b" * (longest - 3) + "-10" or os.path.basename(p) == "b" * longest
    assert fastckpt.read_bundle(p)["a"].tolist() == [0.0, 1.0, 2.0]
    before = _listing(tmp_path)
    with pytest.raises(fastckpt.InvalidArgumentError, match="allows at most"):
        save("c" * (longest + 1))
    assert _listing(tmp_path) == before
