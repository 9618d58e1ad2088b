"""The storage interface over a real S3-compatible server (SeaweedFS on
127.0.0.1, tests/helpers/s3server.py; no mock): names, ranged reads,
conditional writes that make a stale writer fail loudly, errors as the
local implementation raises them, and transient faults retried."""

import threading
import uuid

import pytest

import fastckpt
from fastckpt.storage import fs, local
from fastckpt.storage.s3 import S3Storage, split_url
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.s3server import ACCESS_KEY, SECRET_KEY

pytestmark = pytest.mark.no_sanitizer  # a Go server and HTTP: no C code of fastckpt's is driven here


def storage_for(endpoint, key=ACCESS_KEY, secret=SECRET_KEY, **options):
    return S3Storage(endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                     region_name="us-east-1", **options)


@pytest.fixture
def s3(s3_server):
    return storage_for(s3_server.endpoint)


@pytest.fixture
def base(s3_server):
    """A fresh key prefix for each test."""
    return f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:12]}"


def test_split_url():
    assert split_url("s3://b/a/b/c") == ("b", "a/b/c") and split_url("s3://b") == ("b", "")
    for bad in ("/tmp/x", "s3:///key", "gs://b/k"):
        with pytest.raises(ValueError):
            split_url(bad)


def test_objects_and_names(s3, base):
    etag = s3.put(f"{base}/run/ckpt-1.index", b"index bytes")
    s3.put(f"{base}/run/ckpt-1.data-00000-of-00001", b"x" * 1000)
    s3.put(f"{base}/run/sub/deeper", b"")
    assert s3.read_bytes(f"{base}/run/ckpt-1.index") == b"index bytes"
    assert s3.etag(f"{base}/run/ckpt-1.index") == etag and s3.size(f"{base}/run/ckpt-1.data-00000-of-00001") == 1000
    assert s3.is_file(f"{base}/run/ckpt-1.index") and not s3.is_dir(f"{base}/run/ckpt-1.index")
    assert s3.is_dir(f"{base}/run") and s3.is_dir(f"{base}/run/") and not s3.is_file(f"{base}/run")
    assert s3.exists(f"{base}/run") and not s3.exists(f"{base}/nothing")
    assert sorted(s3.listdir(f"{base}/run")) == ["ckpt-1.data-00000-of-00001", "ckpt-1.index", "sub"]
    assert s3.listdir(f"{base}/nothing") == []
    assert s3.mtime(f"{base}/run/sub/deeper") > 0
    assert s3.identity(f"{base}/run/ckpt-1.index") != s3.identity(f"{base}/run/sub/deeper")
    assert s3.identity(f"{base}/nothing") is None


def test_listing_past_one_page(s3, base):
    names = [f"n{i:04d}" for i in range(1005)]  # a listing page holds 1000 keys

    def put(chunk):
        for n in chunk:
            s3.put(f"{base}/many/{n}", b"")
    threads = [threading.Thread(target=put, args=(names[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s3.listdir(f"{base}/many")) == names


def test_ranged_reads(s3, base):
    data = bytes(range(256)) * 40
    s3.put(f"{base}/blob", data)
    assert s3.read_range(f"{base}/blob", 1000, 300) == data[1000:1300]
    assert s3.read_range(f"{base}/blob", 0, 0) == b""
    with pytest.raises(OSError):
        s3.read_range(f"{base}/blob", len(data) - 10, 20)  # past the end: an error, never short data


def test_a_new_object_is_created_once(s3, base):
    s3.put(f"{base}/checkpoint", b"first", if_new=True)
    with pytest.raises(fastckpt.ConflictError) as e:
        s3.put(f"{base}/checkpoint", b"second", if_new=True)
    assert isinstance(e.value, FileExistsError) and isinstance(e.value, fastckpt.CheckpointError)
    assert s3.read_bytes(f"{base}/checkpoint") == b"first"


def test_a_stale_writer_fails_loudly_and_writes_nothing(s3, base):
    url = f"{base}/checkpoint"
    s3.put(url, b"v1")
    data, etag = s3.read_with_etag(url)
    newer = s3.put(url, b"v2 by another writer", if_match=etag)
    with pytest.raises(fastckpt.ConflictError):
        s3.put(url, b"v2 by the stale writer", if_match=etag)
    assert s3.read_bytes(url) == b"v2 by another writer" and s3.etag(url) == newer


def test_racing_writers_never_lose_each_others_commit(s3, base):
    """Eight writers append their name to one object, each by read, then
    conditional replace, retrying when they lose: every name arrives."""
    url = f"{base}/checkpoint"
    s3.put(url, b"")
    conflicts = []

    def writer(name):
        for _ in range(200):
            data, etag = s3.read_with_etag(url)
            try:
                s3.put(url, data + name.encode() + b"\n", if_match=etag)
                return
            except fastckpt.ConflictError:
                conflicts.append(name)
        raise AssertionError("never won")
    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s3.read_bytes(url).decode().split()) == [f"w{i}" for i in range(8)]


def test_missing_things_are_file_not_found(s3, base, s3_server):
    for call in (lambda: s3.read_bytes(f"{base}/nope"), lambda: s3.size(f"{base}/nope"),
                 lambda: s3.read_range(f"{base}/nope", 0, 1),
                 lambda: s3.read_bytes(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/k")):
        with pytest.raises(FileNotFoundError):
            call()
    s3.delete_quietly(f"{base}/nope")  # nothing to delete: no error
    s3.delete(f"{base}/nope")  # one DELETE request, which S3 answers alike for a missing key


def test_wrong_credentials_are_permission_errors(s3_server, base):
    wrong = storage_for(s3_server.endpoint, secret="not-the-secret")
    with pytest.raises(PermissionError):
        wrong.put(f"{base}/x", b"data")
    with pytest.raises(PermissionError):
        wrong.read_bytes(f"{base}/x")


def test_copies_links_and_renames(s3, base):
    s3.put(f"{base}/a", b"payload")
    s3.link(f"{base}/a", f"{base}/b")
    s3.replace(f"{base}/b", f"{base}/c")
    assert s3.read_bytes(f"{base}/a") == s3.read_bytes(f"{base}/c") == b"payload"
    assert not s3.exists(f"{base}/b")
    s3.delete(f"{base}/a")
    assert not s3.exists(f"{base}/a") and s3.real_path(f"{base}/c") == f"{base}/c"


@pytest.mark.parametrize("mode", ["503", "drop"])
def test_transient_faults_are_retried(s3_server, base, mode):
    host, port = s3_server.endpoint.rsplit("//", 1)[1].split(":")
    with FaultProxy((host, int(port)), fail=3, mode=mode) as proxy:
        flaky = storage_for(proxy.endpoint)
        flaky.put(f"{base}/through-faults", b"arrived")
        assert flaky.read_bytes(f"{base}/through-faults") == b"arrived"
        assert proxy.faults == 3


def test_faults_beyond_the_retries_are_one_clear_error(s3_server, base):
    host, port = s3_server.endpoint.rsplit("//", 1)[1].split(":")
    with FaultProxy((host, int(port)), fail=10_000) as proxy:
        flaky = storage_for(proxy.endpoint, config={"retries": {"mode": "standard", "max_attempts": 3}})
        with pytest.raises(OSError, match="SlowDown") as e:
            flaky.put(f"{base}/never", b"lost")
        assert 3 <= proxy.faults <= 6 and f"{base}/never" in str(e.value)  # 3 attempts (a closed pooled connection may cost one more)
    assert not storage_for(s3_server.endpoint).exists(f"{base}/never")


def test_the_names_interface_picks_the_implementation_by_scheme():
    assert isinstance(fs.backend("s3://bucket/key"), S3Storage)
    assert fs.backend("/tmp/x") is local and fs.backend("relative/x") is local


def test_an_empty_object_does_not_stall_the_next_request(s3, base):
    """botocore sends ``Expect: 100-continue`` with an empty body too; the
    server answers at once and botocore took that answer for the next
    request's, which then waited 60 s for a reply and was retried."""
    import time
    start = time.monotonic()
    for body in (b"", b"x", b"", b"after"):
        s3.put(f"{base}/empty", body)
    assert s3.read_bytes(f"{base}/empty") == b"after"
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("code, status, kind, errno_", [
    ("QuotaExceeded", 507, OSError, 28), ("EntityTooLarge", 400, OSError, 28),
    ("AccessDenied", 403, PermissionError, 13), ("NoSuchBucket", 404, FileNotFoundError, 2),
    ("PreconditionFailed", 412, fastckpt.ConflictError, 17), ("InternalError", 500, OSError, 5),
])
def test_service_errors_become_the_oserrors_a_file_system_raises(s3_server, base, code, status, kind, errno_):
    """Answers this server never gives (a full quota...), injected with botocore's own Stubber."""
    from botocore.stub import Stubber
    s3 = storage_for(s3_server.endpoint)
    with Stubber(s3.client) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        with pytest.raises(kind) as e:
            s3.put(f"{base}/x", b"data")
    assert e.value.errno == errno_ and f"{base}/x" in str(e.value) and code in str(e.value)
