"""CRC32C: check value, hardware vs portable, combine, masking, parallel."""

import os

import pytest
from hypothesis import given, strategies as st

from fastckpt import _core


def test_check_value():
    assert _core.crc32c(b"123456789") == 0xE3069283
    assert _core.crc32c_portable(b"123456789") == 0xE3069283


def test_empty_is_zero():
    assert _core.crc32c(b"") == 0


def test_extend_equals_whole():
    assert _core.crc32c(b"56789", _core.crc32c(b"1234")) == 0xE3069283


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 2048 * 3 - 1, 2048 * 3, 2048 * 3 + 5, 100_000])
def test_hardware_matches_portable_at_stream_boundaries(n):
    data = os.urandom(n)
    assert _core.crc32c(data) == _core.crc32c_portable(data)
    # unaligned start
    assert _core.crc32c(memoryview(data)[1:]) == _core.crc32c_portable(data[1:])


@given(st.binary(max_size=20000), st.binary(max_size=20000))
def test_combine(a, b):
    assert _core.crc32c_combine(_core.crc32c(a), _core.crc32c(b), len(b)) == _core.crc32c(a + b)


@given(st.integers(0, 2**32 - 1))
def test_mask_roundtrip(c):
    assert _core.unmask_crc(_core.mask_crc(c)) == c


def test_mask_constants_from_spec():
    assert _core.mask_crc(0) == 0xA282EAD8
    assert _core.unmask_crc(0) == 2324967102


def test_parallel_matches_serial():
    data = os.urandom(40 << 20)
    assert _core.crc32c_parallel(data, 4) == _core.crc32c(data)
    assert _core.crc32c_parallel(data[:1000], 4) == _core.crc32c(data[:1000])


def test_combine_and_parallel_past_2_to_the_29_bytes():
    """Regression: combine lengths >= 512 MiB once used a table that wrapped
    every 32 powers (true only for irreducible polynomials; CRC32C's is not)."""
    import numpy as np
    z = np.zeros((3 << 29) + 12345, np.uint8)  # calloc'd: zero pages, no real memory
    whole = _core.crc32c(z)
    k = 1000
    assert _core.crc32c_combine(_core.crc32c(z[:k]), _core.crc32c(z[k:]), len(z) - k) == whole
    assert _core.crc32c_parallel(z, 2) == whole
    assert _core.crc32c_parallel(z, 3) == whole
