"""One round-trip check used across the test tiers (unit, property, TF)."""

import numpy as np

import fastckpt


def assert_bit_equal(got, want):
    """Equal shape, dtype and bytes (NaNs and -0.0 included); strings as bytes."""
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype.kind in "SUO":
        assert got.dtype == object
        as_bytes = [x.encode() if isinstance(x, str) else bytes(x) for x in want.reshape(-1).tolist()] \
            if want.ndim else [want.item().encode() if isinstance(want.item(), str) else bytes(want.item())]
        assert got.reshape(-1).tolist() == as_bytes
        return
    assert got.dtype == want.dtype.newbyteorder("="), (got.dtype, want.dtype)
    native = want.astype(want.dtype.newbyteorder("="))
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(native).tobytes()


def check_roundtrip(tmp_path, tensors, **write_options):
    """Write, read back every way, and compare bit for bit."""
    prefix = str(tmp_path / "ckpt")
    fastckpt.write_bundle(prefix, tensors, **write_options)
    got = fastckpt.read_bundle(prefix)
    assert sorted(got) == sorted(str(k) for k in tensors)
    for k, v in tensors.items():
        assert_bit_equal(got[k], v)
    with fastckpt.load_checkpoint(prefix) as r:
        for k, v in tensors.items():
            assert_bit_equal(r[k], v)
    return prefix


def flip_byte(path, offset, mask):
    """XOR one byte of a file in place (damage for corruption tests)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))
