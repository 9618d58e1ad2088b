"""Against live TensorFlow: byte-identical output to SaveV2, TF reading what
fastckpt writes, fastckpt reading what TF writes. Skipped only where
TensorFlow cannot be installed (CI installs it)."""

import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastckpt
from tests.helpers.roundtrip import assert_bit_equal, flip_byte

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tensorflow

MIXED = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b/c": np.arange(5, dtype=np.int32),
    "str": np.array([b"hello", b"", b"x" * 200], dtype=object),
    "flags": np.array([True, False]),
    "f16": np.linspace(-1, 1, 3).astype(np.float16),
    "bf16": np.linspace(-2, 2, 4).astype(ml_dtypes.bfloat16),
    "i8": np.arange(-3, 3, dtype=np.int8),
    "u64": np.array([0, 2**64 - 1], np.uint64),
    "c64": np.array([1 + 2j, -3j], np.complex64),
    "c128": np.array([1 - 1j], np.complex128),
    "scalar": np.float64(2.5),
    "empty": np.zeros((0, 3), np.float32),
    "i16": np.arange(4, dtype=np.int16), "u16": np.arange(4, dtype=np.uint16),
    "u32": np.arange(4, dtype=np.uint32), "i64": np.arange(4, dtype=np.int64), "u8": np.arange(4, dtype=np.uint8),
    "f8e4": np.linspace(-1, 1, 5).astype(ml_dtypes.float8_e4m3fn),
    "f8e5": np.linspace(-1, 1, 5).astype(ml_dtypes.float8_e5m2),
    "i4": np.array([-8, -1, 0, 7], ml_dtypes.int4),
    "u4": np.array([0, 15], ml_dtypes.uint4),
    "unicode/名前": np.array(["héllo"]),
}


def savev2(prefix, tensors):
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(tensors), shape_and_slices=[""] * len(tensors),
                      tensors=[tf.constant(v) for v in tensors.values()])


def assert_same_files(a, b):
    for ext in (".index", ".data-00000-of-00001"):
        with open(a + ext, "rb") as fa, open(b + ext, "rb") as fb:
            assert fa.read() == fb.read(), ext


def test_byte_identical_to_savev2(tmp_path):
    savev2(str(tmp_path / "tf"), MIXED)
    fastckpt.write_bundle(str(tmp_path / "fc"), MIXED)
    assert_same_files(str(tmp_path / "tf"), str(tmp_path / "fc"))


def test_byte_identical_multi_block_index(tmp_path):
    tensors = {f"v{i:05d}/kernel": np.full(3, i, np.float32) for i in range(12000)}
    savev2(str(tmp_path / "tf"), tensors)
    fastckpt.write_bundle(str(tmp_path / "fc"), tensors)
    assert_same_files(str(tmp_path / "tf"), str(tmp_path / "fc"))


def test_byte_identical_huge_entry_flush(tmp_path):
    # a key+value >= 512 KiB forces TF's early block flush
    tensors = {"a": np.zeros(3, np.float32), "k" * 600_000: np.ones(2, np.float32), "z": np.zeros(1)}
    savev2(str(tmp_path / "tf"), tensors)
    fastckpt.write_bundle(str(tmp_path / "fc"), tensors)
    assert_same_files(str(tmp_path / "tf"), str(tmp_path / "fc"))


names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12)
dtypes = st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint8, np.float16, ml_dtypes.bfloat16,
                          np.bool_, np.complex64])


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(names, st.tuples(dtypes, st.lists(st.integers(0, 4), max_size=3)), min_size=1, max_size=6))
def test_property_byte_identical(tmp_path_factory, spec):
    d = tmp_path_factory.mktemp("p")
    rng = np.random.default_rng(0)
    tensors = {n: (rng.standard_normal(shape) * 10).astype(dt) for n, (dt, shape) in spec.items()}
    savev2(str(d / "tf"), tensors)
    fastckpt.write_bundle(str(d / "fc"), tensors)
    assert_same_files(str(d / "tf"), str(d / "fc"))


@pytest.mark.parametrize("opts", [dict(), dict(num_shards=3), dict(alignment=64), dict(num_shards=2, alignment=4096)],
                         ids=str)
def test_tf_reads_fastckpt(tmp_path, opts):
    prefix = fastckpt.write_bundle(str(tmp_path / "fc"), MIXED, **opts)
    r = tf.train.load_checkpoint(prefix)
    assert r.get_variable_to_shape_map() == {k: list(np.shape(v)) for k, v in MIXED.items()}
    for k, v in MIXED.items():
        assert_bit_equal(np.asarray(r.get_tensor(k)), v)
    assert tf.train.list_variables(prefix) == sorted((k, list(np.shape(v))) for k, v in MIXED.items())


def test_tf_reads_saver_directory_and_state(tmp_path):
    saver = fastckpt.Saver(max_to_keep=2)
    for step in (10, 20, 30):
        prefix = saver.save({"w": np.full(3, step, np.float32)}, str(tmp_path / "model"), global_step=step)
    st_ = tf.train.get_checkpoint_state(str(tmp_path))
    assert st_.model_checkpoint_path == prefix
    assert list(st_.all_model_checkpoint_paths) == [str(tmp_path / "model-20"), prefix]
    assert tf.train.latest_checkpoint(str(tmp_path)) == prefix
    assert np.array_equal(tf.train.load_checkpoint(str(tmp_path)).get_tensor("w"), np.full(3, 30, np.float32))


def test_tf1_saver_restores_fastckpt(tmp_path):
    values = {"dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4), "step": np.int64(5)}
    prefix = fastckpt.Saver().save(values, str(tmp_path / "m"), global_step=5)
    with tf.Graph().as_default():
        vs = {k: tf.compat.v1.Variable(np.zeros_like(v), name=k) for k, v in values.items()}
        with tf.compat.v1.Session() as s:
            tf.compat.v1.train.Saver(list(vs.values())).restore(s, prefix)
            for k, v in values.items():
                assert_bit_equal(np.asarray(s.run(vs[k])), v)


def test_tf2_checkpoint_name_based_restore_of_fastckpt(tmp_path):
    prefix = fastckpt.write_bundle(str(tmp_path / "c"), {"my_var": np.arange(4, dtype=np.float32)})
    v = tf.Variable(np.zeros(4, np.float32), name="my_var")
    tf.train.Checkpoint(v=v).restore(prefix)
    assert np.array_equal(v.numpy(), np.arange(4, dtype=np.float32))


def test_fastckpt_reads_live_tf2_manager_dir(tmp_path):
    v = tf.Variable(np.arange(6, dtype=np.float64).reshape(2, 3))
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(tmp_path), max_to_keep=3)
    for i in range(4):
        v.assign_add(tf.ones_like(v))
        mgr.save()
    st_ = fastckpt.get_checkpoint_state(str(tmp_path))
    assert [os.path.basename(p) for p in st_.all_model_checkpoint_paths] == ["ckpt-2", "ckpt-3", "ckpt-4"]
    got = fastckpt.load_checkpoint(str(tmp_path))["v/.ATTRIBUTES/VARIABLE_VALUE"]
    assert_bit_equal(got, v.numpy())


def test_fastckpt_reads_tf1_absolute_state(tmp_path):
    with tf.Graph().as_default():
        v = tf.compat.v1.Variable(np.arange(3, dtype=np.int32), name="v")
        with tf.compat.v1.Session() as s:
            s.run(v.initializer)
            path = tf.compat.v1.train.Saver([v]).save(s, str(tmp_path / "abs" / "model"), global_step=1,
                                                      write_meta_graph=False)
    assert (tmp_path / "abs" / "checkpoint").read_text().startswith(f'model_checkpoint_path: "{tmp_path}')
    assert fastckpt.latest_checkpoint(str(tmp_path / "abs")) == path
    assert_bit_equal(fastckpt.load_checkpoint(path)["v"], np.arange(3, dtype=np.int32))


def test_corrupt_fastckpt_file_detected_by_both(tmp_path):
    prefix = fastckpt.write_bundle(str(tmp_path / "c"), {"x": np.arange(1000, dtype=np.float32)})
    flip_byte(prefix + ".data-00000-of-00001", 100, 0x10)
    with pytest.raises(fastckpt.DataLossError, match="tensor 'x'"):
        fastckpt.read_bundle(prefix)
    with pytest.raises(Exception, match="Checksum does not match"):
        tf.train.load_checkpoint(prefix).get_tensor("x")


def test_tf_checkpoint_manager_adopts_and_trims_a_saver_directory(tmp_path):
    """The state file fastckpt writes (list, timestamps, last_preserved) lets
    TensorFlow's CheckpointManager manage fastckpt's checkpoints."""
    saver = fastckpt.Saver(max_to_keep=5)
    for i in (1, 2, 3):
        saver.save({"v/.ATTRIBUTES/VARIABLE_VALUE": np.full(3, i, np.float32)}, str(tmp_path / "ckpt"),
                   global_step=i)
    v = tf.Variable(np.zeros(3, np.float32))
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(tmp_path), max_to_keep=2)
    assert [os.path.basename(p) for p in mgr.checkpoints] == ["ckpt-1", "ckpt-2", "ckpt-3"]
    assert mgr.latest_checkpoint == str(tmp_path / "ckpt-3")
    assert tf.train.load_checkpoint(mgr.latest_checkpoint).get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [3] * 3
    mgr.save(checkpoint_number=4)
    assert [os.path.basename(p) for p in mgr.checkpoints] == ["ckpt-3", "ckpt-4"]
    assert not (tmp_path / "ckpt-1.index").exists() and not (tmp_path / "ckpt-2.index").exists()
    # ... and fastckpt's Saver carries on from what TensorFlow left
    saver.save({"v/.ATTRIBUTES/VARIABLE_VALUE": np.full(3, 5, np.float32)}, str(tmp_path / "ckpt"), global_step=5)
    st = fastckpt.get_checkpoint_state(str(tmp_path))
    assert [os.path.basename(p) for p in st.all_model_checkpoint_paths] == ["ckpt-3", "ckpt-4", "ckpt-5"]


def test_tf1_saver_directory_with_meta_graphs_restores(tmp_path):
    """A default tf.compat.v1.train.Saver writes PREFIX.meta (a binary
    MetaGraphDef) beside every checkpoint: fastckpt ignores it."""
    with tf.Graph().as_default():
        v = tf.compat.v1.Variable(np.arange(4, dtype=np.float32), name="v")
        with tf.compat.v1.Session() as s:
            s.run(v.initializer)
            saver = tf.compat.v1.train.Saver([v], max_to_keep=2)
            for step in (1, 2):
                path = saver.save(s, str(tmp_path / "model"), global_step=step)
    assert os.path.exists(path + ".meta")
    assert_bit_equal(fastckpt.restore(path)["v"], np.arange(4, dtype=np.float32))
    into = {"v": np.zeros(4, np.float32)}
    mgr = fastckpt.CheckpointManager(tmp_path, checkpoint_name="model")
    assert mgr.restore_or_initialize(into)["v"] is into["v"] and mgr.restored_step == 2
    assert_bit_equal(into["v"], np.arange(4, dtype=np.float32))
    assert fastckpt.verify_path(str(tmp_path))[0].ok


def test_tf_reads_nested_fastckpt_state_and_its_meta_graph_files_stay_tfs(tmp_path):
    """The structure record is one more tensor for TensorFlow; fastckpt
    writes no PREFIX.meta that TF1 tools could take for a MetaGraphDef."""
    p = fastckpt.save({"dense": {"kernel": np.ones((2, 2), np.float32)}, "step": 3}, str(tmp_path / "c"))
    assert not os.path.exists(p + ".meta")
    names = dict(tf.train.list_variables(p))
    assert names["dense/kernel"] == [2, 2] and "_FASTCKPT_STRUCTURE" in names
    assert tf.train.load_checkpoint(p).get_tensor("dense/kernel").tolist() == [[1, 1], [1, 1]]
    with tf.Graph().as_default():
        k = tf.compat.v1.Variable(np.zeros((2, 2), np.float32), name="dense/kernel")
        with tf.compat.v1.Session() as s:
            tf.compat.v1.train.Saver([k]).restore(s, p)
            assert s.run(k).tolist() == [[1, 1], [1, 1]]


@pytest.mark.parametrize("hours", [None, 1])
def test_clock_reset_keeps_checkpoints_as_tensorflow_does(tmp_path, monkeypatch, hours):
    """TensorFlow's testClockReset scenario, run on TensorFlow's
    CheckpointManager and on fastckpt's side by side: the same files stay."""
    from tensorflow.python.checkpoint import checkpoint_management as cm
    clock = [10000.0]
    monkeypatch.setattr(cm.time, "time", lambda: clock[0])  # the time module: fastckpt sees it too

    def run(save_with, directory):
        clock[0] = 10000.0
        first = save_with(directory, 1)
        for step in (2, 3):
            clock[0] += 3600
            save_with(directory, step)
        clock[0] = 5000.0  # the clock is reset; the manager is made, and saves 10 s later
        save_with(directory, 4, new_manager=True)
        st = fastckpt.get_checkpoint_state(directory)
        return sorted(n for n in os.listdir(directory) if n.endswith(".index")), st.last_preserved_timestamp

    tf_managers = {}

    def tf_save(directory, step, new_manager=False):
        if new_manager or directory not in tf_managers:
            tf_managers[directory] = tf.train.CheckpointManager(
                tf.train.Checkpoint(v=tf.Variable(1.0)), directory, max_to_keep=1, keep_checkpoint_every_n_hours=hours)
            clock[0] += 10 if new_manager else 0
        return tf_managers[directory].save(checkpoint_number=step)

    fc_managers = {}

    def fc_save(directory, step, new_manager=False):
        if new_manager or directory not in fc_managers:
            fc_managers[directory] = fastckpt.CheckpointManager(directory, max_to_keep=1,
                                                                keep_checkpoint_every_n_hours=hours)
            clock[0] += 10 if new_manager else 0
        return fc_managers[directory].save({"v": np.ones(1, np.float32)}, step, force=True)

    tf_files, tf_preserved = run(tf_save, str(tmp_path / "tf"))
    fc_files, fc_preserved = run(fc_save, str(tmp_path / "fc"))
    assert fc_files == tf_files, (fc_files, tf_files)
    assert fc_preserved == tf_preserved == 5000.0  # the time the manager was made, as TensorFlow records it
    assert "ckpt-3.index" in fc_files and "ckpt-4.index" in fc_files  # the one from "the future" is kept


def test_tensorflow_reads_the_tensors_of_a_pytorch_training_state(tmp_path):
    """The arrays of a type-exact training state stay ordinary tensors."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("tensorflow")
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    prefix = fastckpt.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 1}, str(tmp_path / "c"))
    r = tf.train.load_checkpoint(prefix)
    assert_bit_equal(r.get_tensor("optim/state/0/exp_avg"), opt.state_dict()["state"][0]["exp_avg"].numpy())
    assert_bit_equal(r.get_tensor("model/weight"), model.weight.detach().numpy())
    assert "epoch" not in r.get_variable_to_shape_map()


def test_tf1_saver_restores_partitioned_variables_from_a_multi_process_checkpoint(tmp_path):
    """Four ranks save row slices of 3; TensorFlow 1's Saver restores the
    tensor into a variable partitioned in 3 (rows of 4) and one unpartitioned."""
    tf = pytest.importorskip("tensorflow")
    from tests.helpers.thread_comm import run_ranks
    g = np.arange(60, dtype=np.float32).reshape(12, 5)
    prefix = str(tmp_path / "c")
    cols = [0, 1, 2, 3, 5]  # "other" by uneven columns

    def save(comm):
        r, c0, c1 = comm.rank, cols[comm.rank], cols[comm.rank + 1]
        return fastckpt.save({"emb": fastckpt.Shard(g[3 * r:3 * r + 3], (12, 5), (3 * r, 0)),
                              "other": fastckpt.Shard(g[:, c0:c1], (12, 5), (0, c0))}, prefix, comm=comm)
    assert run_ranks(4, save) == [prefix] * 4
    with tf.Graph().as_default():
        emb = tf.compat.v1.get_variable("emb", shape=(12, 5), dtype=tf.float32,
                                        partitioner=tf.compat.v1.fixed_size_partitioner(3, axis=0),
                                        initializer=tf.compat.v1.zeros_initializer())
        other = tf.compat.v1.get_variable("other", shape=(12, 5), dtype=tf.float32,
                                          initializer=tf.compat.v1.zeros_initializer())
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as s:
            saver.restore(s, prefix)
            got_emb, got_other = s.run([tf.concat(list(emb), 0), other])
    assert_bit_equal(got_emb, g)
    assert_bit_equal(got_other, g)


def test_compression_works_with_tensorflow_loaded_first(tmp_path):
    """TensorFlow's libtensorflow_framework exports its own zstd; libzstd is
    loaded with RTLD_DEEPBIND so the two never mix (they crashed together)."""
    import subprocess
    import sys
    if not fastckpt._core.zstd_version():
        pytest.skip("libzstd is not installed")
    code = ("import tensorflow, numpy as np, fastckpt\n"
            "t = {'w': np.arange(300000, dtype=np.float32), 'b': np.ones(7, np.int16)}\n"
            "for i in range(10):\n"
            f"    p = fastckpt.write_bundle({str(tmp_path / 'c')!r}, t, compression='zstd')\n"
            "    back = fastckpt.read_bundle(p)\n"
            "    assert all(back[k].tobytes() == v.tobytes() for k, v in t.items())\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_what_tensorflow_sees_reading_a_checkpoint_a_save_recycles(tmp_path):
    """TensorFlow takes no lock. Its reader holding the oldest checkpoint
    while a recycling save rewrites it: tensors it reads afterwards fail
    their checksum -- never the new save's values passed off as the old
    ones. (A data file small enough for TensorFlow's input buffer was read
    whole at open, and keeps giving the old values.)"""
    saver = fastckpt.Saver(max_to_keep=2, durable=False, recycle=True)

    def state(s):
        return {"a": np.full(8_000_000, s, np.float32), "b": np.full(8_000_000, 10 * s, np.float32)}
    for step in (1, 2):
        saver.save(state(step), str(tmp_path / "m"), global_step=step)
    reader = tf.train.load_checkpoint(str(tmp_path / "m-1"))
    assert reader.get_tensor("a")[0] == 1  # TensorFlow has the victim open now
    victim = os.stat(tmp_path / "m-1.data-00000-of-00001").st_ino
    saver.save(state(3), str(tmp_path / "m"), global_step=3)
    assert os.stat(tmp_path / "m-3.data-00000-of-00001").st_ino == victim  # recycled under TensorFlow's reader
    for name in ("a", "b"):
        with pytest.raises(tf.errors.OpError, match="Checksum does not match"):
            reader.get_tensor(name)


def test_tensorflow_reads_tied_weights_written_once(tmp_path):
    """Two names, one payload: TensorFlow's reader and its Saver see both with
    the right values (an index entry is only shard, offset, size, crc)."""
    emb = np.arange(48, dtype=np.float32).reshape(12, 4)
    prefix = fastckpt.write_bundle(str(tmp_path / "t"), {"emb": emb, "head": emb, "b": np.ones(3, np.float32)})
    assert os.path.getsize(prefix + ".data-00000-of-00001") == emb.nbytes + 12
    r = tf.train.load_checkpoint(prefix)
    assert_bit_equal(r.get_tensor("emb"), emb)
    assert_bit_equal(r.get_tensor("head"), emb)
    with tf.Graph().as_default():
        v = {n: tf.compat.v1.get_variable(n, shape=s, dtype=tf.float32, initializer=tf.compat.v1.zeros_initializer())
             for n, s in (("emb", (12, 4)), ("head", (12, 4)), ("b", (3,)))}
        saver = tf.compat.v1.train.Saver(v)
        with tf.compat.v1.Session() as s:
            saver.restore(s, prefix)
            got = s.run(v)
    assert_bit_equal(got["head"], emb)
    assert_bit_equal(got["b"], np.ones(3, np.float32))


def test_tensorflow_reads_every_checkpoint_of_a_delta_chain(tmp_path):
    """Delta checkpoints share data files by hard links: TensorFlow's reader
    and its Saver read each one (several data files, the shared ones first)."""
    rng = np.random.default_rng(0)
    state = {"frozen": rng.standard_normal((300, 64)).astype(np.float32), "lora": np.zeros(8, np.float32)}
    saver = fastckpt.Saver(max_to_keep=None, delta=True)
    saved = []
    for step in range(4):
        state["lora"] = state["lora"] + 1
        if step == 2:
            state["frozen"] = state["frozen"] * 2
        saved.append((saver.save(state, str(tmp_path / "m"), global_step=step), {k: v.copy() for k, v in state.items()}))
    assert any(n.endswith("-of-00002") for n in os.listdir(tmp_path))
    for prefix, want in saved:
        r = tf.train.load_checkpoint(prefix)
        for k, v in want.items():
            assert_bit_equal(r.get_tensor(k), v)
        with tf.Graph().as_default():
            v = {k: tf.compat.v1.get_variable(k, shape=a.shape, dtype=tf.float32,
                                              initializer=tf.compat.v1.zeros_initializer()) for k, a in want.items()}
            with tf.compat.v1.Session() as s:
                tf.compat.v1.train.Saver(v).restore(s, prefix)
                got = s.run(v)
        for k, a in want.items():
            assert_bit_equal(got[k], a)
