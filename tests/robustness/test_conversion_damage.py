"""Conversion and comparison never return wrong data and never die of
SIGBUS: a flipped bit in an npz or .pt source is caught by the zip
records' CRC-32s, and a source truncated while ``convert`` or ``diff``
reads it is DataLossError on every path."""

import os
import signal
import sys

import numpy as np
import pytest

import fastckpt
from fastckpt.formats import detect_format
from tests.helpers.child import in_child

torch = pytest.importorskip("torch")


def _flips(path, positions):
    """For each byte position: flip one of its bits, convert, and say what happened."""
    good = open(path, "rb").read()
    want = np.load(path)["x"] if path.endswith(".npz") else torch.load(path)["x"].numpy()
    outcomes = {"refused": 0, "exact": 0}
    for at in positions:
        bad = bytearray(good)
        bad[at] ^= 1 << (at % 8)
        with open(path, "wb") as f:
            f.write(bad)
        out = path + ".out"
        try:
            fastckpt.convert(path, out)
            got = fastckpt.restore(out)["x"]
            assert got.tobytes() == want.tobytes(), f"byte {at}: converted to different values without an error"
            outcomes["exact"] += 1
        except fastckpt.CheckpointError:
            outcomes["refused"] += 1
        for f in (out + ".index", out + ".data-00000-of-00001"):
            if os.path.exists(f):
                os.unlink(f)
    with open(path, "wb") as f:
        f.write(good)
    return outcomes


@pytest.mark.parametrize("every", [pytest.param(7, id="every-7th-byte"),
                                   pytest.param(1, id="every-byte", marks=pytest.mark.deep)])
def test_every_flipped_bit_of_an_npz_is_refused_or_harmless(tmp_path, counts, every):
    """A bit of every byte flipped (the deep tier; the default tier flips every 7th byte)."""
    path = str(tmp_path / "a.npz")
    np.savez(path, x=np.random.default_rng(0).standard_normal(5000).astype(np.float32))
    positions = range(0, os.path.getsize(path), every)
    out = _flips(path, positions)
    assert out["refused"] >= len(positions) * 0.95 and out["refused"] + out["exact"] == len(positions), out
    counts[f"npz bit flips refused by convert (every {every} byte(s))"] = out["refused"]


def test_flipped_data_bytes_of_a_pt_file_are_refused(tmp_path, counts):
    path = str(tmp_path / "a.pt")
    torch.save({"x": torch.arange(5000, dtype=torch.float32)}, path)
    raw = open(path, "rb").read()
    start = raw.index(np.arange(4, dtype=np.float32).tobytes())  # where the tensor's bytes are
    out = _flips(path, range(start, start + 20_000, 97))
    assert out["exact"] == 0 and out["refused"] == len(range(start, start + 20_000, 97)), out
    counts["pt data flips refused by convert"] = out["refused"]


def _source(tmp_path, fmt):
    state = {"a": np.arange(1 << 18, dtype=np.float32), "b": np.ones((512, 512), np.float64)}
    path = {"tf": "src", "safetensors": "src.safetensors", "npz": "src.npz", "torch": "src.pt"}[fmt]
    path = str(tmp_path / path)
    fastckpt.write_bundle(str(tmp_path / "plain"), state)
    if fmt == "tf":
        fastckpt.write_bundle(path, state)
    else:
        fastckpt.convert(str(tmp_path / "plain"), path)
    return path, (path + ".data-00000-of-00001" if fmt == "tf" else path)


def _truncate_after_open(module_name, victim, what):
    """Make ``module_name``'s open_source cut ``victim`` right after opening
    it (its maps are made; nothing of the values is read yet)."""
    module = sys.modules[module_name]
    real = module.open_source

    def opened(path, *args, **kwargs):
        source = real(path, *args, **kwargs)
        if os.path.abspath(path).startswith(os.path.abspath(what)):
            os.truncate(victim, 4096)
        return source
    module.open_source = opened


DESTINATIONS = {"tf": "out", "tf-zstd": "outz", "safetensors": "out.safetensors", "npz": "out.npz", "torch": "out.pt"}


def test_the_guard_survives_another_librarys_sigbus_handler(tmp_path):
    """A framework that resets the SIGBUS disposition after fastckpt's first
    guarded read (PyTorch Lightning's Trainer does, restoring every signal
    to what Python's signal module thinks it was: SIG_DFL; a truncated
    source then killed the process -- CI caught it) leaves the guard
    working: the next truncated source is DataLossError."""
    path, victim = _source(tmp_path, "safetensors")

    def run():
        fastckpt.convert(path, str(tmp_path / "first"))  # the guard installed
        signal.signal(signal.SIGBUS, signal.SIG_DFL)  # and removed
        _truncate_after_open("fastckpt.formats.convert", victim, path)
        return fastckpt.convert(path, str(tmp_path / "second"))
    sig, result = in_child(run)
    assert sig is None, f"killed by {signal.Signals(sig).name}"
    assert isinstance(result, str) and result.startswith("DataLossError"), result


@pytest.mark.parametrize("dst", list(DESTINATIONS) + ["diff"])
@pytest.mark.parametrize("fmt", ["tf", "safetensors", "npz", "torch"])
def test_a_source_truncated_while_it_is_read_is_data_loss(tmp_path, fmt, dst):
    path, victim = _source(tmp_path, fmt)
    other = str(tmp_path / "plain")

    def run():
        if dst == "diff":
            _truncate_after_open("fastckpt.formats.diff", victim, path)
            return fastckpt.diff(path, other).equal
        _truncate_after_open("fastckpt.formats.convert", victim, path)
        out = str(tmp_path / DESTINATIONS[dst])
        return fastckpt.convert(path, out, compression="zstd" if dst == "tf-zstd" else None)
    sig, result = in_child(run)
    assert sig is None, f"killed by {signal.Signals(sig).name}"
    assert isinstance(result, str) and result.startswith("DataLossError"), result
    assert detect_format(path) == ("tf" if fmt == "tf" else fmt)
