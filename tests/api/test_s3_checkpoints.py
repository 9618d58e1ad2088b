"""Checkpoints in an object store (``s3://``) through every public API,
against a real S3-compatible server (SeaweedFS on 127.0.0.1; no mock):
round trips bit for bit, the bytes a local save writes, TensorFlow's
naming and state object, retention under the directory's own prefix,
lazy and ranged reads that fetch only what they need, re-saves, clear
errors for bad URLs, credentials and buckets."""

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import fastckpt
from fastckpt.storage.s3 import S3Storage, default_s3
from tests.helpers.roundtrip import assert_bit_equal

pytestmark = pytest.mark.no_sanitizer  # HTTP to a Go server; the C core's part is the same as locally


def sample_state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "f32": rng.standard_normal((64, 33)).astype(np.float32),
        "f16": rng.standard_normal(17).astype(np.float16),
        "bf16": rng.standard_normal((5, 6)).astype(ml_dtypes.bfloat16),
        "f8": rng.standard_normal(9).astype(ml_dtypes.float8_e4m3fn),
        "i64": rng.integers(-2**40, 2**40, 12),
        "u8": rng.integers(0, 255, 100, dtype=np.uint8),
        "bool": rng.random(7) > 0.5,
        "c64": (rng.standard_normal(4) + 1j).astype(np.complex64),
        "scalar": np.float64(3.5),
        "empty": np.zeros((0, 3), np.float32),
        "strings": np.array([b"a", b"", b"\x00bytes"], dtype=object),
        "fortran": np.asfortranarray(rng.standard_normal((9, 4))),
        "big_endian": np.arange(10, dtype=">i4"),
        "strided": np.arange(40.0)[::3],
    }


def objects(url):
    return sorted(default_s3().listdir(url))


def test_every_dtype_round_trips_bit_exactly_through_write_bundle_and_read_bundle(s3_dir, tmp_path):
    state = sample_state()
    prefix = fastckpt.write_bundle(f"{s3_dir}/b", state, alignment=64)
    got = fastckpt.read_bundle(prefix)
    assert sorted(got) == sorted(state)
    for k, v in state.items():
        assert_bit_equal(got[k], v)
    # the very bytes a local write of the same tensors gives
    local = fastckpt.write_bundle(str(tmp_path / "b"), state, alignment=64)
    for suffix in (".index", ".data-00000-of-00001"):
        assert default_s3().read_bytes(prefix + suffix) == open(local + suffix, "rb").read()


def test_nested_state_and_metadata_round_trip_with_save_and_restore(s3_dir):
    state = {"model": {"w": np.arange(6.0).reshape(2, 3), "layers": [np.ones(2), np.zeros(3, np.int8)]},
             "step": 7, "name": "run", "lr": 0.5, "none": None}
    fastckpt.save(state, f"{s3_dir}/nested", metadata={"epoch": 3}, num_shards=3)
    got = fastckpt.restore(f"{s3_dir}/nested")
    assert got["step"] == 7 and got["name"] == "run" and got["lr"] == 0.5 and got["none"] is None
    assert_bit_equal(got["model"]["w"], state["model"]["w"])
    assert_bit_equal(got["model"]["layers"][1], state["model"]["layers"][1])
    assert fastckpt.read_meta(f"{s3_dir}/nested")["metadata"] == {"epoch": 3}
    assert objects(s3_dir) == ["nested.data-00000-of-00003", "nested.data-00001-of-00003",
                               "nested.data-00002-of-00003", "nested.index"]


def test_saver_names_steps_lists_them_and_keeps_max_to_keep(s3_dir):
    saver = fastckpt.Saver(max_to_keep=2)
    for step in range(4):
        assert saver.save({"w": np.full(3, step)}, f"{s3_dir}/model", global_step=step) == f"{s3_dir}/model-{step}"
    st = fastckpt.get_checkpoint_state(s3_dir)
    assert st.model_checkpoint_path == f"{s3_dir}/model-3"
    assert st.all_model_checkpoint_paths == [f"{s3_dir}/model-2", f"{s3_dir}/model-3"]
    assert fastckpt.latest_checkpoint(s3_dir) == f"{s3_dir}/model-3"
    assert saver.restore(st.model_checkpoint_path)["w"].tolist() == [3, 3, 3]
    assert fastckpt.restore(s3_dir)["w"].tolist() == [3, 3, 3]  # a directory: its latest
    # TensorFlow's state file, paths relative to the directory
    text = default_s3().read_bytes(f"{s3_dir}/checkpoint").decode()
    assert text.startswith('model_checkpoint_path: "model-3"\nall_model_checkpoint_paths: "model-2"\n')
    assert objects(s3_dir) == ["checkpoint", "model-2.data-00000-of-00001", "model-2.index",
                               "model-3.data-00000-of-00001", "model-3.index"]


def test_retention_deletes_only_checkpoints_it_listed_under_its_own_prefix(s3_dir):
    fastckpt.write_bundle(f"{s3_dir}/mine-0", {"x": np.ones(2)})  # a bundle of the user's, never listed
    default_s3().put(f"{s3_dir}/notes.txt", b"keep me")
    fastckpt.write_bundle(f"{s3_dir}-sibling/model-0", {"x": np.ones(2)})  # a neighbouring prefix
    saver = fastckpt.Saver(max_to_keep=1)
    for step in range(3):
        saver.save({"x": np.full(2, step)}, f"{s3_dir}/model", global_step=step)
    assert objects(s3_dir) == ["checkpoint", "mine-0.data-00000-of-00001", "mine-0.index",
                               "model-2.data-00000-of-00001", "model-2.index", "notes.txt"]
    assert objects(f"{s3_dir}-sibling") == ["model-0.data-00000-of-00001", "model-0.index"]


def test_manager_saves_in_the_background_keeps_max_to_keep_and_resumes(s3_dir):
    mgr = fastckpt.CheckpointManager(s3_dir, max_to_keep=3)
    assert mgr.latest_checkpoint is None and mgr.checkpoints == []
    state = {"w": np.zeros(1000, np.float32), "step": 0}
    for step in range(1, 6):
        state["w"] += 1
        state["step"] = step
        future = mgr.save(state, step, blocking=False)
        state["w"] += 0  # the caller may change its state at once: the save copied it
    assert future.result() == f"{s3_dir}/ckpt-5"
    assert mgr.checkpoints == [f"{s3_dir}/ckpt-{i}" for i in (3, 4, 5)]
    fresh = {"w": np.empty(1000, np.float32), "step": 0}
    again = fastckpt.CheckpointManager(f"{s3_dir}/")
    restored = again.restore_or_initialize(fresh)
    assert again.restored_step == 5 and restored["step"] == 5 and np.all(fresh["w"] == 5)
    assert fastckpt.CheckpointManager(f"{s3_dir}-new").restore_or_initialize(fresh) is None


def test_resaving_a_step_replaces_it_and_leaves_nothing_staged(s3_dir):
    saver = fastckpt.Saver()
    saver.save({"w": np.zeros(4)}, f"{s3_dir}/m", global_step=1)
    saver.save({"w": np.ones(4), "extra": np.arange(3)}, f"{s3_dir}/m", global_step=1)
    got = fastckpt.restore(f"{s3_dir}/m-1")
    assert got["w"].tolist() == [1.0] * 4 and got["extra"].tolist() == [0, 1, 2]
    assert fastckpt.get_checkpoint_state(s3_dir).all_model_checkpoint_paths == [f"{s3_dir}/m-1"]
    assert objects(s3_dir) == ["checkpoint", "m-1.data-00000-of-00001", "m-1.index"]


def test_a_reader_never_mixes_two_versions_of_a_replaced_checkpoint(s3_dir):
    saver = fastckpt.Saver()
    saver.save({"w": np.zeros(1000)}, f"{s3_dir}/m", global_step=1)
    reader = fastckpt.load_checkpoint(f"{s3_dir}/m-1")  # pins the versions of the objects it listed
    saver.save({"w": np.ones(1000)}, f"{s3_dir}/m", global_step=1)
    with pytest.raises(fastckpt.NotFoundError, match="replaced while the checkpoint was being read"):
        reader.get_tensor("w")
    assert fastckpt.load_checkpoint(f"{s3_dir}/m-1").get_tensor("w")[0] == 1.0


def test_load_checkpoint_reads_only_the_tensor_asked_for(s3_dir, monkeypatch):
    big = {f"t{i}": np.full(1 << 18, i, np.float32) for i in range(8)}  # 8 x 1 MiB
    fastckpt.write_bundle(f"{s3_dir}/lazy", big)
    fetched = []
    real = S3Storage.read_into

    def counting(self, path, offset, view, etag=None):
        fetched.append(view.nbytes)
        return real(self, path, offset, view, etag)
    monkeypatch.setattr(S3Storage, "read_into", counting)
    reader = fastckpt.load_checkpoint(f"{s3_dir}/lazy")
    assert fetched == []  # opening reads the index (one GET) and lists the data objects, no data
    assert reader.get_tensor("t5")[0] == 5 and sum(fetched) == 1 << 20
    assert sorted(reader.get_variable_to_shape_map().items())[0] == ("t0", [1 << 18])
    fetched.clear()
    region = reader.read_region("t6", [1000], [10])
    assert region.tolist() == [6.0] * 10 and sum(fetched) == 4 << 18  # the whole entry, to check its CRC
    fetched.clear()
    assert reader.read_region("t7", [1000], [10], verify=False).tolist() == [7.0] * 10 and sum(fetched) == 40
    assert reader.get_slice("t3")[5:9].tolist() == [3.0] * 4


def test_restore_into_existing_arrays_and_torch_tensors(s3_dir):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(8, 4)
    fastckpt.save(model.state_dict(), f"{s3_dir}/torch")
    other = torch.nn.Linear(8, 4)
    fastckpt.restore(f"{s3_dir}/torch", into=other.state_dict())
    assert torch.equal(other.weight, model.weight) and torch.equal(other.bias, model.bias)


def test_damaged_objects_are_refused(s3_dir):
    prefix = fastckpt.write_bundle(f"{s3_dir}/d", {"a": np.arange(100.0)})
    data = bytearray(default_s3().read_bytes(prefix + ".data-00000-of-00001"))
    data[17] ^= 0x20
    default_s3().put(prefix + ".data-00000-of-00001", bytes(data))
    with pytest.raises(fastckpt.DataLossError, match="checksum"):
        fastckpt.read_bundle(prefix)
    default_s3().put(prefix + ".data-00000-of-00001", bytes(data[:100]))
    with pytest.raises(fastckpt.DataLossError, match="truncated"):
        fastckpt.read_bundle(prefix)
    default_s3().put(prefix + ".index", b"not an index at all, but long enough to have a footer..........")
    with pytest.raises(fastckpt.DataLossError, match="not a checkpoint index"):
        fastckpt.read_bundle(prefix)
    other = fastckpt.write_bundle(f"{s3_dir}/e", {"a": np.ones(1)})
    default_s3().delete(other + ".data-00000-of-00001")
    with pytest.raises(fastckpt.NotFoundError, match="missing"):
        fastckpt.read_bundle(other)


def test_missing_checkpoints_and_directories_are_clear(s3_dir):
    assert fastckpt.get_checkpoint_state(s3_dir) is None
    assert fastckpt.latest_checkpoint(s3_dir) is None
    with pytest.raises(fastckpt.NotFoundError, match=f"{s3_dir}/nothing"):
        fastckpt.read_bundle(f"{s3_dir}/nothing")
    with pytest.raises(fastckpt.NotFoundError):
        fastckpt.restore(s3_dir)


@pytest.mark.parametrize("url, why", [
    ("gs://bucket/x", "gs://"), ("S3://ckpt/x", "lower case"), ("s3://Bad_Bucket/x", "bucket name"),
    ("s3:///x", "bucket name"), ("s3://ckpt/a//b", "segments"), ("s3://ckpt/a/../b", "segments"),
    ("s3://ckpt", "names no key"),
])
def test_bad_urls_are_refused_before_anything_is_sent(url, why):
    with pytest.raises(fastckpt.InvalidArgumentError, match=why):
        fastckpt.save({"a": np.ones(1)}, url)


def test_compressed_checkpoints_round_trip_and_a_region_fetches_only_its_chunks(s3_dir, monkeypatch):
    rng = np.random.default_rng(1)
    state = {"a": rng.standard_normal((1024, 1024)).astype(np.float32), "s": np.array([b"x", b"yz"], dtype=object),
             "strided": np.arange(20)[::2], "empty": np.zeros(0)}
    fastckpt.CheckpointManager(s3_dir, compression="zstd").save(state, 1)
    got = fastckpt.restore(s3_dir)
    for k, v in state.items():
        assert_bit_equal(got[k], v)
    assert fastckpt.verify_checkpoint(f"{s3_dir}/ckpt-1").ok
    fetched = []
    real = S3Storage.read_segments

    def counting(self, path, segments, etag=None):
        fetched.append(sum(view.nbytes for _, view in segments))
        return real(self, path, segments, etag)
    monkeypatch.setattr(S3Storage, "read_segments", counting)
    with fastckpt.load_checkpoint(s3_dir) as reader:
        rows = reader.read_region("a", [700, 0], [2, 1024], verify=False)
    assert rows.tobytes() == state["a"][700:702].tobytes()
    assert sum(fetched) < 1.2 * (1 << 20)  # the frame's table and the one 1 MiB chunk holding the rows, of 4 MiB


def test_recycling_to_an_object_store_is_refused_clearly(s3_dir):
    with pytest.raises(fastckpt.InvalidArgumentError, match="recycle"):
        fastckpt.Saver(recycle=True).save({"a": np.ones(1)}, f"{s3_dir}/r", global_step=1)
    assert objects(s3_dir) == []


def test_wrong_credentials_and_a_missing_bucket_are_one_clear_error(s3_server, s3_dir):
    fastckpt.configure_s3(endpoint_url=s3_server.endpoint, aws_access_key_id="nobody",
                          aws_secret_access_key="wrong", region_name="us-east-1",
                          config={"retries": {"max_attempts": 1}})
    with pytest.raises(fastckpt.CheckpointIOError, match=f"{s3_dir}/x") as e:
        fastckpt.save({"a": np.ones(1)}, f"{s3_dir}/x")
    assert e.value.errno == 13 and "access denied (check the credentials" in str(e.value)
    fastckpt.configure_s3()
    # (SeaweedFS makes a bucket on the first write to it, so a save cannot show NoSuchBucket here)
    with pytest.raises(fastckpt.NotFoundError, match="s3://no-such-bucket-here/x"):
        fastckpt.restore("s3://no-such-bucket-here/x")
    with pytest.raises(fastckpt.InvalidArgumentError, match="storage options"):
        fastckpt.configure_s3(no_such_option=1)


def test_tensorflow_reads_a_checkpoint_fetched_from_the_bucket(s3_dir, tmp_path):
    state = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "s": np.array([b"x", b"yz"], dtype=object)}
    fastckpt.Saver().save(state, f"{s3_dir}/tf", global_step=3)
    for name in objects(s3_dir):
        (tmp_path / name).write_bytes(default_s3().read_bytes(f"{s3_dir}/{name}"))
    code = ("import sys, tensorflow as tf, numpy as np\n"
            "p = tf.train.latest_checkpoint(sys.argv[1]); r = tf.train.load_checkpoint(p)\n"
            "print(p.rsplit('/', 1)[1], r.get_tensor('w').sum(), r.get_tensor('s').tolist())\n")
    tf_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    try:
        import importlib.util
        if importlib.util.find_spec("tensorflow") is None:
            pytest.skip("tensorflow is not installed")
    except ValueError:
        pytest.skip("tensorflow is not installed")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=tf_env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "tf-3 66.0 [b'x', b'yz']"


@pytest.mark.deep  # 11 s: in the deep tier to keep the default tier under 6 minutes
def test_every_command_works_on_a_url(s3_server, s3_dir, tmp_path):
    fastckpt.CheckpointManager(s3_dir, max_to_keep=2).save({"w": np.arange(6.0), "b": np.ones(2)}, 1)
    fastckpt.CheckpointManager(s3_dir, max_to_keep=2).save({"w": np.arange(6.0) + 1, "b": np.ones(2)}, 2)
    env = dict(os.environ, **s3_server.env)

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "fastckpt", *args], capture_output=True, text=True, env=env,
                           timeout=300)
        return r.returncode, r.stdout
    assert cli("ls", s3_dir) == (0, f"{s3_dir}/ckpt-2: 2 tensors in 1 data file(s)\n  b  float64  [2]\n"
                                    "  w  float64  [6]\n")
    code, out = cli("verify", s3_dir)
    assert code == 0 and out.endswith("2 of 2 checkpoint(s) OK\n")
    code, out = cli("diff", f"{s3_dir}/ckpt-1", f"{s3_dir}/ckpt-2")
    assert code == 1 and "different  w" in out
    assert cli("inspect", s3_dir)[0] == 0
    assert cli("convert", s3_dir, str(tmp_path / "m.safetensors"))[0] == 0
    assert cli("convert", str(tmp_path / "m.safetensors"), f"{s3_dir}-conv/m")[0] == 0
    assert fastckpt.restore(f"{s3_dir}-conv/m")["w"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    code, out = cli("gc", s3_dir)
    assert code == 0 and "removed 0" in out


@pytest.mark.deep
def test_bench_url_measures_and_cleans_up(s3_server, s3_dir):
    env = dict(os.environ, **s3_server.env)
    r = subprocess.run([sys.executable, "-m", "fastckpt", "bench", "--url", f"{s3_dir}-bench", "--size", "8MiB",
                        "--tensors", "4", "--rounds", "1", "--json"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    results = json.loads(r.stdout)["results"]
    assert {"raw put (one multipart upload)", "fastckpt save", "fastckpt restore into arrays"} <= set(results)
    assert default_s3().list_objects(f"{s3_dir}-bench/") == []  # the bench deletes what it wrote


def test_list_variables_and_update_checkpoint_state_on_a_url(s3_dir):
    fastckpt.write_bundle(f"{s3_dir}/a", {"x": np.ones((2, 3)), "y": np.zeros(4)})
    fastckpt.write_bundle(f"{s3_dir}/b", {"x": np.ones((2, 3))})
    assert fastckpt.list_variables(f"{s3_dir}/a") == [("x", [2, 3]), ("y", [4])]
    assert fastckpt.get_checkpoint_state(s3_dir) is None
    fastckpt.update_checkpoint_state(s3_dir, f"{s3_dir}/b", [f"{s3_dir}/a", f"{s3_dir}/b"])
    st = fastckpt.get_checkpoint_state(s3_dir)
    assert st.model_checkpoint_path == f"{s3_dir}/b" and st.all_model_checkpoint_paths == [f"{s3_dir}/a", f"{s3_dir}/b"]
    assert default_s3().read_bytes(f"{s3_dir}/checkpoint").startswith(b'model_checkpoint_path: "b"\n')
    assert [r.ok for r in fastckpt.verify_path(s3_dir)] == [True, True]
    assert fastckpt.collect_garbage(s3_dir).unlisted == []


def test_credentials_from_a_profile(s3_server, s3_dir, tmp_path, monkeypatch):
    from tests.helpers.s3server import ACCESS_KEY, SECRET_KEY
    (tmp_path / "credentials").write_text(f"[fc]\naws_access_key_id = {ACCESS_KEY}\n"
                                          f"aws_secret_access_key = {SECRET_KEY}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_PROFILE", "fc")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    fastckpt.configure_s3()
    fastckpt.save({"w": np.ones(3)}, f"{s3_dir}/p")
    fastckpt.configure_s3(profile_name="fc")
    assert fastckpt.restore(f"{s3_dir}/p")["w"].tolist() == [1.0, 1.0, 1.0]


def test_a_corrupt_state_object_is_named_by_readers_and_rewritten_by_the_next_saver_save(s3_dir):
    mgr = fastckpt.CheckpointManager(s3_dir, max_to_keep=2)
    mgr.save({"w": np.ones(2)}, 1)
    default_s3().put(f"{s3_dir}/checkpoint", b"model_checkpoint_path: \x00\xff garbage {{{")
    with pytest.raises(fastckpt.DataLossError, match=f"{s3_dir}/checkpoint"):
        fastckpt.get_checkpoint_state(s3_dir)
    with pytest.raises(fastckpt.DataLossError):  # a manager refuses to start on it, as on a local directory
        fastckpt.CheckpointManager(s3_dir)
    fastckpt.Saver().save({"w": np.zeros(2)}, f"{s3_dir}/ckpt", global_step=2)  # a Saver rewrites it, as locally
    assert fastckpt.latest_checkpoint(s3_dir) == f"{s3_dir}/ckpt-2"
    assert fastckpt.restore(s3_dir)["w"].tolist() == [0.0, 0.0]


def test_storage_options_per_call_reach_every_api(s3_server, s3_dir, tmp_path, monkeypatch):
    """With the process's default pointed at wrong credentials, every API
    given ``storage_options=`` reaches the server with those instead."""
    from tests.helpers.s3server import ACCESS_KEY, SECRET_KEY
    opts = {"endpoint_url": s3_server.endpoint, "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY, "region_name": "us-east-1"}
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    fastckpt.configure_s3(config={"retries": {"max_attempts": 1}})
    with pytest.raises(fastckpt.CheckpointError, match="access denied"):
        fastckpt.save({"w": np.ones(2)}, f"{s3_dir}/denied")
    state = {"w": np.arange(4.0), "step": 3}
    assert fastckpt.save(state, f"{s3_dir}/plain", metadata={"k": 1}, storage_options=opts) == f"{s3_dir}/plain"
    assert fastckpt.restore(f"{s3_dir}/plain", storage_options=opts)["step"] == 3
    assert fastckpt.read_meta(f"{s3_dir}/plain", storage_options=opts)["metadata"] == {"k": 1}
    fastckpt.write_bundle(f"{s3_dir}/wb", {"x": np.ones(3)}, storage_options=opts)
    assert fastckpt.read_bundle(f"{s3_dir}/wb", storage_options=opts)["x"].tolist() == [1.0] * 3
    saver = fastckpt.Saver(max_to_keep=1, storage_options=opts)
    saver.save(state, f"{s3_dir}/s/model", global_step=1)
    assert saver.restore(f"{s3_dir}/s")["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    mgr = fastckpt.CheckpointManager(f"{s3_dir}/m", max_to_keep=2, storage_options=opts)
    mgr.save(state, 1, blocking=False).result()  # the background thread uses them too
    assert mgr.checkpoints == [f"{s3_dir}/m/ckpt-1"] and mgr.latest_checkpoint == f"{s3_dir}/m/ckpt-1"
    fresh = {"w": np.empty(4), "step": 0}
    assert fastckpt.CheckpointManager(f"{s3_dir}/m", storage_options=opts).restore_or_initialize(fresh)["step"] == 3
    reader = fastckpt.load_checkpoint(f"{s3_dir}/m", storage_options=opts)
    assert reader.get_tensor("w").tolist() == [0.0, 1.0, 2.0, 3.0]  # read after the call returned: same storage
    assert fastckpt.CheckpointReader(f"{s3_dir}/wb", storage_options=opts)["x"].tolist() == [1.0] * 3
    assert fastckpt.get_checkpoint_state(f"{s3_dir}/m", storage_options=opts).model_checkpoint_path == \
        f"{s3_dir}/m/ckpt-1"
    assert fastckpt.latest_checkpoint(f"{s3_dir}/m", storage_options=opts) == f"{s3_dir}/m/ckpt-1"
    assert fastckpt.list_variables(f"{s3_dir}/wb", storage_options=opts) == [("x", [3])]
    fastckpt.update_checkpoint_state(f"{s3_dir}/u", f"{s3_dir}/wb", storage_options=opts)
    assert fastckpt.verify_checkpoint(f"{s3_dir}/wb", storage_options=opts).ok
    assert [r.ok for r in fastckpt.verify_path(f"{s3_dir}/m", storage_options=opts)] == [True]
    assert fastckpt.collect_garbage(f"{s3_dir}/m", storage_options=opts).leftovers == []
    assert fastckpt.diff(f"{s3_dir}/wb", f"{s3_dir}/wb", storage_options=opts).equal
    assert fastckpt.inspect_checkpoint(f"{s3_dir}/wb", storage_options=opts)["tensors"] == 1
    fastckpt.convert(f"{s3_dir}/wb", str(tmp_path / "wb.safetensors"), storage_options=opts)
    with pytest.raises(fastckpt.InvalidArgumentError, match="storage options"):
        fastckpt.save(state, f"{s3_dir}/bad", storage_options={"no_such_option": 1})
