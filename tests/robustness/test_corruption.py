"""Damage never crashes and never yields wrong numbers: every single-byte
flip of a small checkpoint's .index, sampled flips of its .data, and
truncation of each file at every length give DataLossError (or another
fastckpt error) or exactly the saved values, and `verify` agrees."""

import os
import random
import shutil

import ml_dtypes
import numpy as np
import pytest

import fastckpt
from tests.helpers.roundtrip import assert_bit_equal

TENSORS = {
    "dense/kernel": np.arange(24, dtype=np.float32).reshape(4, 6),
    "bias": np.linspace(-1, 1, 5),
    "bf": np.arange(6).astype(ml_dtypes.bfloat16),
    "step": np.int64(7),
    "vocab": np.array([b"alpha", b"", b"gamma"], dtype=object),
    "mask": np.array([True, False, True]),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("pristine")
    return fastckpt.write_bundle(str(d / "c"), TENSORS, alignment=8)  # padding bytes too


def outcome(prefix):
    """'error' or 'correct'; anything else fails the test."""
    try:
        got = fastckpt.read_bundle(prefix)
    except fastckpt.CheckpointError:
        return "error"
    assert sorted(got) == sorted(TENSORS), "tensor set changed silently"
    for k, v in TENSORS.items():
        assert_bit_equal(got[k], v)
    return "correct"


def damaged_copy(pristine, tmp_path, ext, mutate):
    d = tmp_path / "d"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for e in (".index", ".data-00000-of-00001"):
        shutil.copy(pristine + e, str(d / "c") + e)
    path = str(d / "c") + ext
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    with open(path, "wb") as f:
        f.write(mutate(raw))
    return str(d / "c")


def check(prefix):
    result = outcome(prefix)
    report = fastckpt.verify_checkpoint(prefix)
    # verify must flag whatever reading refuses (it may flag more: it checks every entry)
    if result == "error":
        assert not report.ok
    return result


@pytest.mark.parametrize("xor", [0xFF, 0x01])
def test_every_index_byte_flip(pristine, tmp_path, counts, xor):
    n = os.path.getsize(pristine + ".index")
    seen = {"error": 0, "correct": 0}
    for i in range(n):
        def flip(raw, i=i):
            raw[i] ^= xor
            return bytes(raw)
        seen[check(damaged_copy(pristine, tmp_path, ".index", flip))] += 1
    counts[f"index byte flips (xor {xor:#x})"] = n
    assert seen["error"] > n * 0.8  # only footer padding may be harmless


def test_sampled_data_byte_flips(pristine, tmp_path, counts):
    n = os.path.getsize(pristine + ".data-00000-of-00001")
    rng = random.Random(7)
    positions = list(range(n)) if n <= 400 else rng.sample(range(n), 400)
    for i in positions:
        bit = 1 << rng.randrange(8)

        def flip(raw, i=i, bit=bit):
            raw[i] ^= bit
            return bytes(raw)
        check(damaged_copy(pristine, tmp_path, ".data-00000-of-00001", flip))
    counts["data byte flips"] = len(positions)


@pytest.mark.parametrize("ext", [".index", ".data-00000-of-00001"])
def test_truncation_at_every_length(pristine, tmp_path, counts, ext):
    n = os.path.getsize(pristine + ext)
    if ext == ".index":
        needed = n
    else:  # only trailing alignment padding may go without harm
        idx = fastckpt.load_checkpoint(pristine)._index
        needed = max(idx.entry(i)[3] + idx.entry(i)[4] for i in range(len(idx)))
    assert needed <= n
    for length in range(n):
        result = check(damaged_copy(pristine, tmp_path, ext, lambda raw, k=length: bytes(raw[:k])))
        assert result == "error" or length >= needed, f"truncated to {length} bytes, read without error"
    counts[f"truncations of {ext}"] = n


def test_appended_garbage_to_index_is_detected(pristine, tmp_path):
    assert check(damaged_copy(pristine, tmp_path, ".index", lambda raw: bytes(raw) + b"junk")) == "error"


def test_verify_reports_clean_and_damaged(pristine, tmp_path, capsys):
    from fastckpt.cli import main
    assert main(["verify", pristine]) == 0
    assert "1 of 1 checkpoint(s) OK" in capsys.readouterr().out

    def flip(raw):
        raw[3] ^= 0x40
        return bytes(raw)
    bad = damaged_copy(pristine, tmp_path, ".data-00000-of-00001", flip)
    assert main(["verify", bad]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "checksum does not match" in out


def test_verify_directory_with_missing_listed_checkpoint(tmp_path, capsys):
    from fastckpt.cli import main
    saver = fastckpt.Saver(max_to_keep=3)
    for s in range(3):
        saver.save(TENSORS, str(tmp_path / "m"), global_step=s)
    assert main(["verify", str(tmp_path)]) == 0
    os.unlink(str(tmp_path / "m-1.index"))
    assert main(["verify", str(tmp_path)]) == 1
    assert "m-1.index is missing" in capsys.readouterr().out
