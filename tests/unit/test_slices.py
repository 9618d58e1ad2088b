"""TensorFlow's slice keys (OrderedCode), against the spec's examples."""

import pytest
from hypothesis import given, strategies as st

from fastckpt.bundle.slices import signed_num_increasing, decode_slice_key, encode_slice_key


@pytest.mark.parametrize("v,hexed", [(0, "80"), (2, "82"), (-1, "7f"), (64, "c040"), (8191, "dfff"),
                                     (8192, "e02000"), (70000000, "f42c1d80"), (-65, "3fbf")])
def test_signed_num_increasing(v, hexed):
    assert signed_num_increasing(v).hex() == hexed


def test_spec_example_key():
    key = encode_slice_key(b"part", [(0, 2), (0, -1)])
    assert key.hex(" ") == "00 70 61 72 74 00 01 01 02 80 82 80 7f"


@given(st.binary(max_size=40),
       st.lists(st.tuples(st.integers(0, 2**62), st.one_of(st.just(-1), st.integers(0, 2**62))), max_size=5))
def test_roundtrip(name, extents):
    assert decode_slice_key(encode_slice_key(name, extents)) == (name, extents)


@given(st.integers(-2**63, 2**63 - 1), st.integers(-2**63, 2**63 - 1))
def test_order_preserving(a, b):
    ea, eb = signed_num_increasing(a), signed_num_increasing(b)
    assert (a < b) == (ea < eb)
