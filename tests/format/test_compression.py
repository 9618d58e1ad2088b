"""compression="zstd": byte planes + zstd in chunks. Every dtype and every
reader path round-trips; incompressible chunks cost almost nothing; damaged
frames are DataLossError naming the tensor, never another error or wrong
data; TensorFlow refuses the bundle by its header; convert makes a plain one."""

import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastckpt
from fastckpt import _core
from tests.format.test_roundtrip_dtypes import FIXED, sample
from tests.helpers.roundtrip import assert_bit_equal, check_roundtrip

pytestmark = pytest.mark.skipif(not _core.zstd_version(), reason="libzstd is not installed")


@pytest.mark.parametrize("dtype", FIXED, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (40, 50)], ids=str)
def test_every_dtype_and_shape(tmp_path, dtype, shape):
    p = check_roundtrip(tmp_path, {"t": sample(dtype, shape), "s": np.array([b"x", b""], dtype=object)},
                        compression="zstd")
    assert fastckpt.verify_checkpoint(p).ok
    with fastckpt.load_checkpoint(p) as r:
        assert r.index.compressed


def test_chunked_tensor_every_reader_path(tmp_path):
    """Several chunks (4 MiB each) per tensor; read, read into, views,
    regions checked and unchecked, restore, verify."""
    g = (np.random.default_rng(0).standard_normal((2500, 1000)) * 0.02).astype(np.float32)  # 10 MB: 3 chunks
    b = g.astype(ml_dtypes.bfloat16)
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"g": g, "b": b, "t": g.T}, compression="zstd",
                              compression_level=3)
    back = fastckpt.read_bundle(p)
    assert_bit_equal(back["g"], g)
    assert_bit_equal(back["b"], b)
    assert_bit_equal(back["t"], g.T)
    into = {"g": np.empty_like(g), "b": np.empty((2500, 1000), ml_dtypes.bfloat16)}
    fastckpt.read_bundle(p, names=["g", "b"], into=into)
    assert_bit_equal(into["g"], g)
    with fastckpt.load_checkpoint(p) as r:
        assert_bit_equal(r["g"], g)
        for verify in (True, False):
            assert_bit_equal(r.read_region("g", (1000, 7), (1200, 900), verify=verify), g[1000:2200, 7:907])
            assert_bit_equal(r.read_region("b", (2499, 0), (1, 1000), verify=verify), b[2499:])
        assert_bit_equal(r.get_slice("t")[3:5], g.T[3:5])
    assert fastckpt.verify_checkpoint(p).ok
    assert os.path.getsize(p + ".data-00000-of-00001") < 0.95 * (g.nbytes + b.nbytes + g.nbytes)


def test_incompressible_data_is_stored_nearly_as_it_is(tmp_path):
    raw = np.random.default_rng(1).integers(0, 256, 9 << 20, dtype=np.uint8)
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"r": raw}, compression="zstd")
    size = os.path.getsize(p + ".data-00000-of-00001")
    assert raw.nbytes <= size <= raw.nbytes + 64  # one header and three table words
    assert_bit_equal(fastckpt.read_bundle(p)["r"], raw)


def test_saver_manager_and_save_compress(tmp_path):
    state = {"w": np.linspace(0, 1, 10_000, dtype=np.float32), "step": 3, "tag": "run"}
    saver = fastckpt.Saver(compression="zstd")
    prefix = saver.save(state, str(tmp_path / "s" / "m"), global_step=1)
    assert fastckpt.load_checkpoint(prefix).index.compressed
    assert_bit_equal(saver.restore(prefix)["w"], state["w"])
    mgr = fastckpt.CheckpointManager(tmp_path / "m", compression="zstd", compression_level=5)
    mgr.save(state, 1, blocking=False)
    mgr.wait()
    w = np.zeros(10_000, np.float32)
    restored = fastckpt.CheckpointManager(tmp_path / "m").restore_or_initialize({"w": w})
    assert restored["tag"] == "run" and restored["w"] is w and w.tolist() == state["w"].tolist()
    p = fastckpt.save(state, str(tmp_path / "x"), compression="zstd")
    assert fastckpt.restore(p)["step"] == 3


def test_many_processes_compress_their_parts(tmp_path):
    from tests.helpers.thread_comm import run_ranks
    g = np.arange(40_000, dtype=np.float64).reshape(200, 200)
    prefix = str(tmp_path / "c")
    assert run_ranks(2, lambda comm: fastckpt.save(
        {"g": fastckpt.Shard(g[100 * comm.rank:100 * comm.rank + 100], (200, 200), (100 * comm.rank, 0))},
        prefix, comm=comm, compression="zstd")) == [prefix] * 2
    with fastckpt.load_checkpoint(prefix) as r:
        assert r.index.compressed and r.num_shards == 2
    assert_bit_equal(fastckpt.restore(prefix)["g"], g)


@pytest.mark.parametrize("bad,match", [
    (dict(compression="lz4"), "compression must be"),
    (dict(compression="zstd", compression_level=99), "compression_level"),
    (dict(compression="zstd", compression_level=True), "compression_level"),
])
def test_bad_options(tmp_path, bad, match):
    with pytest.raises(fastckpt.InvalidArgumentError, match=match):
        fastckpt.write_bundle(str(tmp_path / "c"), {"a": np.zeros(2)}, **bad)
    assert not os.listdir(tmp_path)


# ---- damage ------------------------------------------------------------------------------

def _small(tmp_path):
    t = {"a": (np.arange(3000, dtype=np.float32) % 17), "b": np.full(500, 7, np.int16)}
    return fastckpt.write_bundle(str(tmp_path / "c"), t, compression="zstd"), t


def test_every_single_bit_flip_of_the_data_is_data_loss_or_harmless(tmp_path, counts):
    """Each flip is a DataLossError naming the tensor -- or, where it hits a
    bit zstd does not use (a frame descriptor flag), the exact original
    comes back (the CRC of the restored bytes proves it). Never wrong data."""
    p, t = _small(tmp_path)
    data = p + ".data-00000-of-00001"
    original = open(data, "rb").read()
    flips = harmless = 0
    for offset in range(len(original)):
        for bit in (0, 3, 7):
            damaged = bytearray(original)
            damaged[offset] ^= 1 << bit
            with open(data, "wb") as f:
                f.write(damaged)
            try:
                back = fastckpt.read_bundle(p)
            except fastckpt.DataLossError as e:
                assert "tensor 'a'" in str(e) or "tensor 'b'" in str(e), e
                assert not fastckpt.verify_checkpoint(p).ok
            else:
                harmless += 1
                for k, v in t.items():
                    assert_bit_equal(back[k], v)
            flips += 1
    assert harmless < flips // 4  # the restored-bytes CRC, not luck, is what catches the rest
    counts["compressed payload bit flips: caught, or the original restored"] = f"{flips} ({harmless} harmless)"


@settings(deadline=None)
@given(st.data())
def test_fuzzed_frames_are_data_loss_never_a_crash(tmp_path_factory, data):
    """Hostile frames (valid index, the frame's bytes mutated or replaced)
    under every reader: DataLossError or the exact original from the checked
    ones; the unchecked region read (verify=False reads only some chunks and
    no checksum) may return what the damaged chunks decode to -- but raises
    nothing else and never crashes (run under ASan in CI)."""
    d = tmp_path_factory.mktemp("f")
    g = np.arange(600_000, dtype=np.float32)  # 2.4 MB: three 1 MiB chunks
    frame, crc = _written_frame(d, g)
    frame = bytearray(frame)
    kind = data.draw(st.sampled_from(["mutate", "truncate", "extend", "header"]))
    if kind == "mutate":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(frame) - 1))
            frame[i] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        frame = frame[:data.draw(st.integers(24, len(frame) - 1))]
    elif kind == "extend":
        frame += data.draw(st.binary(min_size=1, max_size=64))
    else:
        field = data.draw(st.sampled_from([(5, 1), (8, 8), (16, 4), (20, 4), (24, 4)]))
        frame[field[0]:field[0] + field[1]] = data.draw(st.binary(min_size=field[1], max_size=field[1]))
    _write_frame(d, bytes(frame), crc, g.shape)
    checked = [(lambda: fastckpt.read_bundle(str(d / "c"))["g"], g),
               (lambda: fastckpt.load_checkpoint(str(d / "c")).get_slice("g")[10:20], g[10:20]),
               (lambda: fastckpt.load_checkpoint(str(d / "c")).read_region("g", (1000,), (300_000,)),
                g[1000:301_000])]
    for read, want in checked:
        try:
            got = read()
        except fastckpt.DataLossError as e:
            assert "'g'" in str(e)
        else:
            assert got.tobytes() == want.tobytes()
    try:
        got = fastckpt.load_checkpoint(str(d / "c"), verify=False).read_region("g", (1000,), (300_000,))
    except fastckpt.DataLossError as e:
        assert "'g'" in str(e)
    else:
        assert got.shape == (300_000,) and got.dtype == np.float32


def _written_frame(d, g):
    """The frame and raw CRC fastckpt's writer made for tensor ``g``."""
    p = fastckpt.write_bundle(str(d / "src"), {"g": g}, compression="zstd")
    with fastckpt.load_checkpoint(p) as r:
        entry = r.index.entry(r.index.find(b"g"))
    with open(p + ".data-00000-of-00001", "rb") as f:
        f.seek(entry.offset)
        return f.read(entry.size), _core.unmask_crc(entry.crc)


def _write_frame(d, frame, crc, shape):
    """A bundle of one compressed float32 tensor whose payload is ``frame``."""
    with open(d / "c.data-00000-of-00001", "wb") as f:
        f.write(frame)
    header = _core.encode_header(num_shards=1, min_consumer=_core.ZSTD_MIN_CONSUMER)
    entry = _core.encode_entry(1, shape, 0, 0, len(frame), _core.mask_crc(crc))
    with open(d / "c.index", "wb") as f:
        f.write(_core.build_table([(b"", header), (b"g", entry)]))


def test_an_entry_too_short_for_a_frame_is_refused_at_open(tmp_path):
    header = _core.encode_header(num_shards=1, min_consumer=_core.ZSTD_MIN_CONSUMER)
    entry = _core.encode_entry(1, (10,), 0, 0, 12, 0)
    open(tmp_path / "c.data-00000-of-00001", "wb").write(b"\0" * 12)
    open(tmp_path / "c.index", "wb").write(_core.build_table([(b"", header), (b"g", entry)]))
    with pytest.raises(fastckpt.DataLossError, match="compressed"):
        fastckpt.load_checkpoint(str(tmp_path / "c"))


# ---- interop -----------------------------------------------------------------------------

def test_tensorflow_refuses_a_compressed_bundle_by_name(tmp_path):
    tf = pytest.importorskip("tensorflow")
    p, _ = _small(tmp_path)
    with pytest.raises(Exception, match="min consumer version 1001"):
        tf.train.load_checkpoint(p).get_tensor("a")


def test_convert_decompress_makes_a_plain_tensorflow_checkpoint(tmp_path):
    p, t = _small(tmp_path)
    plain = fastckpt.convert(p, str(tmp_path / "plain"), compression=None)
    with fastckpt.load_checkpoint(plain) as r:
        assert not r.index.compressed
    for k, v in t.items():
        assert_bit_equal(fastckpt.read_bundle(plain)[k], v)
    from fastckpt.cli import main
    assert main(["convert", p, str(tmp_path / "cli"), "--compression", "none"]) == 0
    assert main(["convert", str(tmp_path / "cli"), str(tmp_path / "again"), "--compression", "zstd"]) == 0
    assert fastckpt.load_checkpoint(str(tmp_path / "again")).index.compressed
    tf = pytest.importorskip("tensorflow")
    assert_bit_equal(tf.train.load_checkpoint(plain).get_tensor("a"), t["a"])
