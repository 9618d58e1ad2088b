"""Hostile and odd inputs: no hang, memory and time bounded by what the
input really holds, and a fastckpt error (one line from the command line,
never a traceback) for each. Every case here failed on 0.4.0: a FIFO
blocked forever, /dev/zero was read until memory ran out, a deep or wide
object graph took gigabytes or minutes, a 1.8 KB .pt expanded without end,
a tiny compressed bundle or a sparse index allocated gigabytes."""

import os
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import fastckpt
from fastckpt import _core
from fastckpt.structure.objectgraph import OBJECT_GRAPH_KEY, TrackableObject, encode_object_graph

pytestmark = pytest.mark.no_sanitizer  # subprocesses and memory measurements


def cli(*args, cwd=None, timeout=60):
    r = subprocess.run([sys.executable, "-m", "fastckpt", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=cwd)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def refused_in_bounded_memory(call, error="CheckpointError"):
    """Run the fastckpt expression ``call`` in a fresh interpreter: (the
    message of the ``fastckpt.<error>`` it raised, its peak RSS growth in MiB)."""
    out, grew = peak_mib(textwrap.dedent(f"""
        import fastckpt
        try:
            {call}
        except fastckpt.{error} as e:
            print("refused", e)
    """))
    assert "refused" in out, out
    return out, grew


def peak_mib(script, timeout=300):
    """Run ``script`` in a fresh interpreter; (its stdout, its peak RSS growth in MiB)."""
    wrapped = "import resource\nbase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n" + script + \
        "\nprint('PEAK', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n"
    r = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, int(r.stdout.split("PEAK")[-1])


@pytest.mark.parametrize("name", ["x.safetensors", pytest.param("x.npz", marks=pytest.mark.deep),
                                  pytest.param("x.pt", marks=pytest.mark.deep),
                                  pytest.param("m.safetensors.index.json", marks=pytest.mark.deep), "x.index"])
@pytest.mark.parametrize("kind", ["fifo", pytest.param("dev-zero", marks=pytest.mark.deep)])  # (a FIFO blocks, a device streams: both refused by the same regular-file check)
def test_fifos_and_devices_are_refused_at_once(tmp_path, name, kind):
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    target = str(path)[:-len(".index")] if name.endswith(".index") else path
    for args in (["inspect", target], ["convert", target, tmp_path / "o.safetensors"], ["diff", target, target],
                 ["ls", target], ["verify", target]):
        r = cli(*args, timeout=30)
        assert r.returncode in (1, 2) and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_a_fifo_shard_of_a_safetensors_index_is_refused(tmp_path):
    os.mkfifo(tmp_path / "model-00001-of-00001.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"x": "model-00001-of-00001.safetensors"}}')
    r = cli("inspect", tmp_path / "model.safetensors.index.json", timeout=30)
    assert r.returncode in (1, 2) and "not a regular file" in r.stderr


def _graph_bundle(prefix, nodes, tensors):
    tensors = dict(tensors)
    tensors[OBJECT_GRAPH_KEY] = np.array(encode_object_graph(nodes), dtype=object)
    fastckpt.write_bundle(prefix, tensors)


@pytest.mark.deep
def test_a_30000_deep_object_graph_is_data_loss_in_bounded_memory(tmp_path):
    nodes = [TrackableObject(children=[(i + 1, "c")]) for i in range(30_000)] + [TrackableObject()]
    _graph_bundle(str(tmp_path / "deep"), nodes, {})
    out, grew = refused_in_bounded_memory(f"fastckpt.restore({str(tmp_path / 'deep')!r})", "DataLossError")
    assert "too deeply" in out, out
    assert grew < 300, f"{grew} MiB"


@pytest.mark.deep
def test_many_slot_variables_restore_in_linear_time(tmp_path):
    """16,000 slot variables, each on an optimizer node of its own: 0.4.0
    looked every variable up again for each node (over 300 s)."""
    n = 16_000
    nodes = [TrackableObject()]
    tensors = {}
    for i in range(n):
        nodes += [TrackableObject(attributes=[("VARIABLE_VALUE", f"v{i}", f"v{i}/.ATTRIBUTES/VARIABLE_VALUE")]),
                  TrackableObject(attributes=[("VARIABLE_VALUE", f"s{i}", f"s{i}/.ATTRIBUTES/VARIABLE_VALUE")]),
                  TrackableObject()]
        v, s, o = len(nodes) - 3, len(nodes) - 2, len(nodes) - 1
        nodes[0].children += [(v, f"v{i}"), (o, f"opt{i}")]
        nodes[o].slot_variables.append((v, "m", s))
        tensors[f"v{i}/.ATTRIBUTES/VARIABLE_VALUE"] = np.full(1, i, np.float32)
        tensors[f"s{i}/.ATTRIBUTES/VARIABLE_VALUE"] = np.full(1, -i, np.float32)
    _graph_bundle(str(tmp_path / "slots"), nodes, tensors)
    out, grew = peak_mib(textwrap.dedent(f"""
        import time, fastckpt
        t = time.perf_counter()
        tree = fastckpt.restore({str(tmp_path / "slots")!r})
        assert tree["opt15999"][".OPTIMIZER_SLOT"]["v15999"]["m"][0] == -15999
        print("seconds", time.perf_counter() - t)
    """))
    seconds = float(out.split("seconds")[1].split()[0])
    assert seconds < 20, seconds


@pytest.mark.deep
def test_millions_of_empty_nodes_cost_memory_in_proportion(tmp_path):
    """5 million empty nodes are a 10 MB tensor: restoring it must not take
    gigabytes (0.4.0: 2.8 GiB)."""
    raw = b"\x0a\x00" * 5_000_000
    fastckpt.write_bundle(str(tmp_path / "wide"), {OBJECT_GRAPH_KEY: np.array(raw, dtype=object)})
    out, grew = peak_mib(textwrap.dedent(f"""
        import fastckpt
        print(fastckpt.restore({str(tmp_path / "wide")!r}))
    """))
    assert grew < 400, f"{grew} MiB for a 10 MB graph"


def test_a_pt_of_shared_nested_lists_is_refused_in_bounded_memory(tmp_path):
    torch = pytest.importorskip("torch")
    x = [torch.zeros(1)]
    for _ in range(40):
        x = [x, x]  # 2**40 leaves as a tree, 41 lists as written
    torch.save({"x": x}, tmp_path / "shared.pt")
    assert os.path.getsize(tmp_path / "shared.pt") < 4000
    out, grew = refused_in_bounded_memory(f"fastckpt.inspect_checkpoint({str(tmp_path / 'shared.pt')!r})")
    assert "shares containers" in out, out
    assert grew < 300, f"{grew} MiB"


def test_recursive_states_are_refused():
    x = {"a": np.ones(2)}
    x["self"] = x
    with pytest.raises(fastckpt.InvalidArgumentError, match="contains itself"):
        fastckpt.save(x, "/nonexistent/never-written")


@pytest.mark.deep
def test_verify_of_a_tiny_compressed_bundle_of_gigabytes_stays_small(tmp_path):
    """A 110 KB-class compressed bundle of 2 GiB of zeros: verify restores it
    window by window (0.4.0 allocated the whole tensor: 2,091 MiB)."""
    prefix = str(tmp_path / "z")
    fastckpt.write_bundle(prefix, {"z": np.zeros(1 << 29, np.float32)}, compression="zstd")
    assert os.path.getsize(prefix + ".data-00000-of-00001") < 1 << 20
    out, grew = peak_mib(textwrap.dedent(f"""
        import fastckpt
        print(fastckpt.verify_checkpoint({prefix!r}).ok)
    """))
    assert "True" in out
    assert grew < 300, f"{grew} MiB"


def test_a_compressed_entry_claiming_64_gib_is_data_loss(tmp_path):
    prefix = str(tmp_path / "c")
    fastckpt.write_bundle(prefix, {"t": np.zeros(16, np.float32)}, compression="zstd")
    r = fastckpt.load_checkpoint(prefix)
    entry = r.index.entry(1) if r.index.key(0) == b"" else r.index.entry(0)
    header = _core.encode_header(min_consumer=_core.ZSTD_MIN_CONSUMER)
    forged = _core.encode_entry(1, (16 << 30,), entry.shard, entry.offset, entry.size, entry.crc)
    r.close()
    with open(prefix + ".index", "wb") as f:
        f.write(_core.build_table([(b"", header), (b"t", forged)]))
    assert os.path.getsize(prefix + ".data-00000-of-00001") < 1000
    for call in (lambda: fastckpt.restore(prefix), lambda: fastckpt.load_checkpoint(prefix)["t"],
                 lambda: fastckpt.read_bundle(prefix, into={"t": np.empty(1, np.float32)})):
        with pytest.raises(fastckpt.CheckpointError):
            call()
    assert not fastckpt.verify_checkpoint(prefix).ok


def test_a_sparse_4_gib_index_is_refused_after_48_bytes(tmp_path):
    with open(tmp_path / "big.index", "wb") as f:
        f.truncate(4 << 30)
    out, grew = refused_in_bounded_memory(f"fastckpt.list_variables({str(tmp_path / 'big')!r})", "DataLossError")
    assert "magic" in out
    assert grew < 100, f"{grew} MiB"
    r = cli("ls", tmp_path / "big")
    assert r.returncode == 1 and "not a checkpoint index" in r.stderr


# ---- errors of the right kind (item 10) -----------------------------------------------------------

def _safetensors(path, header, data=b""):
    h = header if isinstance(header, bytes) else __import__("json").dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def test_odd_safetensors_headers_are_data_loss(tmp_path):
    ok = {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    import json
    cases = {
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "utf16": json.dumps(ok).encode("utf-16"),
        "bom": b"\xef\xbb\xbf" + json.dumps(ok).encode(),
        "nan": b'{"x": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}',
        "huge-dim": json.dumps({"x": {"dtype": "F32", "shape": [0, 2 ** 64], "data_offsets": [0, 0]}}).encode(),
    }
    for name, header in cases.items():
        path = tmp_path / f"{name}.safetensors"
        _safetensors(path, header, b"\0" * 4)
        with pytest.raises(fastckpt.DataLossError):
            fastckpt.inspect_checkpoint(str(path))
        r = cli("inspect", path)
        assert r.returncode == 1, (name, r.stderr)


def test_bad_safetensors_shards_are_named(tmp_path):
    for n, shard in enumerate(["", "missing.safetensors", "adir"]):
        d = tmp_path / f"case{n}"
        (d / "adir").mkdir(parents=True)
        (d / "model.safetensors.index.json").write_text('{"weight_map": {"x": "%s"}}' % shard)
        r = cli("inspect", d / "model.safetensors.index.json")
        assert r.returncode in (1, 2) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    (tmp_path / "dir.pt").mkdir()
    r = cli("inspect", tmp_path / "dir.pt")
    assert r.returncode in (1, 2), r.stderr


def _npz_member(path, method):
    """An npz whose one member claims compression ``method`` (99: AES, 6: implode) or holds broken LZMA."""
    arr = np.arange(10, dtype=np.float32)
    np.savez(path, x=arr)
    raw = bytearray(open(path, "rb").read())
    if method == "lzma":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as zf:
            zf.writestr("x.npy", b"\x93NUMPY" + b"\0" * 200)
        raw = bytearray(open(path, "rb").read())
        at = raw.index(b"x.npy") + 5 + 4  # past the name and LZMA's 4-byte properties header
        raw[at + 10:at + 30] = b"\xff" * 20
    else:
        for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
            at = raw.index(sig)
            raw[at + off:at + off + 2] = struct.pack("<H", method)
    open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize("method", [99, 6, "lzma", "encrypted"])
def test_npz_members_the_library_cannot_read_are_fastckpt_errors(tmp_path, method):
    path = str(tmp_path / "a.npz")
    if method == "encrypted":
        np.savez(path, x=np.arange(10))
        raw = bytearray(open(path, "rb").read())
        for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = raw.index(sig)
            raw[at + off] |= 1  # the "encrypted" flag bit
        open(path, "wb").write(bytes(raw))
    else:
        _npz_member(path, method)
    with pytest.raises(fastckpt.CheckpointError):
        fastckpt.convert(path, str(tmp_path / "out"))
    r = cli("convert", path, tmp_path / "out2")
    assert r.returncode in (1, 2), r.stderr


def test_proc_self_mem_and_out_of_range_shards(tmp_path):
    for fmt in ("safetensors", "npz", "torch", "tf"):
        r = cli("inspect", "--format", fmt, "/proc/self/mem")
        assert r.returncode in (1, 2), r.stderr
    fastckpt.write_bundle(str(tmp_path / "b"), {"a": np.ones(3)})
    for dst in ("o", "o.safetensors"):
        r = cli("convert", tmp_path / "b", tmp_path / dst, "--num-shards", "1000000000", timeout=30)
        assert r.returncode == 2 and "num_shards" in r.stderr


def _rewrite_record(prefix, edit):
    import json
    r = fastckpt.load_checkpoint(prefix)
    tensors = {k: r.get_tensor(k) for k in r}
    r.close()
    record = json.loads(tensors["_FASTCKPT_STRUCTURE"].tobytes())
    edit(record)
    tensors["_FASTCKPT_STRUCTURE"] = np.frombuffer(json.dumps(record).encode(), np.uint8)
    fastckpt.write_bundle(prefix, tensors)


def test_odd_structure_records(tmp_path):
    prefix = str(tmp_path / "s")
    fastckpt.save({"f": 1.5, "w": np.ones(2)}, prefix)
    _rewrite_record(prefix, lambda r: r["structure"]["dict"][0][1].update({"float": "0x1p+99999"}))
    with pytest.raises(fastckpt.DataLossError):
        fastckpt.restore(prefix)
    fastckpt.save({"w": np.ones(2)}, prefix, metadata={"m": 1})
    _rewrite_record(prefix, lambda r: r.pop("metadata"))
    assert fastckpt.restore(prefix)["w"].tolist() == [1, 1]
    assert fastckpt.read_meta(prefix).get("metadata") is None
    assert cli("inspect", prefix).returncode == 0


def test_ints_of_any_size_round_trip(tmp_path):
    state = {"n": 10 ** 4300, "m": -(7 ** 20000), "w": np.ones(2)}
    fastckpt.save(state, str(tmp_path / "i"))
    back = fastckpt.restore(str(tmp_path / "i"))
    assert back["n"] == 10 ** 4300 and back["m"] == -(7 ** 20000)


def test_one_buffer_under_two_names(tmp_path):
    prefix = str(tmp_path / "t")
    fastckpt.save({"a": np.arange(1000, dtype=np.float32), "b": np.ones(1000, np.float32),
                   "c": np.arange(1000, dtype=np.float32)}, prefix)
    w = np.zeros(1000, np.float32)
    with pytest.raises(fastckpt.InvalidArgumentError, match="one buffer"):
        fastckpt.restore(prefix, into={"a": w, "b": w})
    assert not w.any()  # refused before anything was read into it
    tied = np.zeros(1000, np.float32)
    got = fastckpt.restore(prefix, into={"a": tied, "c": tied})  # tied weights: the same values
    assert got["a"] is tied and got["c"] is tied and tied[-1] == 999
    x = np.zeros(2000, np.float32)
    with pytest.raises(fastckpt.InvalidArgumentError, match="share memory"):
        fastckpt.restore(prefix, into={"a": x[:1000], "b": x[500:1500]})


def test_a_file_system_without_flock_is_a_clear_error(tmp_path, monkeypatch):
    """Injected: flock fails as it does on file systems without locks."""
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(fastckpt.CheckpointIOError, match="does not support file locks"):
        fastckpt.Saver().save({"a": np.ones(2)}, str(tmp_path / "m"), global_step=1)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".index")]
