"""Never lost, never half-visible on an object store: a saving process
killed before each of its HTTP requests (a new step committed with
retention, then the same step saved again), the S3 server itself killed
mid-upload and restarted, transient faults injected by a proxy. After
each: the latest checkpoint restores bit-exactly, every listed checkpoint
is complete, no staged name is ever shown, and the next save leaves
nothing but listed checkpoints and the state object behind. Against a
real server (SeaweedFS on 127.0.0.1), no mock."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastckpt
from fastckpt.storage.s3 import default_s3, split_url
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.roundtrip import assert_bit_equal
from tests.helpers.s3_kill_child import contents

pytestmark = pytest.mark.no_sanitizer  # HTTP to a Go server: no C path of fastckpt's is new here

DEEP = os.environ.get("FASTCKPT_DEEP") == "1"


def prepare(directory):
    mgr = fastckpt.CheckpointManager(directory, max_to_keep=2)
    mgr.save(contents(1), 1)
    mgr.save(contents(2), 2)


def run_child(directory, kill_at):
    r = subprocess.run([sys.executable, "-m", "tests.helpers.s3_kill_child", directory, str(kill_at)],
                       capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return r


def check_complete(directory, allowed_latest):
    """Every listed checkpoint restores bit-exactly as what its name says;
    the latest is one of ``allowed_latest``; no staged name is shown."""
    st = fastckpt.get_checkpoint_state(directory)
    assert st is not None
    shown = [st.model_checkpoint_path] + st.all_model_checkpoint_paths
    assert not any(".fcsave-" in p for p in shown), shown
    assert fastckpt.latest_checkpoint(directory) == st.model_checkpoint_path
    for prefix in st.all_model_checkpoint_paths:
        got = fastckpt.restore(prefix)
        step, version = int(got["step"]), int(got["version"])
        assert prefix.endswith(f"-{step}")
        for k, v in contents(step, version).items():
            assert_bit_equal(np.asarray(got[k]), v)
    latest = fastckpt.restore(directory)
    assert (int(latest["step"]), int(latest["version"])) in allowed_latest


def pending_uploads(directory):
    bucket, key = split_url(directory)
    out = default_s3().client.list_multipart_uploads(Bucket=bucket, Prefix=key + "/")
    return out.get("Uploads", [])


def check_next_save_cleans_up(directory):
    mgr = fastckpt.CheckpointManager(directory, max_to_keep=2)
    mgr.save(contents(4), 4)
    listed = fastckpt.get_checkpoint_state(directory).all_model_checkpoint_paths
    expect = {"checkpoint"}
    for p in listed:
        expect |= {os.path.basename(p) + ".index", os.path.basename(p) + ".data-00000-of-00001"}
    assert set(default_s3().listdir(directory)) == expect
    assert pending_uploads(directory) == []
    check_complete(directory, {(4, 0)})


def test_a_save_killed_before_each_request_loses_nothing_and_leaves_nothing(s3_dir, counts, progress):
    prepare(f"{s3_dir}/probe")
    r = run_child(f"{s3_dir}/probe", 0)
    assert r.returncode == 0, r.stderr[-3000:]
    total = int(r.stdout.split()[-1])
    check_complete(f"{s3_dir}/probe", {(3, 1)})
    points = list(range(1, total + 1)) if DEEP else sorted({total // 3, 2 * total // 3})
    for n in points:
        directory = f"{s3_dir}/k{n}"
        prepare(directory)
        r = run_child(directory, n)
        assert r.returncode == 137, (n, r.returncode, r.stderr[-3000:])
        check_complete(directory, {(2, 0), (3, 0), (3, 1)})
        check_next_save_cleans_up(directory)
        counts["kill points"] = counts.get("kill points", 0) + 1
        if n % 10 == 0:
            progress(f"killed before request {n} of {total}: latest complete, next save cleaned up")


def test_readers_never_see_a_staged_name_or_a_missing_checkpoint_while_saves_commit(s3_dir):
    prepare(s3_dir)
    stop = threading.Event()
    seen, errors = set(), []

    def watch():
        while not stop.is_set():
            try:
                st = fastckpt.get_checkpoint_state(s3_dir)
                latest = fastckpt.latest_checkpoint(s3_dir)
                assert st is not None and latest is not None and ".fcsave-" not in latest
                got = fastckpt.restore(s3_dir)
                step, version = int(got["step"]), int(got["version"])
                assert_bit_equal(got["a"], contents(step, version)["a"])
                seen.add((step, version))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
    watchers = [threading.Thread(target=watch) for _ in range(2)]
    for t in watchers:
        t.start()
    try:
        mgr = fastckpt.CheckpointManager(s3_dir, max_to_keep=2)
        for step in (3, 4):
            mgr.save(contents(step), step)
            mgr.save(contents(step, 1), step, force=True)  # a replacement, the window that lists a staged bundle
    finally:
        stop.set()
        for t in watchers:
            t.join()
    assert errors == []
    assert len(seen) >= 2


WRITER = """
import sys
import numpy as np
import fastckpt
directory, first = sys.argv[1], int(sys.argv[2])
mgr = fastckpt.CheckpointManager(directory, max_to_keep=None)
for step in range(first, 16, 2):
    mgr.save({"step": np.int64(step), "w": np.full(100, step)}, step)
"""


def test_two_processes_committing_to_one_directory_lose_no_commit(s3_server, s3_dir):
    env = dict(os.environ, **s3_server.env)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, s3_dir, str(k)], env=env, stderr=subprocess.PIPE,
                              text=True) for k in (0, 1)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    listed = fastckpt.get_checkpoint_state(s3_dir).all_model_checkpoint_paths
    assert sorted(int(p.rsplit("-", 1)[1]) for p in listed) == list(range(16))
    for p in listed:
        assert int(fastckpt.restore(p)["step"]) == int(p.rsplit("-", 1)[1])
    assert not any(n.startswith((".fcpending-", ".fcsave-")) for n in default_s3().listdir(s3_dir))


def test_a_stale_writer_never_overwrites_a_newer_state(s3_dir):
    """The state object is replaced only with If-Match on the ETag read:
    a writer whose read is stale fails its write and reads again."""
    mgr = fastckpt.CheckpointManager(s3_dir, max_to_keep=None)
    mgr.save({"x": np.ones(2)}, 1)
    state = f"{s3_dir}/checkpoint"
    _, etag = default_s3().read_with_etag(state)
    mgr.save({"x": np.ones(2)}, 2)  # the state object changes
    with pytest.raises(fastckpt.ConflictError):
        default_s3().put(state, b'model_checkpoint_path: "ckpt-1"\n', if_match=etag)
    assert fastckpt.latest_checkpoint(s3_dir) == f"{s3_dir}/ckpt-2"


@pytest.mark.parametrize("mode", ["503", pytest.param("drop", marks=pytest.mark.deep)])
def test_transient_faults_during_saves_and_restores_lose_nothing(s3_server, s3_dir, mode):
    host, port = s3_server.endpoint.rsplit("//", 1)[1].split(":")
    with FaultProxy((host, int(port)), fail=3, mode=mode) as proxy:
        fastckpt.configure_s3(endpoint_url=proxy.endpoint, part_bytes=5 << 20)
        mgr = fastckpt.CheckpointManager(f"{s3_dir}/{mode}", max_to_keep=2)
        for step in (1, 2, 3):
            mgr.save(contents(step), step)
        got = fastckpt.restore(f"{s3_dir}/{mode}")
        assert proxy.faults == 3
    fastckpt.configure_s3()
    assert int(got["step"]) == 3
    assert_bit_equal(got["a"], contents(3)["a"])
    check_complete(f"{s3_dir}/{mode}", {(3, 0)})


@pytest.mark.deep
def test_the_server_killed_mid_upload_and_restarted_loses_nothing(s3_server, s3_dir):
    prepare(s3_dir)
    big = {"a": np.random.default_rng(5).integers(0, 255, 96 << 20, dtype=np.uint8), "step": np.int64(3),
           "version": np.int64(0)}
    fastckpt.configure_s3(part_bytes=5 << 20, parts_in_flight=2, config={"retries": {"max_attempts": 2},
                                                                         "connect_timeout": 2, "read_timeout": 10})
    errors = []

    def save():
        try:
            fastckpt.CheckpointManager(s3_dir, max_to_keep=2).save(big, 3)
        except Exception as e:  # noqa: BLE001 - checked below
            errors.append(e)
    t = threading.Thread(target=save)
    t.start()
    import time
    deadline = time.monotonic() + 60
    while not pending_uploads(s3_dir) and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.05)
    s3_server.stop(sig=9)
    t.join(timeout=120)
    s3_server.restart()
    fastckpt.configure_s3()
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], fastckpt.CheckpointError), errors
    assert s3_dir in str(errors[0])
    check_complete(s3_dir, {(2, 0)})
    check_next_save_cleans_up(s3_dir)
