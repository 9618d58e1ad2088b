"""A data file that shrinks under an open reader gives DataLossError on
every path that copies or checks data -- never SIGBUS. (Zero-copy views
already handed out map the file: touching their pages after the file
shrank is a SIGBUS, as for any mmap; the README says so.)"""

import os
import signal

import numpy as np
import pytest

import fastckpt
from tests.helpers.child import in_child

STATE = {"a": np.arange(1000, dtype=np.float32), "b": np.arange(100_000, dtype=np.float32),
         "c": np.arange(50_000, dtype=np.float64)}


def shrink_under(prefix, action):
    r = fastckpt.load_checkpoint(prefix)
    r["a"]  # mapped and in use
    os.truncate(prefix + ".data-00000-of-00001", 4096)
    return action(r)


ACTIONS = {
    "view": lambda r: r["b"],
    "view-unverified": lambda r: fastckpt.CheckpointReader(r.prefix, verify=False)["b"],
    "get_tensor": lambda r: r.get_tensor("b"),
    "read-all": lambda r: r.read(),
    "read-into": lambda r: r.read(into={"c": np.empty(50_000)}),
    "verify": lambda r: fastckpt.verify_checkpoint(r.prefix).problems[0],
    "restore": lambda r: fastckpt.restore(r.prefix),
}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_truncated_under_the_reader(tmp_path, action):
    prefix = fastckpt.write_bundle(str(tmp_path / "c"), STATE)
    sig, result = in_child(shrink_under, prefix, ACTIONS[action])
    assert sig is None, f"killed by {signal.Signals(sig).name}"
    assert isinstance(result, str) and ("DataLossError" in result or "truncated" in result), result


def test_a_file_cut_after_listing_gives_dataloss_on_its_first_view(tmp_path):
    """The reader listed its tensors (the data file opened, not yet mapped);
    the file is then cut by 1,000 bytes: the first zero-copy view of an
    untouched tensor is DataLossError, not mmap's ValueError."""
    prefix = fastckpt.write_bundle(str(tmp_path / "c"), STATE)
    data = prefix + ".data-00000-of-00001"
    with fastckpt.load_checkpoint(prefix) as r:
        assert sorted(r) == ["a", "b", "c"]
        os.truncate(data, os.path.getsize(data) - 1000)
        with pytest.raises(fastckpt.DataLossError, match="truncated"):
            r["a"]
