"""A process that saves to an object store and dies (``os._exit``, as
SIGKILL would leave it: no cleanup, no flush) just before its Nth HTTP
request is sent -- botocore's public ``before-send`` event sees every
request, multipart parts and retries included.

Usage: ``python -m tests.helpers.s3_kill_child DIR KILL_AT`` (KILL_AT 0:
never; the number of requests sent is printed at the end)."""

import os
import sys

import numpy as np

import fastckpt
from fastckpt.storage.s3 import default_s3

SIZE = 7 << 20  # bytes of the large tensor: with 5 MiB parts, it spans two


def contents(step, version=0):
    """The state a save of ``step`` writes (``version`` 1: its re-save)."""
    rng = np.random.default_rng(step * 10 + version)
    return {"a": rng.integers(0, 255, SIZE, dtype=np.uint8), "b": rng.standard_normal(1000),
            "step": np.int64(step), "version": np.int64(version)}


def main() -> None:
    directory, kill_at = sys.argv[1], int(sys.argv[2])
    sent = 0

    def before_send(**kwargs):
        nonlocal sent
        sent += 1
        if sent == kill_at:
            os._exit(137)

    fastckpt.configure_s3(part_bytes=5 << 20, parts_in_flight=2)  # multipart uploads of this small state
    default_s3().client.meta.events.register("before-send.s3.*", before_send)
    mgr = fastckpt.CheckpointManager(directory, max_to_keep=2)
    mgr.save(contents(3), 3)  # a new name; retention drops step 1
    mgr.save(contents(3, 1), 3, force=True)  # the same name again: a replacement
    print(f"sent {sent}", flush=True)


if __name__ == "__main__":
    main()
