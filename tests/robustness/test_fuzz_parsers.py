"""Fuzzing the C parsers over raw bytes (hypothesis, bounded for CI):
the SSTable walker, the bundle index parser, the entry and header decoders,
the string payload decoder. Nothing may crash; all errors are fastckpt's."""

import os

from hypothesis import HealthCheck, given, settings, strategies as st

import fastckpt
from fastckpt import _core

EXAMPLES = int(os.environ.get("FASTCKPT_FUZZ_EXAMPLES", "1500"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

GOOD = None


def good_index():
    global GOOD
    if GOOD is None:
        import numpy as np
        import tempfile
        d = tempfile.mkdtemp()
        p = fastckpt.write_bundle(os.path.join(d, "c"), {
            "a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array([b"x", b"yz"], dtype=object),
            "b/c": np.int64(3)})
        GOOD = open(p + ".index", "rb").read()
    return GOOD


def _expect_clean(fn, data):
    try:
        fn(data)
    except fastckpt.CheckpointError:
        pass


@fuzz
@given(st.binary(max_size=600))
def test_index_parser_on_random_bytes(counts, data):
    counts["fuzz: random index files"] = counts.get("fuzz: random index files", 0) + 1
    _expect_clean(_core.Index, data)


@fuzz
@given(st.data())
def test_index_parser_on_mutated_valid_index(counts, data):
    raw = bytearray(good_index())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):  # recompute nothing: CRCs now fail, or footer damage
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    counts["fuzz: mutated index files"] = counts.get("fuzz: mutated index files", 0) + 1
    _expect_clean(_core.Index, bytes(raw))


@fuzz
@given(st.binary(max_size=200))
def test_entry_decoder_in_a_valid_table(counts, value):
    """CRCs valid, entry bytes hostile: the index parser's validation is what stands."""
    table = _core.build_table([(b"", _core.encode_header()), (b"x", value)])
    counts["fuzz: hostile entries"] = counts.get("fuzz: hostile entries", 0) + 1
    _expect_clean(_core.Index, table)


@fuzz
@given(st.binary(max_size=100))
def test_header_decoder_in_a_valid_table(counts, header):
    table = _core.build_table([(b"", header), (b"x", _core.encode_entry(1, (1,), 0, 0, 4, 0))])
    counts["fuzz: hostile headers"] = counts.get("fuzz: hostile headers", 0) + 1
    _expect_clean(_core.Index, table)


@fuzz
@given(st.binary(max_size=300), st.integers(0, 50), st.integers(0, 2**32 - 1), st.booleans())
def test_string_decoder_on_random_payloads(counts, payload, n, crc, big):
    counts["fuzz: string payloads"] = counts.get("fuzz: string payloads", 0) + 1
    _expect_clean(lambda p: _core.decode_strings(p, n, crc, True, big), payload)
