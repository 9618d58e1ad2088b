"""Which S3 client moves a checkpoint's bytes fastest? Side by side in one
run against a local SeaweedFS (tests/helpers/s3server.py, 127.0.0.1 only):
boto3 (s3transfer: threaded multipart upload, ranged parallel download)
and obstore (Rust, multipart with concurrent parts, concurrent ranged
GETs), each putting and getting the same bytes as one parallel transfer,
in interleaved rounds; min and median of each.

    python3 benchmarks/s3_client_choice.py [SIZE_MiB] [ROUNDS]
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.helpers.s3server import ACCESS_KEY, SECRET_KEY, running_server  # noqa: E402

PART = 16 << 20
CONCURRENCY = 8


def boto3_client(endpoint):
    import boto3
    from botocore.config import Config
    return boto3.session.Session().client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                                          aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                                          config=Config(max_pool_connections=32))


def cases(endpoint, bucket, data):
    from boto3.s3.transfer import TransferConfig
    import obstore
    from obstore.store import S3Store

    client = boto3_client(endpoint)
    tc = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=CONCURRENCY)
    store = S3Store(bucket, endpoint=endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                    region="us-east-1", client_options={"allow_http": True})
    n = len(data)
    out = bytearray(n)

    def boto_put():
        client.upload_fileobj(io.BytesIO(data), bucket, "boto3-object", Config=tc)

    def boto_get():
        buf = io.BytesIO()
        client.download_fileobj(bucket, "boto3-object", buf, Config=tc)
        assert buf.getbuffer().nbytes == n

    def obstore_put():
        obstore.put(store, "obstore-object", data, chunk_size=PART, max_concurrency=CONCURRENCY)

    def obstore_get():
        starts = list(range(0, n, PART))
        parts = obstore.get_ranges(store, "obstore-object", starts=starts, ends=[min(s + PART, n) for s in starts])
        at = 0
        for p in parts:
            view = memoryview(p)
            out[at:at + len(view)] = view
            at += len(view)
        assert at == n
    return {"boto3 put": boto_put, "obstore put": obstore_put, "boto3 get": boto_get, "obstore get": obstore_get}


def main() -> None:
    size = int(sys.argv[1]) << 20 if len(sys.argv) > 1 else 1 << 30
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    data = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8).tobytes()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as d, running_server(d) as server:
        fns = cases(server.endpoint, server.bucket, data)
        times = {k: [] for k in fns}
        order = list(fns)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                if name.endswith("get") and r == 0 and not times[name.replace("get", "put")]:
                    fns[name.replace("get", "put")]()
                t = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t)
    print(f"{size / (1 << 20):.0f} MiB, {rounds} interleaved rounds, parts of {PART >> 20} MiB, "
          f"{CONCURRENCY} in flight, SeaweedFS on 127.0.0.1")
    print("| case | min s | median s | GB/s (median) |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.3f} | {statistics.median(ts):.3f} | {size / statistics.median(ts) / 1e9:.2f} |")


if __name__ == "__main__":
    main()
